//! Rasputin DB's key-value store as consensus sees it and as clients speak
//! to it: the commands (`operation`), what applying them does
//! (`state_machine`), the ranges the key space is cut into (`range`), the framed protobuf protocol (`wire`) and the
//! snapshot format (`snapshot`). Shared by the client, the daemon and the simulator, so
//! that none of them can disagree on what an operation means.

pub mod balance;
pub mod health;
pub mod meta;
pub mod operation;
pub mod range;
pub mod route;
pub mod scan;
pub mod snapshot;
pub mod state_machine;
pub mod wire;
