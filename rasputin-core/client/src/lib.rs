//! Rasputin DB's client: a linearizable, distributed key-value store.
//! See the README for an example.
//!
//! This crate is what applications depend on. It holds no server code: no
//! RocksDB, no event loop, no command-line parsing. The protocol and the
//! limits come from `rasputin-kv`, the crate the daemon uses too, so the
//! two cannot disagree.

mod builder;
pub mod client;

pub use client::{
    prefix_end, Client, ClientBuilder, ClientError, KeyValue, NodeStatus, RangeStatus, Response, RetryToken, ScanIter,
    ScanPage,
};
pub use rasputin_kv::range::RangeDescriptor;
pub use rasputin_kv::wire::{CLIENT_FRAME_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
