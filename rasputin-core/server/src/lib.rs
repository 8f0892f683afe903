//! rasputind: the daemon. mio event loops for the peer and client ports
//! drive the sans-IO consensus core with a monotonic clock, and RocksDB
//! stores the log, the hard state and the key-value state machine.

mod clock;
pub mod config;
mod connection;
mod daemon;
pub mod logging;
mod metrics;
mod observer;
mod replica;
mod snapshot;
mod status;
mod storage;

pub use config::{Flags, Membership, PeerList, SNAPSHOT_EVERY_ENTRIES_DEFAULT};
pub use daemon::{run, DaemonError};
pub use storage::{Claim, SnapshotSource, Storage, StorageError};
