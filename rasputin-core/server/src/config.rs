//! rasputind's command line: the original README's flags, plus what a real
//! cluster needs.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

/// Entries applied between snapshots, by default.
pub const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 10_000;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rasputind",
    version,
    about = "The Rasputin DB server: one member of a linearizable, replicated key-value store",
    after_help = "Every flag can also be set from the environment, as RASPUTIN_<FLAG> (shown with each flag), and from a TOML file named by --config, whose keys are the flags' names (peer-port = 7777, seed-peers = \"127.0.0.1:7777\"). The command line wins over the environment, and the environment over the file.\n\nExample (a single-node cluster):\n  rasputind --peer-port=7777 --cli-port=8888 --seed-peers=127.0.0.1:7777 \\\n            --storage-dir=/var/lib/rasputin/ --logfile=/var/log/rasputin.log"
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
    /// Write logs here (appending) instead of to standard error.
    #[arg(long, env = "RASPUTIN_LOGFILE", value_name = "FILE")]
    pub logfile: Option<PathBuf>,
    /// Log lines as text, or as JSON objects (timestamp, level, node_id,
    /// target, message, fields), one per line.
    #[arg(long, env = "RASPUTIN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which logs to write: a tracing filter, such as info, debug or
    /// info,rasputin_server=debug.
    #[arg(long, env = "RASPUTIN_LOG_LEVEL", value_name = "FILTER", default_value = "info")]
    pub log_level: String,
    /// Read flags from this TOML file; see below.
    #[arg(long, env = "RASPUTIN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Serve HTTP on this port of the bind address: /metrics (Prometheus),
    /// /health and /status. Off unless given.
    #[arg(long, env = "RASPUTIN_STATUS_PORT", value_name = "PORT")]
    pub status_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerList(pub Vec<SocketAddr>);

/// Where a flag's value came from, for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    Environment,
    File,
    Default,
}

/// The flags, and where each value came from.
#[derive(Debug)]
pub struct Configuration {
    pub flags: Flags,
    /// (flag, value, source) for every flag with a value, in --help's order.
    pub sources: Vec<(String, String, Source)>,
}

impl Configuration {
    /// "peer-port=7777 (command line), ..." for the start-up line.
    pub fn describe(&self) -> String {
        let describe = |(flag, value, source): &(String, String, Source)| {
            let source = match source {
                Source::CommandLine => "command line",
                Source::Environment => "environment",
                Source::File => "config file",
                Source::Default => "default",
            };
            format!("{flag}={value} ({source})")
        };
        self.sources.iter().map(describe).collect::<Vec<_>>().join(", ")
    }
}

/// Parses the command line, the RASPUTIN_ variables and the --config file,
/// in that order of precedence. Errors are clap's, so that they print
/// alike and exit with code 2.
pub fn parse(arguments: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Configuration, clap::Error> {
    let arguments: Vec<OsString> = arguments.into_iter().map(Into::into).collect();
    let mut command = Flags::command();
    let file_values = match config_path(&arguments) {
        Some(path) => read_config_file(&path, &command)?,
        None => Vec::new(),
    };
    // The file's values stand in as defaults, which the environment and the
    // command line override; a flag the file sets is no longer required.
    for (id, value) in &file_values {
        command = command.mut_arg(id.as_str(), |argument| argument.default_value(value.clone()).required(false));
    }
    let matches = command.try_get_matches_from_mut(&arguments)?;
    let flags = Flags::from_arg_matches(&matches).map_err(|error| error.format(&mut command))?;
    let mut sources = Vec::new();
    for argument in command.get_arguments() {
        let id = argument.get_id().as_str();
        let Some(raw) = matches.get_raw(id) else { continue };
        let value = raw.map(|part| part.to_string_lossy().into_owned()).collect::<Vec<_>>().join(",");
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Source::CommandLine,
            Some(ValueSource::EnvVariable) => Source::Environment,
            _ if file_values.iter().any(|(file_id, _)| file_id == id) => Source::File,
            _ => Source::Default,
        };
        let flag = argument.get_long().unwrap_or(id).to_string();
        sources.push((flag, value, source));
    }
    Ok(Configuration { flags, sources })
}

