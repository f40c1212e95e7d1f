//! A loopback TCP proxy that injects network faults between a client and a server: latency,
//! a blackhole, refused connections and connection resets, switchable while traffic flows.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Error;

/// Bytes read from one side before they are forwarded to the other.
const CHUNK: usize = 16 * 1024;

/// What the proxy does with traffic; one value shared by every connection through a watch
/// channel, so a change applies at once to connections that are already open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward everything, each chunk after `latency`.
    Forward { latency: Duration },
    /// Keep connections open, forward nothing in either direction.
    Blackhole,
    /// Close new connections at once; open ones keep forwarding.
    Refuse,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by `reset_connections`; each connection watches for a change.
    resets: watch::Sender<u64>,
    /// Client connections currently open.
    open: watch::Sender<usize>,
}

/// A TCP proxy on `127.0.0.1` in front of `upstream` that injects faults on command.
///
/// Clients connect to [`addr`](Self::addr) instead of the server. Mode changes apply to
/// connections already open. Dropping the proxy stops its listener and closes every
/// connection it holds.
///
/// Latency uses tokio's clock, so a test with a paused clock
/// (`#[tokio::test(start_paused = true)]`) measures it without waiting. In such a test, keep
/// timeouts away from real socket I/O: a paused clock jumps to the next timer whenever the
/// runtime is idle, even while a real socket is about to deliver data, so a timeout around a
/// read from Redis fires at once. Timeouts that must expire (a blackholed request) belong in
/// tests on the real clock.
///
/// ```
/// use std::time::Duration;
/// use test_support::{FaultProxy, RedisServer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), test_support::Error> {
/// let redis = RedisServer::start()?;
/// let proxy = FaultProxy::start(redis.addr()).await?;
/// // Point the client under test at `proxy.addr()`, then:
/// proxy.set_latency(Duration::from_millis(50)); // slow network
/// proxy.blackhole(); // partition: requests time out
/// proxy.reset_connections(); // every open connection gets a TCP RST
/// proxy.refuse(); // new connections are closed at once
/// proxy.heal(); // plain forwarding again
/// assert_eq!(proxy.open_connections(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: tokio::task::AbortHandle,
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and starts forwarding to `upstream`, in pass-through mode.
    ///
    /// Must be called inside a tokio runtime; the proxy's tasks run on it.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the listening socket cannot be bound.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy, Error> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| Error::io("binding the fault proxy on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the fault proxy's address", e))?;
        let shared = Arc::new(Shared {
            upstream,
            mode: watch::Sender::new(Mode::Forward {
                latency: Duration::ZERO,
            }),
            resets: watch::Sender::new(0),
            open: watch::Sender::new(0),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, Arc::clone(&shared))).abort_handle();
        Ok(FaultProxy {
            addr,
            shared,
            accept_loop,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Forwards traffic again, delaying each forwarded chunk by `latency` in both directions
    /// (a request/response round trip gains at least twice `latency`). Ends a blackhole or
    /// refusal.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.mode.send_replace(Mode::Forward { latency });
    }

    /// Keeps every connection, new and open, but forwards nothing in either direction, like a
    /// network partition: clients see timeouts, not errors. Data sent meanwhile is held, as
    /// TCP would retransmit it, and delivered after [`heal`](Self::heal).
    pub fn blackhole(&self) {
        self.shared.mode.send_replace(Mode::Blackhole);
    }

    /// Closes every new connection at once with a TCP RST; open connections keep forwarding.
    pub fn refuse(&self) {
        self.shared.mode.send_replace(Mode::Refuse);
    }

    /// Back to plain forwarding without latency.
    pub fn heal(&self) {
        self.set_latency(Duration::ZERO);
    }

    /// Aborts every open connection: the client side gets a TCP RST (its reads fail with
    /// `ConnectionReset`) and the upstream side is closed. New connections are not affected.
    pub fn reset_connections(&self) {
        self.shared.resets.send_modify(|generation| {
            *generation = generation.wrapping_add(1);
        });
    }

    /// The number of client connections currently open through the proxy.
    ///
    /// A connection counts from its accept until the proxy closes it. During a blackhole the
    /// proxy reads nothing, so a client that hangs up then is still counted until
    /// [`heal`](Self::heal) or [`reset_connections`](Self::reset_connections).
    pub fn open_connections(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Waits until exactly `count` client connections are open, so tests need not poll.
    ///
    /// Pair it with a timeout: it waits for as long as the count differs.
    pub async fn wait_for_open_connections(&self, count: usize) {
        let mut open = self.shared.open.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close while this waits.
        let _ = open.wait_for(|open| *open == count).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept loop owns the JoinSet of connection tasks, so aborting it ends them all.
        self.accept_loop.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    if *shared.mode.borrow() == Mode::Refuse {
                        close_with_reset(&client);
                        continue;
                    }
                    let _ = client.set_nodelay(true);
                    let open = OpenGuard::new(&shared.open);
                    let resets = shared.resets.subscribe();
                    connections.spawn(connection(client, Arc::clone(&shared), resets, open));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Counts a client connection as open until dropped, including when its task is aborted.
#[derive(Debug)]
struct OpenGuard {
    open: watch::Sender<usize>,
}

impl OpenGuard {
    fn new(open: &watch::Sender<usize>) -> Self {
        open.send_modify(|n| *n += 1);
        OpenGuard { open: open.clone() }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn connection(
    mut client: TcpStream,
    shared: Arc<Shared>,
    mut resets: watch::Receiver<u64>,
    _open: OpenGuard,
) {
    let mut mode = shared.mode.subscribe();
    let upstream = tokio::select! {
        _ = resets.changed() => None,
        upstream = async {
            // A blackholed network would not carry the handshake either.
            wait_while_blackholed(&mut mode).await.ok()?;
            TcpStream::connect(shared.upstream).await.ok()
        } => match upstream {
            Some(upstream) => Some(upstream),
            None => {
                // The upstream is down: show the client what it would see connecting directly.
                close_with_reset(&client);
                return;
            }
        },
    };
    let Some(mut upstream) = upstream else {
        close_with_reset(&client);
        return;
    };
    let _ = upstream.set_nodelay(true);

    let reset = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let to_upstream = pump(client_read, upstream_write, shared.mode.subscribe());
        let to_client = pump(upstream_read, client_write, shared.mode.subscribe());
        tokio::select! {
            _ = resets.changed() => true,
            _ = async { tokio::try_join!(to_upstream, to_client) } => false,
        }
    };
    if reset {
        close_with_reset(&client);
        close_with_reset(&upstream);
    }
}

/// Copies `from` to `to` chunk by chunk, honouring the current mode before every read and
/// every write, until `from` ends; then passes the end on with a half-close.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
) -> io::Result<()> {
    let mut buf = vec![0; CHUNK];
    loop {
        wait_while_blackholed(&mut mode).await?;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let latency = wait_while_blackholed(&mut mode).await?;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
            // A blackhole that began during the delay holds this chunk too.
            wait_while_blackholed(&mut mode).await?;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Waits until the mode is not a blackhole and returns the latency to apply.
async fn wait_while_blackholed(mode: &mut watch::Receiver<Mode>) -> io::Result<Duration> {
    let current = mode
        .wait_for(|mode| *mode != Mode::Blackhole)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
    Ok(match *current {
        Mode::Forward { latency } => latency,
        Mode::Blackhole | Mode::Refuse => Duration::ZERO,
    })
}

/// Makes the coming close of `stream` an RST instead of a FIN.
fn close_with_reset(stream: &TcpStream) {
    // Zero linger makes close() send RST and discard unsent data, without blocking.
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "could not set SO_LINGER=0 on a fault proxy socket");
    }
}
