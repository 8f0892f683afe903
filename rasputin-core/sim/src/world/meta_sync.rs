//! The meta range in the simulator (docs/ranges.md, "The meta range"). A
//! data range decides a split in its own log; its leader then sends the
//! split's descriptors to the meta range, again after any change of leader,
//! until the meta range answers that it holds them or newer. Clients look
//! routes up in the meta range. The checks: the meta range never records a
//! descriptor its data range never had, never goes back, always tiles the
//! key space, and once healed records exactly the data ranges' descriptors.

use bytes::Bytes;
use rand::Rng;
use rasputin_consensus::{Role, Term};
use rasputin_kv::meta::{MetaError, MetaRecords};
use rasputin_kv::operation::{ClientRequest, Input, Node, Operation};
use rasputin_kv::range::{RangeDescriptor, RangeId, META_RANGE_ID};
use rasputin_kv::state_machine::{Applied, Refusal};
use std::collections::{BTreeMap, HashSet};

use super::{Accepted, Breach, Event, Reply, World};

/// How often each data leader checks that the meta range holds its last split.
pub(super) const META_SYNC_INTERVAL_NS: u64 = 100_000_000;
/// Descriptors a client asks for in one lookup: its key's range and a few
/// after it, for the next keys of a scan.
const LOOKUP_DESCRIPTORS_COUNT: u32 = 8;
/// Meta updates a meta replica tracks the senders of; beyond this it drops
/// new ones, which their senders send again a round later.
const META_ASKERS_COUNT_MAX: usize = 1024;

/// Who sent a meta update, so that the meta range can tell them it landed.
#[derive(Clone, Debug)]
pub(super) struct MetaAsker {
    node: usize,
    range: RangeId,
    term: Term,
    version: u64,
}

