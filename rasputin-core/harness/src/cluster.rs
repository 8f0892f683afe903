//! The `rasputind` processes of a campaign: where each one listens, and
//! starting, killing, pausing and resuming them by pid.

use std::fs::{self, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::HarnessError;
use rasputin::client::Client;

/// Where libfaketime lives on Debian (package `faketime`); the MT build is
/// the one for multi-threaded programs.
pub const LIBFAKETIME_PATH: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// How long a stopped node gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a waiting loop looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The addresses of one node. In the proxy network the node listens on
/// `own_ip` but is known to its peers (and clients) by `advertised_ip`,
/// where the proxy listens; otherwise the two are the same.
#[derive(Clone, Debug)]
pub struct NodeAddresses {
    pub own_ip: Ipv4Addr,
    pub advertised_ip: Ipv4Addr,
    pub peer_port: u16,
    pub cli_port: u16,
}

impl NodeAddresses {
    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.advertised_ip), self.peer_port)
    }
    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.advertised_ip), self.cli_port)
    }
}

/// Node `index`'s own address: 127.0.0.10, .11, ... Clients and the harness
/// connect from 127.0.0.1, so rules between node addresses never touch them.
pub fn own_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + index as u8)
}

/// The address the proxy listens on for node `index`.
pub fn proxy_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 30 + index as u8)
}

/// Plans addresses for `count` nodes with one peer port and one client
/// port that are free on every address the campaign uses.
pub fn plan_addresses(count: usize, proxied: bool) -> Result<Vec<NodeAddresses>, HarnessError> {
    let mut ips: Vec<Ipv4Addr> = (0..count).map(own_ip).collect();
    if proxied {
        ips.extend((0..count).map(proxy_ip));
    }
    let peer_port = free_port_on_all(&ips)?;
    let cli_port = loop {
        let port = free_port_on_all(&ips)?;
        if port != peer_port {
            break port;
        }
    };
    Ok((0..count)
        .map(|index| NodeAddresses {
            own_ip: own_ip(index),
            advertised_ip: if proxied { proxy_ip(index) } else { own_ip(index) },
            peer_port,
            cli_port,
        })
        .collect())
}

/// Daemon ports come from below Linux's ephemeral range (32768–60999 by
/// default). A port that bind(0) picked and the harness released lies in
/// that range, where a daemon's outgoing connection (bound to its own
/// address, port 0) could take it before the daemon meant to listen on it
/// binds it. Nothing takes a port below the range unless asked to.
const DAEMON_PORTS: std::ops::Range<u16> = 20_000..32_000;

fn free_port_on_all(ips: &[Ipv4Addr]) -> Result<u16, HarnessError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(DAEMON_PORTS.end - DAEMON_PORTS.start);
    // Another process running the harness starts elsewhere in the range.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = DAEMON_PORTS.start + u16::try_from((offset + step) % span).expect("below the span");
        if ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return Ok(port);
        }
    }
    Err(HarnessError::Setup(format!("found no port in {DAEMON_PORTS:?} free on all of {ips:?}")))
}

struct NodeProcess {
    child: Option<Child>,
    paused: bool,
}

/// The cluster under test. Dropping it kills every process it started.
pub struct Cluster {
    daemon: PathBuf,
    directory: PathBuf,
    pub addresses: Vec<NodeAddresses>,
    nodes: Vec<NodeProcess>,
}

