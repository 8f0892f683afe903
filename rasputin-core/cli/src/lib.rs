//! The library half of the `rasputin` command: the closed-loop load that
//! `rasputin bench` and `rasputin-bench` share.

pub mod load;
