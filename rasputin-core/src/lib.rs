//! Rasputin DB: a linearizable, distributed key-value store.
//!
//! - [`Client`]: the client; see the README for an example.
//! - [`consensus`]: the Harpoon state machine, sans-IO, generic over its command.
//! - [`operation`]: the key-value commands, and consensus's types for them.
//! - [`state_machine`]: the key-value semantics that committed entries apply.
//! - [`wire`]: the framed protobuf protocol.
//! - `server` (feature `server`): the daemon `rasputind` and its RocksDB storage.
//! - [`sim`]: the deterministic cluster simulator.
//! - [`checker`]: the linearizability checker for client histories.
//! - [`harness`]: fault campaigns against real clusters (`rasputin-nemesis`).

pub mod checker;
pub mod client;
pub mod consensus;
pub mod harness;
pub mod operation;
#[cfg(feature = "server")]
pub mod server;
pub mod sim;
pub mod state_machine;
pub mod wire;

pub use client::{Client, ClientError, Response};