/// --config from the command line, else RASPUTIN_CONFIG.
fn config_path(arguments: &[OsString]) -> Option<PathBuf> {
    let mut words = arguments.iter().skip(1).map(|word| word.to_string_lossy().into_owned());
    while let Some(word) = words.next() {
        if word == "--" {
            break;
        }
        if let Some(path) = word.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
        if word == "--config" {
            return words.next().map(PathBuf::from);
        }
    }
    std::env::var_os("RASPUTIN_CONFIG").map(PathBuf::from)
}

/// The file's (argument id, value) pairs. An unknown key, or a value that is
/// not a string, number, boolean or list, is an error naming the key.
fn read_config_file(path: &Path, command: &clap::Command) -> Result<Vec<(String, String)>, clap::Error> {
    let invalid = |message: String| {
        clap::Error::raw(
            clap::error::ErrorKind::InvalidValue,
            message
                + "
",
        )
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| invalid(format!("cannot read --config {}: {error}", path.display())))?;
    let table: toml::Table =
        text.parse().map_err(|error| invalid(format!("--config {} is not valid TOML: {error}", path.display())))?;
    let mut values = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let argument = command
            .get_arguments()
            .find(|argument| argument.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                invalid(format!(
                    "--config {}: unknown key {key:?}; keys are the flags' names, such as peer-port",
                    path.display()
                ))
            })?;
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Array(items) => {
                let parts: Option<Vec<String>> =
                    items.into_iter().map(|item| item.as_str().map(String::from)).collect();
                parts.ok_or_else(|| invalid(format!("--config {}: {key} must list strings", path.display())))?.join(",")
            }
            other => {
                return Err(invalid(format!(
                    "--config {}: {key} = {other} is not a string, number or boolean",
                    path.display()
                )))
            }
        };
        values.push((argument.get_id().as_str().to_string(), text));
    }
    Ok(values)
}

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
        assert!(flags.len() >= 13);
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

    fn write_config(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("rasputind-config-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The environment is the process's: one test sets its variable, under
    /// a name no other test reads.
    #[test]
    fn a_config_file_fills_in_below_the_environment_and_the_command_line() {
        let path = write_config(
            "precedence",
            "peer-port = 7777\ncli_port = 8888\nseed-peers = [\"127.0.0.1:7777\"]\nstorage-dir = \"/tmp/x\"\nsnapshot-every-entries = 5\nstatus-port = 9888\n",
        );
        let config = format!("--config={}", path.display());
        let parsed = parse(["rasputind", config.as_str(), "--cli-port=9999"]).unwrap();
        assert_eq!((parsed.flags.peer_port, parsed.flags.cli_port), (7777, 9999));
        assert_eq!(parsed.flags.snapshot_every_entries, 5);
        assert_eq!(parsed.flags.status_port, Some(9888));
        let source =
            |flag: &str| parsed.sources.iter().find(|(name, _, _)| name == flag).map(|(_, _, source)| source.clone());
        assert_eq!(source("peer-port"), Some(Source::File));
        assert_eq!(source("cli-port"), Some(Source::CommandLine));
        assert_eq!(source("log-level"), Some(Source::Default));
        let line = parsed.describe();
        assert!(line.contains("peer-port=7777 (config file)"), "{line}");
        assert!(line.contains("cli-port=9999 (command line)"), "{line}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_config_file_with_an_unknown_key_or_bad_toml_exits_with_two() {
        let unknown = write_config("unknown", "peer-port = 7777\npeer-prot = 1\n");
        let error = parse(["rasputind".to_string(), format!("--config={}", unknown.display())]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("unknown key \"peer-prot\""), "{error}");
        let broken = write_config("broken", "peer-port = = 1\n");
        let error = parse(["rasputind".to_string(), format!("--config={}", broken.display())]).unwrap_err();
        assert!(error.to_string().contains("not valid TOML"), "{error}");
        let missing = parse(["rasputind", "--config=/nonexistent/rasputind.toml"]).unwrap_err();
        assert!(missing.to_string().contains("cannot read --config"), "{missing}");
        let _ = (std::fs::remove_file(unknown), std::fs::remove_file(broken));
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
