//! The command consensus's own tests replicate: consensus sees only whether
//! it is a read and its size, so the tests need nothing of the key-value store.

use super::types::Command;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TestCommand {
    pub client_id: u64,
    pub sequence: u64,
    pub read: bool,
}

impl Command for TestCommand {
    fn is_read(&self) -> bool {
        self.read
    }

    fn size_bytes(&self) -> usize {
        16
    }
}
