//! The versioned binary encoding of a [`StoredEntry`] for the shared and persistent tiers.
//!
//! Times are stored as Unix milliseconds so another process (or this one after a restart) can
//! rebuild them on its own clock; anything malformed decodes to an error, never a panic.
//!
//! ```text
//! "TCE" version:u8 flags:u8 payload_len:u32 [raw_len:u32 when compressed] payload checksum:u64
//! payload = stored_ms:u64 seq:u64 variants:u16 variant*
//! variant = status:u16 http_version:u8 flags:u8 response_ms:u64 fetch_us:u64
//!           corrected_initial_age_ms:u64 lifetime_ms:u64 swr_ms:u64 sie_ms:u64
//!           soft_purged_ms:u64 modified_secs:u64
//!           vary:u16 (name:bytes present:u8 value:bytes)*
//!           headers:u16 (name:bytes value:bytes)*  tags:u16 (tag:bytes)*  body:bytes
//! bytes   = len:u32 data
//! ```
//!
//! Integers are little-endian; the checksum is FNV-1a (64 bit) over everything before it.
#![cfg_attr(not(any(feature = "redis", feature = "disk")), allow(dead_code))]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use tokio::time::Instant;

use crate::store::{Clock, StoredEntry, StoredResponse};

const MAGIC: &[u8; 3] = b"TCE";
/// The only version this build writes and reads.
pub(crate) const VERSION: u8 = 1;
const FLAG_LZ4: u8 = 1;
const HEADER_LEN: usize = 3 + 1 + 1 + 4;
const CHECKSUM_LEN: usize = 8;
/// Largest payload a decoder accepts, compressed or not (a corrupt length must not allocate).
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

const V_NO_CACHE: u8 = 1;
const V_MUST_REVALIDATE: u8 = 2;
const V_MODIFIED: u8 = 4;

