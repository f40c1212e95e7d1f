//! A real local Redis Cluster: N master-only redis-server processes joined with
//! `redis-cli --cluster create`, ready once every node reports `cluster_state:ok`.

use std::time::{Duration, Instant};

use crate::resp::{self, Connection, Reply};
use crate::server::{RedisServer, run_cli};
use crate::{Error, process};

/// How long `redis-cli --cluster create` may take; it waits at least a second by design.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the nodes get to agree that the cluster is healthy after creation.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A real Redis Cluster of master nodes on loopback, every process killed on drop.
///
/// Slots are spread evenly over the masters; there are no replicas. Each node is a
/// [`RedisServer`] in cluster mode, so fault tests can stop, restart or pause single nodes
/// through [`nodes_mut`](Self::nodes_mut).
///
/// ```no_run
/// use test_support::RedisCluster;
///
/// // `no_run`: forming a cluster takes a second or two, which the crate's tests already spend.
/// let cluster = RedisCluster::start(3)?;
/// cluster.cli(&["SET", "{user:1}:name", "ada"])?;
/// assert_eq!(cluster.cli(&["GET", "{user:1}:name"])?, "ada");
/// assert_eq!(cluster.urls().len(), 3);
/// # Ok::<(), test_support::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes, joins them into one cluster and waits until every node reports
    /// `cluster_state:ok` and knows all the others.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `masters` when it is below 3 (Redis Cluster needs a
    /// majority of masters); the errors of [`RedisServer::start`] for each node;
    /// [`Error::Cli`] when `redis-cli --cluster create` fails; [`Error::Cluster`] when the
    /// nodes do not agree in time.
    pub fn start(masters: usize) -> Result<RedisCluster, Error> {
        if masters < 3 {
            return Err(Error::InvalidArgument {
                argument: "masters",
                detail: format!("a Redis Cluster needs at least 3 masters, got {masters}"),
            });
        }
        let nodes = (0..masters)
            .map(|_| RedisServer::builder().cluster_node().start())
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster { nodes };
        cluster.create()?;
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    fn create(&self) -> Result<(), Error> {
        let addresses: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let cli = self.first().cli_path();
        let output = process::run_with_timeout(cli.as_os_str(), &args, CREATE_TIMEOUT)?;
        if !output.status.success() || output.stdout.contains("[ERR]") {
            return Err(Error::Cli {
                port: self.first().port(),
                args: args.join(" "),
                status: output.status,
                stderr: format!("{}\n{}", output.stderr.trim(), output.stdout.trim()),
            });
        }
        Ok(())
    }

    fn wait_until_ok(&self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let expected_nodes = self.nodes.len().to_string();
        let mut pause = Duration::from_millis(5);
        loop {
            let mut not_ready = None;
            for node in &self.nodes {
                let info = cluster_info(node).unwrap_or_default();
                let ok = resp::info_field(&info, "cluster_state") == Some("ok")
                    && resp::info_field(&info, "cluster_known_nodes")
                        == Some(expected_nodes.as_str());
                if !ok {
                    not_ready = Some((node.port(), info));
                    break;
                }
            }
            let Some((port, info)) = not_ready else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(Error::Cluster {
                    ports: self.ports(),
                    detail: format!(
                        "node 127.0.0.1:{port} did not report cluster_state:ok with \
                         cluster_known_nodes:{expected_nodes} within {READY_TIMEOUT:?}; \
                         last CLUSTER INFO: {}",
                        info.trim()
                    ),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn first(&self) -> &RedisServer {
        // `start` refuses fewer than three nodes, so the first one always exists.
        &self.nodes[0]
    }

    /// One `redis://127.0.0.1:PORT` URL per node, in start order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The client port of every node, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The nodes, for their addresses, pids or `cli`.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutable, to [`stop`](RedisServer::stop) or [`restart`](RedisServer::restart)
    /// one of them.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Runs `redis-cli -c -h 127.0.0.1 -p FIRST_PORT args...`: redis-cli follows `MOVED`
    /// redirections, so any key works. Output as [`RedisServer::cli`].
    ///
    /// # Errors
    ///
    /// As [`RedisServer::cli`].
    pub fn cli(&self, args: &[&str]) -> Result<String, Error> {
        let first = self.first();
        run_cli(first.cli_path(), first.port(), &["-c"], args)
    }
}

/// The text of `CLUSTER INFO` from `node`, if it answers.
fn cluster_info(node: &RedisServer) -> Option<String> {
    let mut connection = Connection::open(node.addr(), Duration::from_millis(500)).ok()?;
    match connection.command(&["CLUSTER", "INFO"]).ok()? {
        Reply::Bulk(Some(info)) => Some(info),
        _ => None,
    }
}
