//! The operations a benchmark client performs, for each system measured.

use std::net::SocketAddr;

/// One client's connection to the system under test.
pub trait Store: Send {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String>;
    /// A linearizable read.
    fn get(&mut self, key: &[u8]) -> Result<(), String>;
    /// Swaps in `new` if the value is `expected`.
    fn cas(&mut self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<(), String>;
}

/// A `rasputin::Client` with one connection per server; requests go to the leader.
pub struct RasputinStore {
    client: rasputin::Client,
}

impl RasputinStore {
    pub fn new(peers: Vec<SocketAddr>) -> RasputinStore {
        RasputinStore { client: rasputin::Client::new(peers, 1) }
    }
}

impl Store for RasputinStore {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.client.set(key, value).map(drop).map_err(|error| error.to_string())
    }

    fn get(&mut self, key: &[u8]) -> Result<(), String> {
        self.client.get(key).map(drop).map_err(|error| error.to_string())
    }

    fn cas(&mut self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<(), String> {
        self.client.cas(key, expected, new).map(drop).map_err(|error| error.to_string())
    }
}
