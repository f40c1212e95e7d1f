//! Free loopback ports for servers that are started as separate processes.
//!
//! Ports are drawn at random from below the kernel's ephemeral range, so outgoing connections
//! and `bind(0)` in other tests never land on them, and each is checked by binding it. A port
//! handed out once is not handed out again by this process, which keeps parallel tests in one
//! test binary apart; tests in other processes are kept apart by the randomness and by
//! [`RedisServer`](crate::RedisServer) retrying on a new port when its first one was taken.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::Error;

/// Redis Cluster listens for its bus on the client port plus this offset.
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// Lowest port ever handed out: clear of the well-known and most registered service ports.
const LOWEST: u16 = 15_000;

/// Candidates tried before giving up.
const ATTEMPTS: u32 = 200;

/// Ports handed out by this process; cleared when it grows large, long after those tests ended.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that is free right now.
///
/// Nothing keeps the port reserved after this returns, so bind it soon; the port is never
/// returned twice by one process, and it lies below the ephemeral range, where the kernel does
/// not place outgoing connections or `bind(0)` listeners.
///
/// # Panics
///
/// Panics when no free port exists on 127.0.0.1 at all, which only happens on a broken
/// machine; [`try_free_port`] returns an error instead.
///
/// ```
/// let port = test_support::free_port();
/// let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
/// assert_eq!(listener.local_addr().unwrap().port(), port);
/// ```
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`free_port`], with an error instead of a panic.
///
/// ```
/// let port = test_support::try_free_port()?;
/// assert_ne!(port, 0);
/// # Ok::<(), test_support::Error>(())
/// ```
pub fn try_free_port() -> Result<u16, Error> {
    let high = ephemeral_low();
    pick(LOWEST, high, |port| is_free(port) && claim(port))
}

/// A port below 55535 whose cluster bus port (`port + 10000`) is free as well.
pub(crate) fn free_cluster_port() -> Result<u16, Error> {
    let high = ephemeral_low()
        .saturating_sub(CLUSTER_BUS_OFFSET)
        .max(LOWEST + 1_000);
    pick(LOWEST, high, |port| {
        let bus = port + CLUSTER_BUS_OFFSET;
        is_free(port) && is_free(bus) && claim(port) && claim(bus)
    })
}

/// Draws ports from `low..high` until `take` accepts one.
fn pick(low: u16, high: u16, take: impl Fn(u16) -> bool) -> Result<u16, Error> {
    for _ in 0..ATTEMPTS {
        let port = fastrand::u16(low..high.max(low + 1));
        if take(port) {
            return Ok(port);
        }
    }
    Err(Error::NoFreePort { attempts: ATTEMPTS })
}

/// Records `port` as handed out; false when it already was.
fn claim(port: u16) -> bool {
    let mut guard = match HANDED_OUT.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let set = guard.get_or_insert_with(HashSet::new);
    if set.len() >= 4_096 {
        set.clear();
    }
    set.insert(port)
}

fn is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The first port of the kernel's ephemeral range (32768 on Linux unless tuned).
fn ephemeral_low() -> u16 {
    static LOW: OnceLock<u16> = OnceLock::new();
    *LOW.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse().ok())
            .filter(|low| *low > LOWEST + 2_000)
            .unwrap_or(32_768)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let port = free_port();
            assert!((LOWEST..ephemeral_low()).contains(&port), "{port}");
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn cluster_ports_leave_room_for_the_bus() {
        let port = free_cluster_port().unwrap();
        assert!(port < 55_535);
        assert!(is_free(port + CLUSTER_BUS_OFFSET));
    }
}
