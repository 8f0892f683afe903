//! Network faults between nodes: iptables DROP rules inside a private
//! network namespace when the harness runs as root with iptables, otherwise
//! a fault-injecting TCP proxy on the peer links.

use std::process::Command;
use std::time::Duration;

use super::cluster::{own_ip, NodeAddresses};
use super::proxy::Proxy;
use super::HarnessError;

/// What happens on a faulted directed link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Nothing gets through: dropped packets, or closed and refused connections.
    Cut,
    /// Bytes stop moving but connections stay open, so senders' buffers fill.
    Stall,
    /// Every byte arrives this much later.
    Delay(Duration),
}

/// A directed link: messages from node `.0` to node `.1`.
pub type Link = (usize, usize);

pub enum Network {
    Firewall,
    Proxy(Proxy),
}

impl Network {
    /// Sets up the chosen kind. The firewall needs the private namespace the
    /// harness re-executes itself in (see `bin/rasputin-nemesis.rs`).
    pub fn start(firewall: bool, addresses: &[NodeAddresses]) -> Result<Network, HarnessError> {
        if firewall {
            run("ip", &["link", "set", "lo", "up"])?;
            run("iptables", &["-w", "-F", "INPUT"])?;
            return Ok(Network::Firewall);
        }
        Ok(Network::Proxy(Proxy::start(addresses)?))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Network::Firewall => "iptables in a private network namespace",
            Network::Proxy(_) => "fault-injecting TCP proxy",
        }
    }

    /// The link faults this network can inject.
    pub fn link_faults(&self) -> &'static [LinkFaultKind] {
        match self {
            Network::Firewall => &[LinkFaultKind::Cut],
            Network::Proxy(_) => &[LinkFaultKind::Cut, LinkFaultKind::Stall, LinkFaultKind::Delay],
        }
    }

    pub fn apply(&mut self, links: &[Link], fault: LinkFault) -> Result<(), HarnessError> {
        match self {
            Network::Firewall => {
                assert_eq!(fault, LinkFault::Cut, "the firewall only cuts links");
                for &(from, to) in links {
                    let (source, destination) = (own_ip(from).to_string(), own_ip(to).to_string());
                    run("iptables", &["-w", "-A", "INPUT", "-s", &source, "-d", &destination, "-j", "DROP"])?;
                }
                Ok(())
            }
            Network::Proxy(proxy) => {
                proxy.set_faults(links, fault);
                Ok(())
            }
        }
    }

    pub fn heal(&mut self) -> Result<(), HarnessError> {
        match self {
            Network::Firewall => run("iptables", &["-w", "-F", "INPUT"]),
            Network::Proxy(proxy) => {
                proxy.clear_faults();
                Ok(())
            }
        }
    }

    pub fn stop(self) {
        if let Network::Proxy(proxy) = self {
            proxy.stop();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFaultKind {
    Cut,
    Stall,
    Delay,
}

fn run(program: &str, arguments: &[&str]) -> Result<(), HarnessError> {
    let output = Command::new(program)
        .args(arguments)
        .output()
        .map_err(|source| HarnessError::Spawn { program: program.into(), source })?;
    if !output.status.success() {
        return Err(HarnessError::Setup(format!(
            "{program} {} failed ({}): {}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Whether this process may use the firewall: root, with iptables and unshare.
pub fn firewall_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            status.lines().any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let present =
        |program: &str| Command::new(program).arg("--version").output().is_ok_and(|output| output.status.success());
    root && present("iptables") && present("unshare")
}