impl World<'_> {
    /// Every data leader sends its last split, unless the meta range has
    /// told it, in this term, that it holds it.
    pub(super) fn on_meta_sync(&mut self) -> Result<(), Breach> {
        self.schedule(META_SYNC_INTERVAL_NS, Event::MetaSync);
        for index in 0..self.servers.len() {
            let ranges: Vec<RangeId> = self.servers[index].replicas.keys().copied().collect();
            for range in ranges {
                self.send_meta_update(index, range);
            }
        }
        Ok(())
    }

    /// Sends the replica's last split to the meta leader its node knows
    /// of, if the replica leads its data range and has no word yet that
    /// the meta range holds that split.
    pub(super) fn send_meta_update(&mut self, index: usize, range: RangeId) {
        let server = &self.servers[index];
        if !server.running || server.paused {
            return;
        }
        let replica = &server.replicas[&range];
        let Some(node) = replica.node.as_ref().filter(|node| node.role() == Role::Leader) else { return };
        let Some(outcome) = replica.kv.split_outcome() else { return };
        let (term, version) = (node.term(), outcome[0].epoch.version);
        if replica.meta_confirmed == Some((term, version)) {
            return;
        }
        let meta_leader = server.replicas[&META_RANGE_ID].node.as_ref().and_then(Node::leader_id);
        let Some(to) = meta_leader.map(|id| id as usize - 1) else { return };
        let descriptors = outcome.to_vec();
        self.send_between(index, to, Event::MetaRequest { node: to, from: index, range, term, descriptors });
    }

    /// Schedules `event` at node `to` as a message from node `from`: lost,
    /// delayed or duplicated as the network decides; at once on one node.
    fn send_between(&mut self, from: usize, to: usize, event: Event) {
        if from == to {
            return self.schedule(0, event);
        }
        let copies = if self.network.duplicate(&mut self.rng) { 2 } else { 1 };
        for _ in 0..copies {
            if let Some(delay) = self.network.delay(&mut self.rng, from, to) {
                self.schedule(delay, event.clone());
            }
        }
    }

    /// A data leader's meta update arrives: proposed to the meta range here.
    pub(super) fn on_meta_request(
        &mut self,
        index: usize,
        from: usize,
        range: RangeId,
        term: Term,
        descriptors: Vec<RangeDescriptor>,
    ) -> Result<(), Breach> {
        let sequence = self.rng.gen_range(1..u64::MAX);
        let version = descriptors[0].epoch.version;
        let replica = self.servers[index].replica(META_RANGE_ID);
        if replica.meta_askers.len() >= META_ASKERS_COUNT_MAX {
            return Ok(());
        }
        replica.meta_askers.insert(sequence, MetaAsker { node: from, range, term, version });
        let request = ClientRequest { client_id: 0, sequence, operation: Operation::MetaUpdate { descriptors } };
        self.step(index, META_RANGE_ID, Input::Client(request))
    }

    /// The meta update was refused before it entered the log (not leader,
    /// overloaded): its sender sends it again next round.
    pub(super) fn forget_meta_asker(&mut self, index: usize, range: RangeId, request: &ClientRequest) {
        if range == META_RANGE_ID && request.client_id == 0 {
            self.servers[index].replica(range).meta_askers.remove(&request.sequence);
        }
    }

    /// An entry applied on a meta replica: checks the records, and tells a
    /// sender whose update is recorded (or stale: newer records are).
    pub(super) fn on_meta_applied(
        &mut self,
        index: usize,
        before: &MetaRecords,
        applied: Option<Applied>,
    ) -> Result<(), Breach> {
        let replica = self.servers[index].replica(META_RANGE_ID);
        let after = replica.kv.meta_records().expect("the meta range's store holds records");
        check_meta_follows(before, after, &self.decided).map_err(|breach| format!("node {}: {breach}", index + 1))?;
        let Some(applied) = applied.filter(|applied| applied.client_id == 0) else { return Ok(()) };
        let Some(asker) = replica.meta_askers.remove(&applied.sequence) else { return Ok(()) };
        self.report.meta_updates += usize::from(applied.outcome.is_ok());
        if matches!(applied.outcome, Ok(_) | Err(Refusal::Meta(MetaError::Stale { .. }))) {
            let MetaAsker { node, range, term, version } = asker;
            self.send_between(index, node, Event::MetaConfirmed { node, range, term, version });
        }
        Ok(())
    }

    /// The meta range holds what this leader sent; it sends no more this term.
    pub(super) fn on_meta_confirmed(&mut self, index: usize, range: RangeId, term: Term, version: u64) {
        let Some(replica) = self.servers[index].replicas.get_mut(&range) else { return };
        if replica.node.as_ref().is_some_and(|node| node.term() == term && node.role() == Role::Leader) {
            replica.meta_confirmed = Some((term, version));
        }
    }

    /// Whether this leader knows that the meta range holds its range's last
    /// split. A leader splits again only then, so that the meta range lags
    /// a range by one split at most, and each update covers whole records.
    pub(super) fn meta_holds_last_split(&self, index: usize, range: RangeId) -> bool {
        let replica = &self.servers[index].replicas[&range];
        let Some(outcome) = replica.kv.split_outcome() else { return true };
        replica.meta_confirmed == Some((replica.node().term(), outcome[0].epoch.version))
    }

    /// A client with no route for its key asks the meta range at its
    /// lookup node; with no meta range, the node says what it holds.
    pub(super) fn look_up(
        &mut self,
        index: usize,
        client: usize,
        request: ClientRequest,
        attempt: u64,
    ) -> Result<(), Breach> {
        let key = Bytes::copy_from_slice(request.operation.key());
        if !self.config.splits {
            let known = self.servers[index].descriptors_for(None, &key);
            self.reply(client, request.sequence, attempt, Reply::RangeMismatch(known));
            return Ok(());
        }
        let operation = Operation::MetaLookup { key: key.clone(), limit: LOOKUP_DESCRIPTORS_COUNT };
        let lookup = ClientRequest { operation, ..request };
        let accepted = Accepted { client, attempt, key };
        self.servers[index].replica(META_RANGE_ID).pending.insert((lookup.client_id, lookup.sequence), accepted);
        self.step(index, META_RANGE_ID, Input::Client(lookup))
    }

    /// Once healed, the meta leader records every data range's newest
    /// descriptor, and nothing else.
    pub(super) fn check_meta_caught_up(&self) -> Result<(), Breach> {
        if !self.config.splits {
            return Ok(());
        }
        let mut newest: BTreeMap<RangeId, &RangeDescriptor> = BTreeMap::new();
        for replica in self.servers.iter().flat_map(|server| server.replicas.values()) {
            let descriptor = replica.kv.descriptor();
            if descriptor.is_meta() || replica.is_empty() {
                continue;
            }
            let known = newest.entry(descriptor.id).or_insert(descriptor);
            if descriptor.epoch.version > known.epoch.version {
                *known = descriptor;
            }
        }
        let mut expected: Vec<&RangeDescriptor> = newest.into_values().collect();
        expected.sort_by(|first, second| first.start.cmp(&second.start));
        let leader = self
            .servers
            .iter()
            .filter(|server| server.running)
            .filter_map(|server| server.replicas[&META_RANGE_ID].node.as_ref().map(|node| (node, server)))
            .filter(|(node, _)| node.role() == Role::Leader)
            .max_by_key(|(node, _)| node.term());
        let Some((_, server)) = leader else { return Err("once healed, the meta range has no leader".to_string()) };
        let records = server.replicas[&META_RANGE_ID].kv.meta_records().expect("the meta range's store holds records");
        let recorded: Vec<&RangeDescriptor> = records.records().collect();
        if recorded != expected {
            return Err(format!(
                "once healed, the meta range records [{}] but the data ranges are [{}]",
                list(recorded.iter().copied()),
                list(expected.iter().copied())
            ));
        }
        Ok(())
    }
}

