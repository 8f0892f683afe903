//! The split nemesis: during faults, the range holding a key in use is
//! split at that key, so that the workload's keys move between ranges
//! (and, with the daemons' balancing, between leaders) while nodes die and
//! links fail. A split is not a fault and is never healed; at the end every
//! node must host the same ranges, and the meta range record exactly them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rasputin::{Client, RangeDescriptor, RangeStatus};

/// How long one split may take: a split needs its range's leader, so under
/// a fault it may wait for an election, and it gives up with the fault.
const SPLIT_TIMEOUT: Duration = Duration::from_secs(2);
const SPLIT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);

/// How long the nodes get, after the last fault, to host the same ranges.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the campaign's splits came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitCounts {
    pub made: usize,
    /// The key started a range already.
    pub already: usize,
    /// Asked but not made: no leader in time, or a version that moved on.
    pub failed: usize,
}

/// A split that holds: made now, or made before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Made,
    Already,
}

/// The workload's name for key `number` (`workload::perform`).
pub fn key_name(number: u64) -> Vec<u8> {
    format!("register-{number}").into_bytes()
}

/// Splits the range holding `key` at `key`, at the newest version any node
/// lists for it; a key that starts a range already counts as made.
pub fn split(peers: &[SocketAddr], key: &[u8]) -> Result<Split, String> {
    let client = Client::new(peers.to_vec(), 1);
    client.set_timeouts(SPLIT_ATTEMPT_TIMEOUT, SPLIT_TIMEOUT);
    let listed = ranges(&client);
    let holding = listed.iter().filter(|range| range.holds(key)).max_by_key(|range| range.version);
    let Some(holding) = holding else { return Err("no node listed the range holding the key".to_string()) };
    if holding.start == key {
        return Ok(Split::Already);
    }
    client.split(key, holding.version).map(|()| Split::Made).map_err(|error| error.to_string())
}

/// One range as a node lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub id: u64,
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub version: u64,
}

impl Listed {
    fn holds(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && self.end.as_ref().is_none_or(|end| key < end.as_slice())
    }
}

/// Every range every node that answers lists, with duplicates.
fn ranges(client: &Client) -> Vec<Listed> {
    let statuses = client.peers().iter().filter_map(|address| client.node_status(*address).ok()).collect::<Vec<_>>();
    statuses.into_iter().flat_map(|status| status.ranges).filter_map(listed).collect()
}

fn listed(range: RangeStatus) -> Option<Listed> {
    let descriptor = range.descriptor?;
    Some(Listed {
        id: descriptor.id,
        start: descriptor.start.to_vec(),
        end: descriptor.has_end.then(|| descriptor.end.to_vec()),
        version: descriptor.epoch.map_or(0, |epoch| epoch.version),
    })
}

/// The ranges the meta range records, as the nodes list theirs.
fn recorded(client: &Client) -> Option<Vec<Listed>> {
    let ranges = client.meta_ranges().ok()?;
    let listed = |range: &RangeDescriptor| Listed {
        id: range.id,
        start: range.start.to_vec(),
        end: range.end.as_ref().map(|end| end.to_vec()),
        version: range.epoch.version,
    };
    let mut recorded: Vec<Listed> = ranges.iter().map(listed).collect();
    recorded.sort();
    Some(recorded)
}

/// Waits until every node answers and lists the same ranges, and the meta
/// range records those; otherwise says what each listed at the deadline.
pub fn await_convergence(peers: &[SocketAddr]) -> Result<usize, String> {
    let client = Client::new(peers.to_vec(), 1);
    client.set_timeouts(SPLIT_ATTEMPT_TIMEOUT, SPLIT_TIMEOUT);
    let deadline = Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let per_node: Vec<Option<Vec<Listed>>> = peers
            .iter()
            .map(|address| {
                let status = client.node_status(*address).ok()?;
                let mut listed: Vec<Listed> = status.ranges.into_iter().filter_map(listed).collect();
                listed.sort();
                Some(listed)
            })
            .collect();
        let first = per_node.first().cloned().flatten();
        let agreed = first.filter(|first| per_node.iter().all(|node| node.as_ref() == Some(first)));
        let meta = recorded(&client);
        if agreed.is_some() && meta == agreed {
            return Ok(meta.map_or(0, |meta| meta.len()));
        }
        if Instant::now() >= deadline {
            let shown: Vec<String> = per_node
                .iter()
                .enumerate()
                .map(|(index, listed)| match listed {
                    Some(listed) => format!("node {}: {} ranges {:?}", index + 1, listed.len(), ids(listed)),
                    None => format!("node {}: no status", index + 1),
                })
                .collect();
            let meta =
                meta.map_or_else(|| "no answer".to_string(), |meta| format!("{} ranges {:?}", meta.len(), ids(&meta)));
            return Err(format!(
                "the nodes did not come to host the same ranges, recorded in the meta range, within {CONVERGENCE_TIMEOUT:?}: {}; meta range: {meta}",
                shown.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ids(listed: &[Listed]) -> Vec<(u64, u64)> {
    listed.iter().map(|range| (range.id, range.version)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_range_holds_the_keys_from_its_start_to_before_its_end() {
        let range = Listed { id: 2, start: b"register-3".to_vec(), end: Some(b"register-7".to_vec()), version: 1 };
        assert!(range.holds(b"register-3") && range.holds(b"register-41"));
        assert!(!range.holds(b"register-2") && !range.holds(b"register-7"));
        let last = Listed { end: None, ..range };
        assert!(last.holds(b"register-9") && last.holds(b"zzz"));
        assert_eq!(key_name(12), b"register-12");
    }
}
