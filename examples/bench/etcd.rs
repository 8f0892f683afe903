//! etcd through its gRPC API (the `etcd-client` crate), made blocking with a
//! single-threaded runtime per client so that the workload loop is the same.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::runtime::Runtime;

use rasputin_cli::load::Store;

pub struct EtcdStore {
    runtime: Runtime,
    client: Client,
}

impl EtcdStore {
    /// One client, one connection, to `endpoint`.
    pub fn connect(endpoint: &str) -> Result<EtcdStore, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start a runtime: {error}"))?;
        let client = runtime
            .block_on(Client::connect([format!("http://{endpoint}")], None))
            .map_err(|error| format!("cannot connect to etcd at {endpoint}: {error}"))?;
        Ok(EtcdStore { runtime, client })
    }
}

impl Store for EtcdStore {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.runtime.block_on(self.client.put(key, value, None)).map(drop).map_err(|error| error.to_string())
    }

    /// etcd's default read is linearizable (not `serializable`).
    fn get(&mut self, key: &[u8]) -> Result<(), String> {
        self.runtime.block_on(self.client.get(key, None)).map(drop).map_err(|error| error.to_string())
    }

    fn cas(&mut self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<(), String> {
        let swap =
            Txn::new().when([Compare::value(key, CompareOp::Equal, expected)]).and_then([TxnOp::put(key, new, None)]);
        let response = self.runtime.block_on(self.client.txn(swap)).map_err(|error| error.to_string())?;
        if response.succeeded() {
            Ok(())
        } else {
            Err("the compare failed".to_string())
        }
    }
}