/// The meta range follows its data ranges: each record is a descriptor its
/// range has had, and none replaces a newer one. (That they tile the key
/// space `MetaRecords::replace` asserts, and the simulator reports a panic
/// as a violation.)
fn check_meta_follows(
    before: &MetaRecords,
    after: &MetaRecords,
    decided: &HashSet<RangeDescriptor>,
) -> Result<(), Breach> {
    if let Some(record) = after.records().find(|record| !decided.contains(*record)) {
        return Err(format!(
            "the meta range records {record}, which range {} never had: the meta range is ahead of its data",
            record.id
        ));
    }
    for record in after.records() {
        let newer = before.records().find(|old| old.overlaps(record) && old.epoch.version > record.epoch.version);
        if let Some(old) = newer {
            return Err(format!("the meta range went back: {record} replaced the newer {old}"));
        }
    }
    Ok(())
}

fn list<'a>(descriptors: impl IntoIterator<Item = &'a RangeDescriptor>) -> String {
    descriptors.into_iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::World;
    use crate::workload::key_bytes;
    use crate::{SimConfig, SECOND_NS};
    use rasputin_consensus::ElectionMode;
    use rasputin_kv::range::{FIRST_RANGE_ID, META_RANGE_ID};

    fn recorded(world: &World, index: usize) -> usize {
        let records = world.servers[index].replicas[&META_RANGE_ID].kv.meta_records();
        records.expect("the meta range's store holds records").records().count()
    }

    /// The split range's leader crashes the moment its split applies,
    /// before a meta round could send it: its successor sends it, and the
    /// meta range catches up, and stays so once the crashed node is back.
    #[test]
    fn a_split_whose_leader_crashes_before_recording_it_still_reaches_the_meta_range() {
        let mut config = SimConfig::new(3, ElectionMode::Harpoon, Vec::new());
        config.splits = true;
        config.keys = 8;
        let mut world = World::new(&config, 7);
        world.start_nodes();
        world.start_clients();
        world.run_until(3 * SECOND_NS).expect("a healthy cluster breaks nothing");
        let leader = world.leader().expect("range 1 has a leader after 3 s");
        let descriptor = world.servers[leader].replicas[&FIRST_RANGE_ID].kv.descriptor().clone();
        world.propose_split(leader, &descriptor, key_bytes(4)).expect("a split breaks nothing");
        let deadline_ns = world.now_ns() + SECOND_NS;
        while world.servers[leader].replicas[&FIRST_RANGE_ID].kv.split_outcome().is_none() {
            assert!(world.now_ns() < deadline_ns, "the split did not apply on its leader within 1 s");
            let next_ns = world.now_ns() + 10_000;
            world.run_until(next_ns).expect("a split breaks nothing");
        }
        assert!((0..3).all(|index| recorded(&world, index) == 1), "no meta replica records the split yet");
        world.crash(leader);
        let healed_ns = world.now_ns() + 5 * SECOND_NS;
        world.run_until(healed_ns).expect("a crash after a split breaks nothing");
        world.check_meta_caught_up().expect("the successor records the split");
        assert!(world.report.meta_updates >= 1, "a meta update was recorded");
        world.start_node(leader);
        world.run_until(healed_ns + 3 * SECOND_NS).expect("a restart after a split breaks nothing");
        world.check_meta_caught_up().expect("the meta range still follows the data ranges");
        assert_eq!(recorded(&world, leader), 2, "the restarted node's meta replica records both ranges");
    }
}
