//! Harpoon consensus: Raft's log replication with lease-based,
//! non-preempting leadership. Sans-IO: see [`Node`] and [`Ready`]. Generic
//! over the [`Command`] it replicates, of which it knows only whether it is
//! a read and how many bytes it takes.

mod check;
mod config;
mod log;
mod node;
mod ready;
mod types;

pub use check::{check_structure, MessageError, LOG_INDEX_MAX, TERM_JUMP_MAX, TERM_MAX};
pub use config::{Config, ConfigError, ElectionMode, Faults};
pub use log::Log;
pub use node::{
    Input, Node, Recovered, Role, StartError, TransferError, APPENDS_IN_FLIGHT_MAX, APPEND_BYTES_MAX,
    APPEND_ENTRIES_COUNT_MAX, LEASE_ROUNDS_TRACKED_MAX, READS_WAITING_COUNT_MAX, UNCOMMITTED_ENTRIES_COUNT_MAX,
};
pub use ready::{Persist, ReadReady, Ready, Rejection};
pub use types::{
    Command, Entry, EntryPayload, Envelope, HardState, LogIndex, Message, Nanos, NodeId, RejectHint, Snapshot, Term,
};

#[cfg(test)]
mod test_command;
#[cfg(test)]
mod tests;