impl Cluster {
    /// Starts every node; `directory` gets one storage directory and one log per node.
    pub fn start(daemon: &Path, directory: &Path, addresses: Vec<NodeAddresses>) -> Result<Cluster, HarnessError> {
        let nodes = addresses.iter().map(|_| NodeProcess { child: None, paused: false }).collect();
        let mut cluster =
            Cluster { daemon: daemon.to_path_buf(), directory: directory.to_path_buf(), addresses, nodes };
        for index in 0..cluster.nodes.len() {
            cluster.launch(index, None)?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.addresses.iter().map(NodeAddresses::client).collect()
    }

    pub fn log_path(&self, index: usize) -> PathBuf {
        self.directory.join(format!("node{}.log", index + 1))
    }

    /// Starts node `index`; with `clock_rate`, under libfaketime so that its
    /// clocks (monotonic included) run at that rate.
    pub fn launch(&mut self, index: usize, clock_rate: Option<f64>) -> Result<(), HarnessError> {
        assert!(self.nodes[index].child.is_none(), "node {} is already running", index + 1);
        let node = &self.addresses[index];
        let seeds: Vec<String> = self.addresses.iter().map(|node| node.peer().to_string()).collect();
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.directory.join(format!("node{}.stderr", index + 1)))
            .map_err(|source| HarnessError::io("open a node's stderr file", source))?;
        let mut command = Command::new(&self.daemon);
        command
            .arg(format!("--peer-port={}", node.peer_port))
            .arg(format!("--cli-port={}", node.cli_port))
            .arg(format!("--seed-peers={}", seeds.join(",")))
            .arg(format!("--storage-dir={}", self.directory.join(format!("node{}", index + 1)).display()))
            .arg(format!("--logfile={}", self.log_path(index).display()))
            .arg(format!("--bind={}", node.own_ip))
            .arg(format!("--advertise={}", node.advertised_ip))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(rate) = clock_rate {
            command.env("LD_PRELOAD", LIBFAKETIME_PATH).env("FAKETIME", format!("+0 x{rate}"));
        }
        let child = command.spawn().map_err(|source| HarnessError::Spawn { program: self.daemon.clone(), source })?;
        self.nodes[index] = NodeProcess { child: Some(child), paused: false };
        Ok(())
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[index].paused = false;
    }

    pub fn pause(&mut self, index: usize) -> Result<(), HarnessError> {
        self.signal(index, "STOP")?;
        self.nodes[index].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, index: usize) -> Result<(), HarnessError> {
        if self.nodes[index].paused {
            self.signal(index, "CONT")?;
            self.nodes[index].paused = false;
        }
        Ok(())
    }

    fn signal(&self, index: usize, signal: &str) -> Result<(), HarnessError> {
        let Some(child) = &self.nodes[index].child else { return Ok(()) };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .map_err(|source| HarnessError::Spawn { program: "kill".into(), source })?;
        if !status.success() {
            return Err(HarnessError::Setup(format!("kill -{signal} of node {} failed: {status}", index + 1)));
        }
        Ok(())
    }

    /// Which node the cluster says leads, asking through a client with a
    /// short deadline. None if no leader answered in time.
    pub fn leader(&self) -> Option<usize> {
        let probe = Client::new(self.client_addresses(), 1);
        probe.set_timeouts(Duration::from_millis(300), Duration::from_secs(1));
        probe.get(b"rasputin-nemesis/leader-probe").ok()?;
        let leader = probe.leader()?;
        self.addresses.iter().position(|node| node.client() == leader)
    }

    /// Resumes, then stops every node: SIGTERM, and SIGKILL for any still
    /// running after the grace period.
    pub fn stop_all(&mut self) {
        for index in 0..self.nodes.len() {
            let _ = self.resume(index);
            if let Some(child) = &self.nodes[index].child {
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(POLL_INTERVAL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Lines of node `index`'s log that report a broken invariant or a crash.
    pub fn log_failures(&self, index: usize) -> Vec<String> {
        let mut found = Vec::new();
        for path in [self.log_path(index), self.directory.join(format!("node{}.stderr", index + 1))] {
            let Ok(text) = fs::read_to_string(&path) else { continue };
            found.extend(text.lines().filter(|line| line.contains("panicked")).map(str::to_string));
        }
        found
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            let _ = self.resume(index);
            self.kill(index);
        }
    }
}

/// Creates (or empties) the campaign directory.
pub fn fresh_directory(directory: &Path) -> Result<(), HarnessError> {
    if directory.exists() {
        fs::remove_dir_all(directory).map_err(|source| HarnessError::io("empty the campaign directory", source))?;
    }
    fs::create_dir_all(directory).map_err(|source| HarnessError::io("create the campaign directory", source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_ports_lie_below_the_ephemeral_range_and_are_not_repeated() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("a Linux host");
        let ephemeral_low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        let ips = [Ipv4Addr::LOCALHOST];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let port = free_port_on_all(&ips).unwrap();
            assert!(port < ephemeral_low, "port {port} is in the ephemeral range from {ephemeral_low}");
            assert!(seen.insert(port), "port {port} was handed out twice");
        }
    }
}
