//! rasputind's command line: the original README's flags, plus what a real
//! cluster needs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

/// Entries applied between snapshots, by default.
pub const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 10_000;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rasputind",
    version,
    about = "The Rasputin DB server: one member of a linearizable, replicated key-value store",
    after_help = "Every flag can also be set from the environment, as RASPUTIN_<FLAG> (shown with each flag); a flag on the command line wins over the environment.\n\nExample (a single-node cluster):\n  rasputind --peer-port=7777 --cli-port=8888 --seed-peers=127.0.0.1:7777 \\\n            --storage-dir=/var/lib/rasputin/ --logfile=/var/log/rasputin.log"
)]
pub struct Flags {
    /// Port for replication traffic from the other members.
    #[arg(long, env = "RASPUTIN_PEER_PORT", value_name = "PORT")]
    pub peer_port: u16,
    /// Port for clients.
    #[arg(long, env = "RASPUTIN_CLI_PORT", value_name = "PORT")]
    pub cli_port: u16,
    /// Every member's peer address (host:port), this node's included, comma-separated.
    /// All members must be given the same list: it defines the cluster and each node's id.
    #[arg(long, env = "RASPUTIN_SEED_PEERS", value_name = "HOST:PORT,...", value_parser = parse_peers)]
    pub seed_peers: PeerList,
    /// Directory for this node's data (created if missing). One daemon per directory.
    #[arg(long, env = "RASPUTIN_STORAGE_DIR", value_name = "DIR")]
    pub storage_dir: PathBuf,
    /// Write logs here (appending) instead of to standard error. Set the level with RUST_LOG (default info).
    #[arg(long, env = "RASPUTIN_LOGFILE", value_name = "FILE")]
    pub logfile: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "RASPUTIN_BIND", value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// This node's address as it appears in --seed-peers (defaults to --bind).
    #[arg(long, env = "RASPUTIN_ADVERTISE", value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Take a snapshot and compact the log after this many applied entries.
    #[arg(long, env = "RASPUTIN_SNAPSHOT_EVERY_ENTRIES", value_name = "ENTRIES", default_value_t = SNAPSHOT_EVERY_ENTRIES_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every_entries: u64,
    /// This node replaces one whose data was lost: start from an empty
    /// --storage-dir although the cluster has heard from this node before.
    /// The node waits until every other member answers, never votes again
    /// in a term it may have voted in, and votes only once it holds every
    /// entry committed before it started. Without it, such a node refuses
    /// to start, since a node that forgot its votes could vote twice.
    #[arg(long, env = "RASPUTIN_REPLACE")]
    pub replace: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerList(pub Vec<SocketAddr>);

fn parse_peers(text: &str) -> Result<PeerList, String> {
    let mut peers = Vec::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let address = part
            .to_socket_addrs()
            .map_err(|error| format!("{part:?} is not a host:port address: {error}"))?
            .next()
            .ok_or_else(|| format!("{part:?} resolves to no address"))?;
        peers.push(address);
    }
    if peers.is_empty() {
        return Err("list at least one peer, this node included".to_string());
    }
    peers.sort();
    peers.dedup();
    Ok(PeerList(peers))
}

/// Who this node is in the cluster that --seed-peers defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Peer addresses in id order: node `n` has address `peers[n - 1]`.
    pub peers: Vec<SocketAddr>,
    pub node_id: u64,
    /// A fingerprint of the member list, so that nodes of different clusters refuse each other.
    pub cluster_id: u64,
}

impl Flags {
    pub fn membership(&self) -> Result<Membership, String> {
        let own = SocketAddr::new(self.advertise.unwrap_or(self.bind), self.peer_port);
        let peers = self.seed_peers.0.clone();
        let position = peers.iter().position(|peer| *peer == own).ok_or_else(|| {
            format!("--seed-peers must include this node's own peer address {own} (set --advertise if it differs from --bind)")
        })?;
        let cluster_id = peers.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, peer| {
            peer.to_string().bytes().fold(hash, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3))
        });
        Ok(Membership { peers, node_id: position as u64 + 1, cluster_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag has its variable, named after it, so that none is
    /// forgotten when a flag is added.
    #[test]
    fn every_flag_can_come_from_a_rasputin_variable() {
        use clap::CommandFactory;
        let command = Flags::command();
        let flags: Vec<_> = command.get_arguments().filter(|argument| argument.get_long().is_some()).collect();
        assert!(flags.len() >= 9);
        for flag in flags {
            let long = flag.get_long().expect("filtered above");
            let expected = format!("RASPUTIN_{}", long.to_uppercase().replace('-', "_"));
            let env = flag.get_env().map(|env| env.to_string_lossy().into_owned());
            assert_eq!(env.as_deref(), Some(expected.as_str()), "--{long}");
        }
    }

    fn flags(arguments: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("rasputind").chain(arguments.iter().copied()))
    }

    #[test]
    fn the_readme_flags_parse_as_written() {
        let parsed = flags(&[
            "--peer-port=7777",
            "--cli-port=8888",
            "--seed-peers=127.0.0.1:7777",
            "--storage-dir=/var/lib/rasputin/",
            "--logfile=/var/log/rasputin.log",
        ])
        .unwrap();
        let membership = parsed.membership().unwrap();
        assert_eq!((membership.node_id, membership.peers.len()), (1, 1));
    }

    #[test]
    fn ids_follow_the_sorted_peer_list_and_bad_values_exit_with_two() {
        let list = "--seed-peers=127.0.0.1:7779,127.0.0.1:7777,127.0.0.1:7778";
        let parsed = flags(&["--peer-port=7778", "--cli-port=1", list, "--storage-dir=x"]).unwrap();
        assert_eq!(parsed.membership().unwrap().node_id, 2);
        let stranger = flags(&["--peer-port=7000", "--cli-port=1", list, "--storage-dir=x"]).unwrap();
        assert!(stranger.membership().is_err());
        let error = flags(&["--peer-port=notaport", "--cli-port=1", list, "--storage-dir=x"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let error = flags(&["--peer-port=1", "--cli-port=1", "--seed-peers=nonsense", "--storage-dir=x"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }
}