/// Why stored bytes could not be turned back into an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not an entry of this format.
    Magic,
    /// Written by a newer (or unknown) version of the format.
    Version(u8),
    /// Shorter than its own lengths say.
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// Compressed data that does not decompress.
    Compression,
    /// A field holds an impossible value.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Magic => f.write_str("not a cache entry"),
            Self::Version(v) => write!(f, "unknown entry version {v}"),
            Self::Truncated => f.write_str("truncated entry"),
            Self::Checksum => f.write_str("entry checksum mismatch"),
            Self::Compression => f.write_str("entry does not decompress"),
            Self::Invalid(what) => write!(f, "invalid entry field: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// An entry read back from a lower tier.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) entry: StoredEntry,
    /// The purge sequence the entry was valid at (see the Redis tier).
    pub(crate) seq: u64,
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `payload` framed as an uncompressed entry with a valid checksum, so the fuzz target reaches
/// the payload parser past the integrity check.
#[cfg(feature = "fuzzing")]
pub(crate) fn frame_for_fuzzing(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER_LEN + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(payload);
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn version_code(v: Version) -> u8 {
    match v {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_of(code: u8) -> Result<Version, DecodeError> {
    Ok(match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return Err(DecodeError::Invalid("http version")),
    })
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(b);
    }
    fn count(&mut self, n: usize) {
        self.u16(u16::try_from(n).unwrap_or(u16::MAX));
    }
}

/// Encodes `entry`, valid at purge sequence `seq`; payloads of at least `compress_above` bytes
/// are compressed when the `lz4` feature is on. `None` when the entry cannot be represented
/// (more than 65535 fields, a body over 4 GiB).
pub(crate) fn encode(
    entry: &StoredEntry,
    clock: &Clock,
    seq: u64,
    compress_above: Option<usize>,
) -> Option<Vec<u8>> {
    let mut w = Writer {
        buf: Vec::with_capacity(usize::try_from(entry.weight).unwrap_or(0) + 64),
    };
    w.u64(clock.unix_millis(entry.stored_at));
    w.u64(seq);
    if entry.variants.len() > usize::from(u16::MAX) {
        return None;
    }
    w.count(entry.variants.len());
    for v in entry.variants.iter() {
        if v.headers.len() > usize::from(u16::MAX)
            || v.vary.len() > usize::from(u16::MAX)
            || v.tags.len() > usize::from(u16::MAX)
            || u32::try_from(v.body.len()).is_err()
        {
            return None;
        }
        w.u16(v.status.as_u16());
        w.u8(version_code(v.version));
        let mut flags = 0;
        if v.no_cache {
            flags |= V_NO_CACHE;
        }
        if v.must_revalidate {
            flags |= V_MUST_REVALIDATE;
        }
        if v.modified_secs.is_some() {
            flags |= V_MODIFIED;
        }
        w.u8(flags);
        w.u64(clock.unix_millis(v.response_instant));
        w.u64(micros(v.fetch_time));
        w.u64(millis(v.corrected_initial_age));
        w.u64(millis(v.lifetime));
        w.u64(millis(v.stale_while_revalidate));
        w.u64(millis(v.stale_if_error));
        let purged = v.soft_purged_at.load(Ordering::Relaxed);
        let purged_ms = if purged == 0 {
            0
        } else {
            clock.unix_millis(clock.instant_of_stamp(purged)).max(1)
        };
        w.u64(purged_ms);
        w.u64(v.modified_secs.unwrap_or(0));
        w.count(v.vary.len());
        for (name, value) in v.vary.iter() {
            w.bytes(name.as_str().as_bytes());
            match value {
                Some(value) => {
                    w.u8(1);
                    w.bytes(value);
                }
                None => {
                    w.u8(0);
                    w.bytes(&[]);
                }
            }
        }
        w.count(v.headers.len());
        for (name, value) in &v.headers {
            w.bytes(name.as_str().as_bytes());
            w.bytes(value.as_bytes());
        }
        w.count(v.tags.len());
        for t in v.tags.iter() {
            w.bytes(t.as_bytes());
        }
        w.bytes(&v.body);
    }
    let payload = w.buf;
    let mut out = Vec::with_capacity(payload.len() + HEADER_LEN + CHECKSUM_LEN + 4);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    match compress(&payload, compress_above) {
        Some(compressed) => {
            out.push(FLAG_LZ4);
            out.extend_from_slice(&u32::try_from(compressed.len()).ok()?.to_le_bytes());
            out.extend_from_slice(&u32::try_from(payload.len()).ok()?.to_le_bytes());
            out.extend_from_slice(&compressed);
        }
        None => {
            out.push(0);
            out.extend_from_slice(&u32::try_from(payload.len()).ok()?.to_le_bytes());
            out.extend_from_slice(&payload);
        }
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Some(out)
}

#[cfg(feature = "lz4")]
fn compress(payload: &[u8], above: Option<usize>) -> Option<Vec<u8>> {
    let above = above?;
    if payload.len() < above {
        return None;
    }
    let compressed = lz4_flex::block::compress(payload);
    // Only worth it when it saves something.
    (compressed.len() < payload.len()).then_some(compressed)
}

#[cfg(not(feature = "lz4"))]
fn compress(_payload: &[u8], _above: Option<usize>) -> Option<Vec<u8>> {
    None
}

#[cfg(feature = "lz4")]
fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = vec![0u8; raw_len];
    let n =
        lz4_flex::block::decompress_into(data, &mut out).map_err(|_| DecodeError::Compression)?;
    if n != raw_len {
        return Err(DecodeError::Compression);
    }
    Ok(out)
}

#[cfg(not(feature = "lz4"))]
fn decompress(_data: &[u8], _raw_len: usize) -> Result<Vec<u8>, DecodeError> {
    Err(DecodeError::Compression)
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        self.take(n)
    }
    /// A count of items each at least `min_item` bytes long, checked against what is left.
    fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16()?);
        if n.saturating_mul(min_item) > self.data.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
}

/// Checks the frame and returns the (decompressed) payload.
fn unframe(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, DecodeError> {
    if bytes.len() < 3 || &bytes[..3] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(DecodeError::Truncated);
    }
    if bytes[3] != VERSION {
        return Err(DecodeError::Version(bytes[3]));
    }
    let (framed, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let mut s = [0u8; 8];
    s.copy_from_slice(sum);
    if fnv1a(framed) != u64::from_le_bytes(s) {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader {
        data: &framed[3 + 1..],
    };
    let flags = r.u8()?;
    if flags & !FLAG_LZ4 != 0 {
        return Err(DecodeError::Invalid("flags"));
    }
    let len = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
    if len > MAX_PAYLOAD {
        return Err(DecodeError::Invalid("payload length"));
    }
    if flags & FLAG_LZ4 != 0 {
        let raw = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
        if raw > MAX_PAYLOAD {
            return Err(DecodeError::Invalid("payload length"));
        }
        let data = r.take(len)?;
        if !r.data.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes"));
        }
        Ok(std::borrow::Cow::Owned(decompress(data, raw)?))
    } else {
        let data = r.take(len)?;
        if !r.data.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes"));
        }
        Ok(std::borrow::Cow::Borrowed(data))
    }
}

