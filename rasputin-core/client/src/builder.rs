//! `Client::builder()`: peers by host name or address, and the settings a
//! deployment wants to name rather than pass positionally.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::client::{Client, ClientError, ATTEMPT_TIMEOUT_DEFAULT, OPERATION_TIMEOUT_DEFAULT};

/// Builds a [`Client`]. Peers are "host:port" strings: an IP address or a
/// host name, resolved once, when [`ClientBuilder::build`] runs; every
/// address a name resolves to becomes a peer.
///
/// ```no_run
/// let client = rasputin::Client::builder()
///     .peer("db1.example.com:8888")
///     .peer("10.0.0.2:8888")
///     .connections_per_server(4)
///     .build()?;
/// # Ok::<(), rasputin::ClientError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    peers: Vec<String>,
    connections_per_server: usize,
    attempt_timeout: Duration,
    operation_timeout: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            peers: Vec::new(),
            connections_per_server: 1,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            operation_timeout: OPERATION_TIMEOUT_DEFAULT,
        }
    }
}

impl ClientBuilder {
    /// Adds a server's client address, "host:port"; any one server will do.
    pub fn peer(mut self, peer: impl Into<String>) -> Self {
        self.peers.push(peer.into());
        self
    }

    /// Adds several servers' client addresses.
    pub fn peers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, peers: I) -> Self {
        self.peers.extend(peers.into_iter().map(Into::into));
        self
    }

    /// Connections per server over which concurrent calls are pipelined
    /// (`nthreads` of `Client::new`); at least 1.
    pub fn connections_per_server(mut self, count: usize) -> Self {
        self.connections_per_server = count;
        self
    }

    /// How long one attempt, and a whole operation with its retries, may take.
    pub fn timeouts(mut self, attempt: Duration, operation: Duration) -> Self {
        self.attempt_timeout = attempt;
        self.operation_timeout = operation;
        self
    }

    /// Resolves the peers and creates the client. Connections open lazily:
    /// an unreachable cluster shows up on the first call, not here.
    pub fn build(self) -> Result<Client, ClientError> {
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for peer in &self.peers {
            for address in resolve(peer)? {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
        }
        if addresses.is_empty() {
            return Err(ClientError::NoPeers);
        }
        if self.connections_per_server == 0 {
            return Err(ClientError::InvalidSetting("connections_per_server must be at least 1".into()));
        }
        if self.attempt_timeout.is_zero() || self.operation_timeout < self.attempt_timeout {
            return Err(ClientError::InvalidSetting(format!(
                "timeouts must be positive, with the operation's ({:?}) at least the attempt's ({:?})",
                self.operation_timeout, self.attempt_timeout
            )));
        }
        let client = Client::new(addresses, self.connections_per_server);
        client.set_timeouts(self.attempt_timeout, self.operation_timeout);
        Ok(client)
    }
}

fn resolve(peer: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let unknown = |detail: String| ClientError::UnknownPeer { peer: peer.to_string(), detail };
    let addresses: Vec<SocketAddr> = peer.to_socket_addrs().map_err(|error| unknown(error.to_string()))?.collect();
    if addresses.is_empty() {
        return Err(unknown("the name has no addresses".into()));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_addresses_both_resolve() {
        let client = Client::builder().peer("localhost:8888").peer("127.0.0.2:7000").build().unwrap();
        let peers = client.peers();
        assert!(peers.iter().any(|peer| peer.ip().is_loopback() && peer.port() == 8888), "{peers:?}");
        assert!(peers.contains(&"127.0.0.2:7000".parse().unwrap()), "{peers:?}");
    }

    #[test]
    fn bad_peers_and_settings_are_clear_errors() {
        let Err(error) = Client::builder().peer("no-port-here").build() else {
            panic!("a peer without a port resolved")
        };
        assert!(matches!(&error, ClientError::UnknownPeer { peer, .. } if peer == "no-port-here"), "{error}");
        assert!(matches!(Client::builder().build(), Err(ClientError::NoPeers)));
        let zero = Client::builder().peer("127.0.0.1:1").connections_per_server(0).build();
        assert!(matches!(zero, Err(ClientError::InvalidSetting(_))));
        let backwards =
            Client::builder().peer("127.0.0.1:1").timeouts(Duration::from_secs(5), Duration::from_secs(1)).build();
        assert!(matches!(backwards, Err(ClientError::InvalidSetting(_))));
    }
}
