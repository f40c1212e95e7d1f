//! RedisServer and RedisCluster against the real redis-server: start, data through redis-cli,
//! stop/restart with and without persistence, pause/resume, cleanup on drop, cluster forming.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use test_support::{Error, RedisCluster, RedisServer, process_state};

/// Sends one `PING` on a fresh connection and returns the raw reply line.
fn ping(server: &RedisServer, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&server.addr(), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    read_line(&mut stream)
}

fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") && reply.len() < 64 {
        match stream.read(&mut byte)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            _ => reply.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn start_serves_set_and_get_through_cli() {
    let redis = RedisServer::start().unwrap();

    assert_eq!(
        redis.cli(&["SET", "greeting", "hello world"]).unwrap(),
        "OK"
    );
    assert_eq!(redis.cli(&["GET", "greeting"]).unwrap(), "hello world");
    assert_eq!(redis.cli(&["GET", "missing"]).unwrap(), "");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.addr().port(), redis.port());
    assert!(redis.addr().ip().is_loopback());
    assert_eq!(ping(&redis, Duration::from_secs(2)).unwrap(), "+PONG\r\n");
}

#[test]
fn servers_started_in_parallel_get_their_own_ports_and_data() {
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(RedisServer::start);
        let b = scope.spawn(RedisServer::start);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });

    assert_ne!(a.port(), b.port());
    a.cli(&["SET", "owner", "a"]).unwrap();
    assert_eq!(b.cli(&["GET", "owner"]).unwrap(), "");
    assert_eq!(a.cli(&["GET", "owner"]).unwrap(), "a");
}

#[test]
fn extra_arguments_reach_the_server() {
    let redis = RedisServer::builder()
        .arg("--maxmemory")
        .arg("12345678")
        .start()
        .unwrap();

    assert_eq!(
        redis.cli(&["CONFIG", "GET", "maxmemory"]).unwrap(),
        "maxmemory\n12345678"
    );
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "appendonly"]).unwrap(),
        "appendonly\nno"
    );
    // An empty value: no RDB snapshot rules.
    assert_eq!(redis.cli(&["CONFIG", "GET", "save"]).unwrap(), "save");
}

#[test]
fn a_bad_argument_fails_start_with_the_servers_own_words() {
    let err = RedisServer::builder()
        .arg("--no-such-directive")
        .arg("1")
        .start()
        .unwrap_err();

    assert!(matches!(err, Error::ServerExited { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("no-such-directive"), "{message}");
}

#[test]
fn stop_then_restart_keeps_the_port_and_loses_data_without_persistence() {
    let mut redis = RedisServer::start().unwrap();
    let port = redis.port();
    let first_pid = redis.pid().unwrap();
    redis.cli(&["SET", "k", "v"]).unwrap();

    redis.stop().unwrap();
    assert!(!redis.is_running());
    assert_eq!(redis.pid(), None);
    assert!(!process_exists(first_pid));
    let refused = ping(&redis, Duration::from_secs(1)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(matches!(redis.cli(&["PING"]), Err(Error::Cli { .. })));
    assert!(matches!(redis.pause(), Err(Error::NotRunning { .. })));

    redis.restart().unwrap();
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), Some(first_pid));
    assert_eq!(redis.cli(&["GET", "k"]).unwrap(), "");
    assert_eq!(redis.cli(&["DBSIZE"]).unwrap(), "0");
}

#[test]
fn restart_with_persistence_keeps_every_acknowledged_write() {
    let mut redis = RedisServer::builder().persistence(true).start().unwrap();
    let port = redis.port();
    redis.cli(&["SET", "kept", "yes"]).unwrap();
    redis.cli(&["RPUSH", "list", "a", "b"]).unwrap();

    // restart() on a running server kills it without a shutdown save: only the AOF keeps data.
    redis.restart().unwrap();

    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["GET", "kept"]).unwrap(), "yes");
    assert_eq!(redis.cli(&["LRANGE", "list", "0", "-1"]).unwrap(), "a\nb");
}

#[test]
fn pause_freezes_the_server_until_resume() {
    let redis = RedisServer::start().unwrap();
    let mut held = TcpStream::connect(redis.addr()).unwrap();
    held.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();

    redis.pause().unwrap();
    let pid = redis.pid().unwrap();
    assert_eq!(process_state(pid), Some('T'), "pause returns once stopped");
    held.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let timed_out = read_line(&mut held).unwrap_err();
    assert!(
        matches!(
            timed_out.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut
        ),
        "{timed_out:?}"
    );
    let fresh = ping(&redis, Duration::from_millis(250)).unwrap_err();
    assert!(
        matches!(fresh.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{fresh:?}"
    );

    redis.resume().unwrap();
    assert_ne!(process_state(pid), Some('T'), "resume returns once running");
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_line(&mut held).unwrap(), "+PONG\r\n");
    assert_eq!(ping(&redis, Duration::from_secs(5)).unwrap(), "+PONG\r\n");
}

#[test]
fn drop_kills_the_process_and_removes_its_directory() {
    let redis = RedisServer::start().unwrap();
    let pid = redis.pid().unwrap();
    let addr = redis.addr();
    let dir = redis.dir().to_owned();
    assert!(process_exists(pid));
    assert!(redis.log_path().exists());

    drop(redis);

    assert!(!process_exists(pid), "redis-server {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn drop_of_a_paused_server_leaves_nothing_behind() {
    let redis = RedisServer::start().unwrap();
    let pid = redis.pid().unwrap();
    redis.pause().unwrap();

    drop(redis);

    assert!(
        !process_exists(pid),
        "paused redis-server {pid} survived drop"
    );
}

#[test]
fn cluster_needs_three_masters() {
    let err = RedisCluster::start(2).unwrap_err();

    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                argument: "masters",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("masters"), "{err}");
}

#[test]
fn cluster_of_three_masters_serves_keys_across_slots_and_dies_on_drop() {
    let cluster = RedisCluster::start(3).unwrap();

    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    for (node, url) in cluster.nodes().iter().zip(&urls) {
        assert_eq!(*url, node.url());
        let info = node.cli(&["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
    }

    let keys: Vec<String> = (0..12).map(|i| format!("key:{i}")).collect();
    let slots: std::collections::HashSet<String> = keys
        .iter()
        .map(|key| cluster.cli(&["CLUSTER", "KEYSLOT", key]).unwrap())
        .collect();
    assert!(slots.len() > 1, "keys share one slot: {slots:?}");
    for key in &keys {
        assert_eq!(
            cluster.cli(&["SET", key, &format!("v-{key}")]).unwrap(),
            "OK"
        );
    }
    for key in &keys {
        assert_eq!(cluster.cli(&["GET", key]).unwrap(), format!("v-{key}"));
    }

    // The keys really were spread: every master holds some of them.
    let per_node: Vec<u64> = cluster
        .nodes()
        .iter()
        .map(|node| node.cli(&["DBSIZE"]).unwrap().parse().unwrap())
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), keys.len() as u64);
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");

    let pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid().unwrap()).collect();
    drop(cluster);
    for pid in pids {
        assert!(!process_exists(pid), "cluster node {pid} survived drop");
    }
}