/// Decodes an entry and rebuilds its times on `clock` as of `now`: the age it had when it was
/// written plus the time it spent in the tier, so freshness carries over exactly.
pub(crate) fn decode(bytes: &[u8], clock: &Clock, now: Instant) -> Result<Decoded, DecodeError> {
    let payload = unframe(bytes)?;
    let mut r = Reader { data: &payload };
    // When the entry was written: kept in the format for operators' tools.
    let _stored_ms = r.u64()?;
    let seq = r.u64()?;
    let now_ms = clock.unix_millis(now);
    let n = r.count(2 + 2 + 8 * 9 + 6)?;
    if n == 0 {
        return Err(DecodeError::Invalid("no variants"));
    }
    let mut variants = Vec::with_capacity(n);
    for _ in 0..n {
        variants.push(Arc::new(variant(&mut r, now, now_ms)?));
    }
    if !r.data.is_empty() {
        return Err(DecodeError::Invalid("trailing bytes"));
    }
    let entry = StoredEntry::new(variants, now);
    Ok(Decoded { entry, seq })
}

fn variant(r: &mut Reader<'_>, now: Instant, now_ms: u64) -> Result<StoredResponse, DecodeError> {
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Invalid("status code"))?;
    let version = version_of(r.u8()?)?;
    let flags = r.u8()?;
    let response_ms = r.u64()?;
    let fetch_time = Duration::from_micros(r.u64()?);
    let cia = Duration::from_millis(r.u64()?);
    let mut lifetime = Duration::from_millis(r.u64()?);
    let swr = Duration::from_millis(r.u64()?);
    let sie = Duration::from_millis(r.u64()?);
    let purged_ms = r.u64()?;
    let modified = r.u64()?;
    // The time spent in the lower tier joins the initial age; the entry restarts its residence
    // here, so `current_age` comes out the same as if it had never left.
    let resident = Duration::from_millis(now_ms.saturating_sub(response_ms));
    let corrected_initial_age = cia.saturating_add(resident);
    if purged_ms != 0 {
        // A soft purge ended freshness at the purge time.
        let age_at_purge =
            cia.saturating_add(Duration::from_millis(purged_ms.saturating_sub(response_ms)));
        lifetime = lifetime.min(age_at_purge);
    }
    let nv = r.count(4 + 1 + 4)?;
    let mut vary = Vec::with_capacity(nv);
    for _ in 0..nv {
        let name =
            HeaderName::from_bytes(r.bytes()?).map_err(|_| DecodeError::Invalid("vary name"))?;
        let present = r.u8()?;
        let value = r.bytes()?;
        let value = match present {
            0 => None,
            1 => Some(Box::<[u8]>::from(value)),
            _ => return Err(DecodeError::Invalid("vary presence")),
        };
        vary.push((name, value));
    }
    let nh = r.count(8)?;
    // The count is untrusted: reserve little up front and let `try_append` refuse what a header map cannot hold
    // (a checksum-valid entry can still claim more fields than that), so it is an invalid entry, not a panic.
    let mut headers = HeaderMap::try_with_capacity(nh.min(64))
        .map_err(|_| DecodeError::Invalid("field count"))?;
    for _ in 0..nh {
        let name =
            HeaderName::from_bytes(r.bytes()?).map_err(|_| DecodeError::Invalid("field name"))?;
        let value =
            HeaderValue::from_bytes(r.bytes()?).map_err(|_| DecodeError::Invalid("field value"))?;
        headers
            .try_append(name, value)
            .map_err(|_| DecodeError::Invalid("field count"))?;
    }
    let nt = r.count(4)?;
    let mut tags: Vec<Arc<str>> = Vec::with_capacity(nt);
    for _ in 0..nt {
        let t = std::str::from_utf8(r.bytes()?).map_err(|_| DecodeError::Invalid("tag"))?;
        tags.push(Arc::from(t));
    }
    let body = Bytes::copy_from_slice(r.bytes()?);
    let etag = headers.get(header::ETAG).cloned();
    let last_modified = headers.get(header::LAST_MODIFIED).cloned();
    Ok(StoredResponse {
        status,
        version,
        headers,
        body,
        vary: vary.into_boxed_slice(),
        response_instant: now,
        corrected_initial_age,
        lifetime,
        no_cache: flags & V_NO_CACHE != 0,
        must_revalidate: flags & V_MUST_REVALIDATE != 0,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        etag,
        last_modified,
        modified_secs: (flags & V_MODIFIED != 0).then_some(modified),
        fetch_time,
        tags: tags.into_boxed_slice(),
        soft_purged_at: AtomicU64::new(0),
        hit_headers: std::sync::Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn clock() -> Clock {
        Clock::new()
    }

    #[allow(clippy::too_many_arguments)]
    fn response(
        status: u16,
        headers: &[(String, Vec<u8>)],
        body: Vec<u8>,
        tags: &[String],
        vary: &[(String, Option<Vec<u8>>)],
        cia_ms: u64,
        lifetime_ms: u64,
        flags: u8,
    ) -> StoredResponse {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        StoredResponse {
            status: StatusCode::from_u16(status).unwrap(),
            version: Version::HTTP_11,
            etag: h.get(header::ETAG).cloned(),
            last_modified: h.get(header::LAST_MODIFIED).cloned(),
            headers: h,
            body: Bytes::from(body),
            vary: vary
                .iter()
                .map(|(n, v)| {
                    (
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        v.clone().map(Vec::into_boxed_slice),
                    )
                })
                .collect(),
            response_instant: Instant::now(),
            corrected_initial_age: Duration::from_millis(cia_ms),
            lifetime: Duration::from_millis(lifetime_ms),
            no_cache: flags & 1 != 0,
            must_revalidate: flags & 2 != 0,
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(60),
            modified_secs: Some(1_700_000_000),
            fetch_time: Duration::from_micros(1234),
            tags: tags.iter().map(|t| Arc::from(t.as_str())).collect(),
            soft_purged_at: AtomicU64::new(0),
            hit_headers: std::sync::Mutex::new(None),
        }
    }

    fn sample(body_len: usize) -> StoredEntry {
        let v = response(
            200,
            &[
                ("content-type".into(), b"text/plain".to_vec()),
                ("etag".into(), b"\"v1\"".to_vec()),
                ("x-multi".into(), b"a".to_vec()),
                ("x-multi".into(), b"b".to_vec()),
            ],
            vec![b'x'; body_len],
            &["room:1".into(), "rooms".into()],
            &[
                ("accept-encoding".into(), Some(b"gzip".to_vec())),
                ("accept-language".into(), None),
            ],
            2000,
            60_000,
            2,
        );
        StoredEntry::new(vec![Arc::new(v)], Instant::now())
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let c = clock();
        let e = sample(100);
        let bytes = encode(&e, &c, 42, None).unwrap();
        let d = decode(&bytes, &c, Instant::now()).unwrap();
        assert_eq!(d.seq, 42);
        let (a, b) = (&e.variants[0], &d.entry.variants[0]);
        assert_eq!(a.status, b.status);
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.body, b.body);
        assert_eq!(a.vary, b.vary);
        assert_eq!(a.tags, b.tags);
        assert_eq!(b.etag.as_ref().unwrap(), "\"v1\"");
        assert_eq!(a.lifetime, b.lifetime);
        assert!(b.must_revalidate && !b.no_cache);
        assert_eq!(a.modified_secs, b.modified_secs);
        assert_eq!(a.fetch_time, b.fetch_time);
        assert!(b.corrected_initial_age >= a.corrected_initial_age);
        assert_eq!(d.entry.tags.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn age_carries_over() {
        let c = clock();
        let e = sample(10);
        let bytes = encode(&e, &c, 0, None).unwrap();
        tokio::time::advance(Duration::from_secs(7)).await;
        let d = decode(&bytes, &c, Instant::now()).unwrap();
        let age = d.entry.variants[0].corrected_initial_age;
        assert!(
            age >= Duration::from_millis(8_990) && age <= Duration::from_millis(9_010),
            "{age:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn soft_purge_ends_freshness_at_the_purge_time() {
        let c = clock();
        let e = sample(10);
        tokio::time::advance(Duration::from_secs(3)).await;
        e.variants[0]
            .soft_purged_at
            .store(c.stamp(Instant::now()), Ordering::Relaxed);
        let bytes = encode(&e, &c, 0, None).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        let d = decode(&bytes, &c, Instant::now()).unwrap();
        let l = d.entry.variants[0].lifetime;
        assert!(
            l >= Duration::from_millis(4_990) && l <= Duration::from_millis(5_010),
            "{l:?}"
        );
    }

    #[test]
    fn damaged_entries_are_errors() {
        let c = clock();
        let bytes = encode(&sample(50), &c, 1, None).unwrap();
        let now = Instant::now();
        assert_eq!(decode(b"", &c, now).unwrap_err(), DecodeError::Magic);
        assert_eq!(decode(b"nope", &c, now).unwrap_err(), DecodeError::Magic);
        let mut v2 = bytes.clone();
        v2[3] = 2;
        assert_eq!(decode(&v2, &c, now).unwrap_err(), DecodeError::Version(2));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], &c, now).unwrap_err(),
            DecodeError::Checksum
        );
        assert_eq!(
            decode(&bytes[..8], &c, now).unwrap_err(),
            DecodeError::Truncated
        );
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        assert_eq!(
            decode(&flipped, &c, now).unwrap_err(),
            DecodeError::Checksum
        );
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn large_payloads_are_compressed() {
        let c = clock();
        let e = sample(64 * 1024);
        let plain = encode(&e, &c, 0, None).unwrap();
        let packed = encode(&e, &c, 0, Some(1024)).unwrap();
        assert!(
            packed.len() * 4 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(packed[4], FLAG_LZ4);
        let d = decode(&packed, &c, Instant::now()).unwrap();
        assert_eq!(d.entry.variants[0].body, e.variants[0].body);
        let small = encode(&sample(10), &c, 0, Some(1024)).unwrap();
        assert_eq!(small[4], 0);
    }

    /// Reframes a payload with a valid checksum, so the decoder's field checks are reached.
    fn framed(payload: &[u8], flags: u8, raw: Option<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(flags);
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        if let Some(r) = raw {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(payload);
        let s = fnv1a(&out);
        out.extend_from_slice(&s.to_le_bytes());
        out
    }

    #[test]
    fn an_entry_announcing_more_fields_than_a_header_map_holds_is_invalid_not_a_panic() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&0u64.to_le_bytes()); // stored at
        payload.extend_from_slice(&0u64.to_le_bytes()); // purge sequence
        payload.extend_from_slice(&1u16.to_le_bytes()); // one variant
        payload.extend_from_slice(&200u16.to_le_bytes());
        payload.extend_from_slice(&[2, 0]); // HTTP/1.1, no flags
        payload.extend_from_slice(&[0; 8 * 8]); // times and lifetimes
        payload.extend_from_slice(&0u16.to_le_bytes()); // no Vary fields
        // 30 000 fields announced, more than a header map can reserve, with enough bytes behind to pass the
        // count's length check.
        payload.extend_from_slice(&30_000u16.to_le_bytes());
        payload.extend_from_slice(&vec![0; 30_000 * 8]);
        let c = clock();
        assert!(decode(&framed(&payload, 0, None), &c, Instant::now()).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let c = clock();
            let _ = decode(&bytes, &c, Instant::now());
        }

        #[test]
        fn decoding_checksummed_garbage_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 0..600),
            lz4 in any::<bool>(),
            raw in any::<u32>(),
        ) {
            let c = clock();
            let bytes = if lz4 { framed(&payload, FLAG_LZ4, Some(raw)) } else { framed(&payload, 0, None) };
            let _ = decode(&bytes, &c, Instant::now());
        }

        #[test]
        fn truncating_a_valid_entry_is_an_error(cut in 0usize..400) {
            let c = clock();
            let bytes = encode(&sample(200), &c, 3, None).unwrap();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode(&bytes[..cut], &c, Instant::now()).is_err());
        }

        #[test]
        fn round_trip(
            status in 200u16..600,
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", proptest::collection::vec(0x20u8..0x7f, 0..40)), 0..12),
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            tags in proptest::collection::vec("[a-z:0-9]{1,20}", 0..5),
            vary in proptest::collection::vec(("[a-z][a-z-]{0,10}", proptest::option::of(proptest::collection::vec(0x21u8..0x7f, 0..20))), 0..4),
            cia in 0u64..1_000_000,
            lifetime in 0u64..1_000_000_000,
            flags in 0u8..4,
            seq in any::<u64>(),
            compress in any::<bool>(),
        ) {
            let c = clock();
            let v = response(status, &headers, body, &tags, &vary, cia, lifetime, flags);
            let e = StoredEntry::new(vec![Arc::new(v)], Instant::now());
            let bytes = encode(&e, &c, seq, compress.then_some(64)).unwrap();
            let d = decode(&bytes, &c, Instant::now()).unwrap();
            prop_assert_eq!(d.seq, seq);
            let (a, b) = (&e.variants[0], &d.entry.variants[0]);
            prop_assert_eq!(a.status, b.status);
            prop_assert_eq!(&a.headers, &b.headers);
            prop_assert_eq!(&a.body, &b.body);
            prop_assert_eq!(&a.vary, &b.vary);
            prop_assert_eq!(&a.tags, &b.tags);
            prop_assert_eq!(a.lifetime.as_millis(), b.lifetime.as_millis());
            prop_assert_eq!(a.no_cache, b.no_cache);
            prop_assert_eq!(a.must_revalidate, b.must_revalidate);
        }
    }
}
