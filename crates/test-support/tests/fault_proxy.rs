//! FaultProxy in front of a real redis-server: pass-through, latency, blackhole, refuse,
//! connection resets, heal, connection counting and shutdown on drop.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers of tests: a failed step is a failed test"
)]

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;

use test_support::{FaultProxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Generous bound for things that must happen; only reached when the behaviour is broken.
const MUST: Duration = Duration::from_secs(5);

/// How long a reply that must not come is waited for. Unblocked, Redis answers in well
/// under a millisecond on loopback.
const MUST_NOT: Duration = Duration::from_millis(250);

async fn send_ping(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await
}

/// Reads one RESP line; EOF before it is an `UnexpectedEof` error.
async fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
        assert!(reply.len() < 1024, "runaway reply");
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

async fn ping(stream: &mut TcpStream) -> io::Result<String> {
    send_ping(stream).await?;
    read_line(stream).await
}

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(MUST, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Connects and pings, expecting the proxy to close the connection with an RST or FIN at
/// whatever stage it gets to first (even the reset can beat tokio's connect to completion).
async fn expect_closed_at_once(addr: SocketAddr, what: &str) {
    let outcome = timeout(MUST, async {
        let mut stream = TcpStream::connect(addr).await?;
        ping(&mut stream).await
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
    let err = outcome.expect_err(what);
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        ),
        "{what}: {err:?}"
    );
}

/// The number of clients redis-server sees, not counting the redis-cli asking.
fn redis_clients(redis: &RedisServer) -> usize {
    let info = redis.cli(&["INFO", "clients"]).unwrap();
    let connected: usize = info
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    connected - 1
}

/// Polls redis-server until it sees `expected` clients; the server is a separate process.
async fn wait_for_redis_clients(redis: &RedisServer, expected: usize) {
    let deadline = std::time::Instant::now() + MUST;
    loop {
        let seen = redis_clients(redis);
        if seen == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server still sees {seen} clients, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_forwards_both_ways_and_counts_connections() {
    let redis = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    assert_eq!(proxy.upstream(), redis.addr());
    assert!(proxy.addr().ip().is_loopback());
    assert_ne!(proxy.addr(), redis.addr());

    let mut first = connect(proxy.addr()).await;
    let mut second = connect(proxy.addr()).await;
    for _ in 0..3 {
        assert_eq!(ping(&mut first).await.unwrap(), "+PONG\r\n");
    }
    assert_eq!(ping(&mut second).await.unwrap(), "+PONG\r\n");
    assert_eq!(proxy.open_connections(), 2);
    assert_eq!(redis_clients(&redis), 2);

    // A larger payload than one read, both ways.
    let value = "x".repeat(100_000);
    let request = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{value}\r\n*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n",
        value.len()
    );
    first.write_all(request.as_bytes()).await.unwrap();
    let expected = format!("+OK\r\n${}\r\n{value}\r\n", value.len());
    let mut reply = vec![0u8; expected.len()];
    timeout(MUST, first.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), expected);

    drop(first);
    timeout(MUST, proxy.wait_for_open_connections(1))
        .await
        .unwrap();
    wait_for_redis_clients(&redis, 1).await;
    drop(second);
    timeout(MUST, proxy.wait_for_open_connections(0))
        .await
        .unwrap();
    wait_for_redis_clients(&redis, 0).await;
}

#[tokio::test(start_paused = true)]
async fn latency_delays_every_chunk_in_both_directions_until_healed() {
    let redis = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    // No timeouts here: the paused clock would jump to them while real sockets are busy.
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let latency = Duration::from_millis(300);

    proxy.set_latency(latency);
    let started = Instant::now();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG\r\n");
    let slowed = started.elapsed();
    // One delayed chunk to Redis and one back; the paused clock moves only for those sleeps.
    assert!(slowed >= latency * 2, "{slowed:?}");
    assert!(slowed < latency * 3, "{slowed:?}");

    proxy.heal();
    let started = Instant::now();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG\r\n");
    assert!(started.elapsed() < latency, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_keeps_connections_open_and_answers_nothing_until_healed() {
    let redis = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let mut open_before = connect(proxy.addr()).await;
    assert_eq!(ping(&mut open_before).await.unwrap(), "+PONG\r\n");

    proxy.blackhole();
    send_ping(&mut open_before).await.unwrap();
    assert!(
        timeout(MUST_NOT, read_line(&mut open_before))
            .await
            .is_err(),
        "an open connection was answered through the blackhole"
    );
    let mut opened_during = connect(proxy.addr()).await;
    send_ping(&mut opened_during).await.unwrap();
    assert!(
        timeout(MUST_NOT, read_line(&mut opened_during))
            .await
            .is_err(),
        "a new connection was answered through the blackhole"
    );
    // Nothing reached Redis from the new connection, not even the handshake.
    assert_eq!(redis_clients(&redis), 1);
    assert_eq!(proxy.open_connections(), 2);

    // Held requests are delivered once the network heals, as TCP would retransmit them.
    proxy.heal();
    let answered = timeout(MUST, read_line(&mut open_before)).await.unwrap();
    assert_eq!(answered.unwrap(), "+PONG\r\n");
    let answered = timeout(MUST, read_line(&mut opened_during)).await.unwrap();
    assert_eq!(answered.unwrap(), "+PONG\r\n");
    assert_eq!(ping(&mut open_before).await.unwrap(), "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_closes_new_connections_and_spares_open_ones() {
    let redis = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let mut open_before = connect(proxy.addr()).await;
    assert_eq!(ping(&mut open_before).await.unwrap(), "+PONG\r\n");

    proxy.refuse();
    for _ in 0..3 {
        expect_closed_at_once(proxy.addr(), "a refused connection was answered").await;
    }
    assert_eq!(ping(&mut open_before).await.unwrap(), "+PONG\r\n");
    assert_eq!(proxy.open_connections(), 1);

    proxy.heal();
    let mut after = connect(proxy.addr()).await;
    assert_eq!(ping(&mut after).await.unwrap(), "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_sends_rst_to_clients_and_closes_upstream() {
    let redis = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = connect(proxy.addr()).await;
        assert_eq!(ping(&mut client).await.unwrap(), "+PONG\r\n");
        clients.push(client);
    }
    assert_eq!(proxy.open_connections(), 3);
    assert_eq!(redis_clients(&redis), 3);

    proxy.reset_connections();

    for client in &mut clients {
        let mut buf = [0u8; 16];
        let read = timeout(MUST, client.read(&mut buf))
            .await
            .expect("a reset connection stayed open");
        let err = read.expect_err("a reset connection read data or a clean EOF");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    }
    timeout(MUST, proxy.wait_for_open_connections(0))
        .await
        .unwrap();
    wait_for_redis_clients(&redis, 0).await;

    let mut fresh = connect(proxy.addr()).await;
    assert_eq!(ping(&mut fresh).await.unwrap(), "+PONG\r\n");
    assert_eq!(proxy.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_resets_the_client() {
    // Nothing listens on a fresh free port.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], test_support::free_port()));
    let proxy = FaultProxy::start(nowhere).await.unwrap();

    expect_closed_at_once(proxy.addr(), "a connection to nowhere was answered").await;
    timeout(MUST, proxy.wait_for_open_connections(0))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_stops_the_listener_and_closes_open_connections() {
    let redis = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let addr = proxy.addr();
    let mut client = connect(addr).await;
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG\r\n");
    // A blackholed connection is parked on the mode channel: it must end too.
    proxy.blackhole();

    drop(proxy);

    let mut buf = [0u8; 16];
    let read = timeout(MUST, client.read(&mut buf))
        .await
        .expect("a connection outlived its proxy");
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    wait_for_redis_clients(&redis, 0).await;
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}
