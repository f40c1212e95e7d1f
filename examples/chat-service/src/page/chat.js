// The chat page: room list, history with "load older", posting with an Idempotency-Key per
// message, polling with If-None-Match for new messages, and a status line for each history load.
'use strict';
(() => {
  const PAGE_SIZE = 50;
  const POLL_MS = 2000;
  const ROOM_RULE = /^[A-Za-z0-9_-]{1,64}$/;

  const $ = (id) => document.getElementById(id);
  const ui = {
    mode: $('mode'), roomList: $('room-list'), join: $('join'), joinRoom: $('join-room'),
    heading: $('room-heading'), status: $('status'), older: $('older'), messages: $('messages'),
    empty: $('empty'), compose: $('compose'), author: $('compose-author'), text: $('compose-text'),
    send: $('send'), error: $('compose-error'),
  };
  const state = {
    room: null, etag: null, newest: 0, nextBefore: null, roomsEtag: null, rooms: [],
    pending: null, timer: null, generation: 0,
  };

  // --- HTTP -------------------------------------------------------------------------------

  // The cache's own member of Cache-Status (RFC 9211): whether it was a hit, and why not.
  function cacheOutcome(header) {
    if (!header) return { kind: 'none', text: 'no cache layer' };
    const members = header.split(',').map((m) => m.trim()).filter(Boolean);
    const member = members[members.length - 1];
    const [name, ...params] = member.split(';').map((p) => p.trim());
    const hit = params.includes('hit');
    const fwd = params.find((p) => p.startsWith('fwd='));
    const detail = params.find((p) => p.startsWith('detail='));
    const why = [fwd, detail].filter(Boolean).join(', ');
    return hit
      ? { kind: 'hit', text: `from cache (${name}${why ? ', ' + why : ''})` }
      : { kind: 'miss', text: `not from cache (${name}${why ? ', ' + why : ''})` };
  }

  // `traceresponse` (W3C Trace Context level 2): version-traceid-spanid-flags.
  function traceId(header) {
    const parts = (header || '').split('-');
    return parts.length === 4 && /^[0-9a-f]{32}$/.test(parts[1]) ? parts[1] : null;
  }

  // The duration of the last fetch of `url` from Resource Timing, or the measured fallback.
  function latencyOf(url, measured) {
    const absolute = new URL(url, location.href).href;
    const entries = performance.getEntriesByName(absolute, 'resource');
    const entry = entries[entries.length - 1];
    // Polling would fill the timing buffer (250 entries by default): keep it empty.
    performance.clearResourceTimings();
    return entry && entry.duration > 0 ? entry.duration : measured;
  }

  async function problemText(response) {
    try {
      const problem = await response.json();
      return problem.detail || problem.title || `HTTP ${response.status}`;
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  // Reads skip the browser's own cache (`no-store`), so the status line shows what the
  // service's cache did. That mode makes the browser add `Cache-Control: no-cache`, which would
  // send every read to the origin, unless the request has a Cache-Control of its own:
  // `max-stale=0` accepts nothing the response's own directives do not already allow.
  function read(url, headers = {}) {
    return fetch(url, { cache: 'no-store', headers: { 'Cache-Control': 'max-stale=0', ...headers } });
  }

  function messagesUrl(room, before) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) query.set('before', String(before));
    return `/rooms/${encodeURIComponent(room)}/messages?${query}`;
  }

  // --- rendering --------------------------------------------------------------------------

  function messageItem(message) {
    const item = document.createElement('li');
    item.dataset.id = String(message.id);
    const when = new Date(message.created_at);
    const time = document.createElement('time');
    time.className = 'meta';
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = message.author;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = message.text;
    item.append(time, author, text);
    return item;
  }

  function nearBottom() {
    const list = ui.messages;
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  // Adds messages newer than what is shown, oldest first, at the bottom.
  function appendNewer(messages) {
    const fresh = messages.filter((m) => m.id > state.newest).sort((a, b) => a.id - b.id);
    if (fresh.length === 0) return;
    const follow = nearBottom();
    for (const message of fresh) ui.messages.append(messageItem(message));
    state.newest = fresh[fresh.length - 1].id;
    ui.empty.hidden = true;
    if (follow) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function prependOlder(messages) {
    const before = ui.messages.scrollHeight;
    const older = [...messages].sort((a, b) => a.id - b.id);
    ui.messages.prepend(...older.map(messageItem));
    ui.messages.scrollTop += ui.messages.scrollHeight - before;
  }

  function showStatus(what, outcome, latency, trace) {
    ui.status.dataset.cache = outcome.kind;
    ui.status.dataset.latency = latency.toFixed(1);
    ui.status.dataset.trace = trace || '';
    ui.status.replaceChildren();
    const cache = document.createElement('span');
    cache.className = outcome.kind;
    cache.textContent = outcome.text;
    const traceText = trace ? `trace ${trace}` : 'no trace id (span export off)';
    ui.status.append(`${what}: `, cache, ` · ${latency.toFixed(1)} ms · ${traceText}`);
  }

  function renderRooms() {
    ui.roomList.replaceChildren();
    const rooms = [...state.rooms];
    if (state.room && !rooms.some((r) => r.room === state.room)) {
      rooms.unshift({ room: state.room, message_count: 0 });
    }
    for (const summary of rooms) {
      const item = document.createElement('li');
      const link = document.createElement('a');
      link.href = `#${summary.room}`;
      if (summary.room === state.room) link.setAttribute('aria-current', 'page');
      const name = document.createElement('span');
      name.textContent = summary.room;
      const count = document.createElement('span');
      count.className = 'count';
      count.textContent = String(summary.message_count);
      count.setAttribute('aria-label', `${summary.message_count} messages`);
      link.append(name, count);
      item.append(link);
      ui.roomList.append(item);
    }
  }

  // --- loading ----------------------------------------------------------------------------

  async function loadRooms() {
    const headers = state.roomsEtag ? { 'If-None-Match': state.roomsEtag } : {};
    const response = await read('/rooms', headers);
    if (response.status === 304 || !response.ok) return;
    state.roomsEtag = response.headers.get('ETag');
    state.rooms = (await response.json()).rooms;
    renderRooms();
  }

  // Loads the newest page of the current room: the history load the status line describes.
  async function loadHistory() {
    const room = state.room;
    const generation = state.generation;
    const url = messagesUrl(room);
    const started = performance.now();
    let response;
    try {
      response = await read(url);
    } catch (error) {
      ui.status.dataset.cache = 'error';
      ui.status.textContent = `History could not be loaded: ${error.message}`;
      return;
    }
    if (!response.ok) {
      ui.status.dataset.cache = 'error';
      ui.status.textContent = `History could not be loaded: ${await problemText(response)}`;
      return;
    }
    const page = await response.json();
    const measured = performance.now() - started;
    if (generation !== state.generation) return;
    state.etag = response.headers.get('ETag');
    state.nextBefore = page.next_before;
    ui.older.hidden = !page.next_before;
    ui.empty.hidden = page.messages.length > 0;
    appendNewer(page.messages);
    ui.messages.scrollTop = ui.messages.scrollHeight;
    showStatus(
      'Last history load',
      cacheOutcome(response.headers.get('Cache-Status')),
      latencyOf(url, measured),
      traceId(response.headers.get('traceresponse')),
    );
  }

  async function loadOlder() {
    if (!state.nextBefore) return;
    const generation = state.generation;
    const url = messagesUrl(state.room, state.nextBefore);
    const started = performance.now();
    ui.older.disabled = true;
    try {
      const response = await read(url);
      if (!response.ok) {
        ui.status.textContent = `Older messages could not be loaded: ${await problemText(response)}`;
        return;
      }
      const page = await response.json();
      if (generation !== state.generation) return;
      prependOlder(page.messages);
      state.nextBefore = page.next_before;
      ui.older.hidden = !page.next_before;
      showStatus(
        'Last history load (older page)',
        cacheOutcome(response.headers.get('Cache-Status')),
        latencyOf(url, performance.now() - started),
        traceId(response.headers.get('traceresponse')),
      );
    } finally {
      ui.older.disabled = false;
    }
  }

  // Asks whether the newest page changed since the last one seen: usually a 304 with no body.
  async function poll() {
    const room = state.room;
    const generation = state.generation;
    const headers = state.etag ? { 'If-None-Match': state.etag } : {};
    const response = await read(messagesUrl(room), headers);
    if (generation !== state.generation || response.status === 304 || !response.ok) return;
    const page = await response.json();
    if (generation !== state.generation) return;
    state.etag = response.headers.get('ETag');
    if (state.newest === 0) state.nextBefore = page.next_before;
    appendNewer(page.messages);
  }

  function schedulePoll() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      if (!document.hidden && state.room) {
        try {
          await Promise.all([poll(), loadRooms()]);
        } catch {
          // A failed poll is retried at the next tick; the page keeps what it shows.
        }
      }
      schedulePoll();
    }, POLL_MS);
  }

  function openRoom(room) {
    state.generation += 1;
    state.room = room;
    state.etag = null;
    state.newest = 0;
    state.nextBefore = null;
    ui.heading.textContent = `Room ${room}`;
    document.title = `${room} · Chat`;
    ui.messages.replaceChildren();
    ui.older.hidden = true;
    ui.empty.hidden = true;
    ui.status.dataset.cache = '';
    ui.status.textContent = 'Loading…';
    renderRooms();
    return loadHistory();
  }

  function roomFromHash() {
    let room = '';
    try {
      room = decodeURIComponent(location.hash.slice(1));
    } catch {
      return null;
    }
    return ROOM_RULE.test(room) ? room : null;
  }

  // --- posting ----------------------------------------------------------------------------

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  async function send(event) {
    event.preventDefault();
    const author = ui.author.value.trim();
    const text = ui.text.value;
    ui.error.textContent = '';
    if (!author || !text.trim()) {
      ui.error.textContent = 'Write your name and a message.';
      return;
    }
    const room = state.room;
    const body = JSON.stringify({ author, text });
    // A retry of the same message reuses its key, so the service stores it at most once.
    if (!state.pending || state.pending.body !== body || state.pending.room !== room) {
      state.pending = { key: newKey(), body, room };
    }
    const pending = state.pending;
    localStorage.setItem('chat-author', author);
    ui.send.disabled = true;
    try {
      const response = await fetch(`/rooms/${encodeURIComponent(room)}/messages`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Idempotency-Key': `"${pending.key}"` },
        body,
        cache: 'no-store',
      });
      if (response.status === 201) {
        const message = await response.json();
        state.pending = null;
        ui.text.value = '';
        if (room === state.room) {
          appendNewer([message]);
          ui.messages.scrollTop = ui.messages.scrollHeight;
        }
        loadRooms().catch(() => {});
        return;
      }
      const detail = await problemText(response);
      const retryable = response.status === 503 || response.status === 409 || response.status >= 500;
      if (!retryable) state.pending = null;
      ui.error.textContent = retryable
        ? `Not sent: ${detail}. Send again to retry.`
        : `Not sent: ${detail}`;
    } catch (error) {
      ui.error.textContent = `Not sent (${error.message}). Send again to retry.`;
    } finally {
      ui.send.disabled = false;
    }
  }

  // --- start ------------------------------------------------------------------------------

  async function showMode() {
    try {
      const response = await fetch('/stats', { cache: 'no-store' });
      const stats = await response.json();
      ui.mode.textContent = stats.mode === 'bare'
        ? 'Bare service: no cache, no coalescing'
        : 'Stacked service: telemetry, cache, coalescing';
    } catch {
      ui.mode.textContent = '';
    }
  }

  async function start() {
    ui.author.value = localStorage.getItem('chat-author') || '';
    ui.compose.addEventListener('submit', send);
    ui.text.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        ui.compose.requestSubmit();
      }
    });
    ui.older.addEventListener('click', () => { loadOlder().catch(() => {}); });
    ui.join.addEventListener('submit', (event) => {
      event.preventDefault();
      const room = ui.joinRoom.value.trim();
      if (ROOM_RULE.test(room)) {
        location.hash = room;
        ui.joinRoom.value = '';
      }
    });
    window.addEventListener('hashchange', () => {
      const room = roomFromHash();
      if (room && room !== state.room) openRoom(room);
    });
    showMode();
    const wanted = roomFromHash();
    if (wanted) {
      // The history does not wait for the room list: a reload shows it as soon as it can.
      await Promise.all([openRoom(wanted), loadRooms().catch(() => {})]);
    } else {
      await loadRooms().catch(() => {});
      const first = state.rooms.length > 0 ? state.rooms[0].room : 'lobby';
      history.replaceState(null, '', `#${first}`);
      await openRoom(first);
    }
    schedulePoll();
  }

  start();
})();
