//! Rasputin DB: a linearizable, distributed key-value store.
//!
//! - [`consensus`]: the Harpoon state machine, sans-IO.
//! - [`state_machine`]: the key-value store that committed entries apply to.
//! - [`sim`]: the deterministic cluster simulator.
//! - [`checker`]: the linearizability checker for client histories.

pub mod checker;
pub mod consensus;
pub mod sim;
pub mod state_machine;
