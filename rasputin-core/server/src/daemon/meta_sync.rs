//! The meta range in the daemon (docs/ranges.md, "The meta range"), as the
//! simulator runs it (`sim/src/world/meta_sync.rs`). A data range decides a
//! split in its own log; its leader then sends the split's descriptors to
//! the meta range's leader (`MetaRecord`), again every `META_SYNC_INTERVAL`
//! and after any change of leader, until the meta range answers that it
//! holds them or newer (`MetaRecorded`). The meta leader proposes each as a
//! `MetaUpdate`, which applies only if it is newer than the records it
//! replaces. A range splits again only once the meta range holds its last
//! split, so that each update covers whole records.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use rasputin_consensus::{NodeId, Rejection, Role, Term};
use rasputin_kv::meta::{MetaError, DESCRIPTORS_PER_LOOKUP_MAX};
use rasputin_kv::operation::{ClientRequest, Operation};
use rasputin_kv::range::{RangeDescriptor, RangeId, META_RANGE_ID};
use rasputin_kv::state_machine::{Applied, Refusal};
use rasputin_kv::wire::{self, proto, ErrorCode};

use super::Daemon;

/// How often each data leader checks that the meta range holds its last split.
pub(super) const META_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Meta updates whose senders the meta leader keeps, to tell them once the
/// update applies; beyond this it drops new ones, which their senders send
/// again a round later.
pub(super) const META_ASKERS_COUNT_MAX: usize = 1024;

/// Who sent a meta update, so that the meta leader can tell them it landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MetaAsker {
    node: NodeId,
    range: RangeId,
    term: Term,
    version: u64,
}

impl Daemon {
    /// Every `META_SYNC_INTERVAL`, or at once after a split applied here:
    /// each range this node leads sends its last split to the meta leader,
    /// unless the meta range has told it, in this term, that it holds it.
    pub(super) fn sync_meta(&mut self) {
        if self.join.is_some() || self.meta_synced_at.is_some_and(|at| at.elapsed() < META_SYNC_INTERVAL) {
            return;
        }
        self.meta_synced_at = Some(Instant::now());
        let meta_leader = self.replicas.get(&META_RANGE_ID).and_then(|meta| meta.node.leader_id());
        let Some(meta_leader) = meta_leader else { return };
        let own = self.membership.node_id;
        let unrecorded: Vec<(RangeId, Term, Vec<RangeDescriptor>)> = self
            .replicas
            .iter()
            .filter(|(_, replica)| replica.node.role() == Role::Leader)
            .filter_map(|(&range, replica)| {
                let outcome = self.storage.range(range)?.split_outcome()?;
                let term = replica.node.term();
                let recorded = replica.meta_recorded == Some((term, outcome[0].epoch.version));
                (!recorded).then(|| (range, term, outcome.to_vec()))
            })
            .collect();
        for (range, term, descriptors) in unrecorded {
            if meta_leader == own {
                self.on_meta_record(own, range, term, descriptors);
            } else {
                let message = wire::meta_record_to_proto(own, meta_leader, range, term, &descriptors);
                self.send_own_message(meta_leader, &message);
            }
        }
    }

    /// A data leader's last split: proposed to the meta range, if this node
    /// leads it and is not tracking the same update already. Otherwise
    /// dropped: the sender sends it again to the leader it learns of.
    pub(super) fn on_meta_record(
        &mut self,
        from: NodeId,
        range: RangeId,
        term: Term,
        descriptors: Vec<RangeDescriptor>,
    ) {
        let version = descriptors.first().map_or(0, |descriptor| descriptor.epoch.version);
        let asker = MetaAsker { node: from, range, term, version };
        let Some(meta) = self.replicas.get_mut(&META_RANGE_ID) else { return };
        let tracked = self.meta_askers.values().any(|pending| *pending == asker);
        if meta.node.role() != Role::Leader || tracked || self.meta_askers.len() >= META_ASKERS_COUNT_MAX {
            return;
        }
        // Non-zero and unlike a client's nonce: the meta range's clients send reads only.
        self.meta_sequence = self.meta_sequence.wrapping_add(1).max(1);
        let sequence = self.meta_sequence;
        debug!(peer = from, range, term, version, sequence, "proposing a data range's split to the meta range");
        self.meta_askers.insert(sequence, asker);
        meta.proposals.push(ClientRequest { client_id: 0, sequence, operation: Operation::MetaUpdate { descriptors } });
        self.proposing.insert(META_RANGE_ID);
    }

    /// A meta update applied here. If this node proposed it, its sender
    /// learns that the meta range holds its split: recorded now, or
    /// recorded before (stale). An update that came too early (its range's
    /// parent's split has not landed) is sent again next round.
    pub(super) fn on_meta_applied(&mut self, applied: &Applied) {
        if applied.client_id != 0 {
            return;
        }
        let Some(asker) = self.meta_askers.remove(&applied.sequence) else { return };
        let recorded = match &applied.outcome {
            Ok(_) => {
                info!(range = asker.range, version = asker.version, "the meta range recorded a split");
                self.observer.metrics.meta_updates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(Refusal::Meta(MetaError::Stale { .. })) => true,
            Err(refusal) => {
                debug!(range = asker.range, %refusal, "the meta range did not record a split yet");
                false
            }
        };
        if !recorded {
            return;
        }
        let MetaAsker { node, range, term, version } = asker;
        let own = self.membership.node_id;
        if node == own {
            self.on_meta_recorded(range, term, version);
        } else {
            self.send_own_message(node, &wire::meta_recorded_to_proto(own, node, range, term, version));
        }
    }

    /// A meta update refused before it entered the log, or lost with the
    /// meta leadership: its sender sends it again next round.
    pub(super) fn forget_meta_asker(&mut self, request: &ClientRequest, rejection: &Rejection) {
        if request.client_id == 0 && self.meta_askers.remove(&request.sequence).is_some() {
            debug!(?rejection, "a meta update was not proposed; its sender sends it again");
        }
    }

    /// The meta range holds this leader's split of `version`; it sends no
    /// more in `term`.
    pub(super) fn on_meta_recorded(&mut self, range: RangeId, term: Term, version: u64) {
        let Some(replica) = self.replicas.get_mut(&range) else { return };
        if replica.node.role() == Role::Leader && replica.node.term() == term {
            replica.meta_recorded = Some((term, version));
        }
    }

    /// Why this node, leading `range`, must not propose a split asked at
    /// `version` now: a version other than the range's (its descriptor was
    /// read before a split applied here), or a last split the meta range
    /// has not recorded. None for a follower: consensus answers NOT_LEADER.
    pub(super) fn split_refusal(&self, range: RangeId, version: u64) -> Option<(ErrorCode, String)> {
        let replica = &self.replicas[&range];
        if replica.node.role() != Role::Leader {
            return None;
        }
        let descriptor = &replica.descriptor;
        if version != descriptor.epoch.version {
            let message = format!(
                "the split asks for version {version} of range {descriptor}; read its descriptor again and decide anew"
            );
            return Some((ErrorCode::BadRequest, message));
        }
        let outcome = self.storage.range(range).and_then(|storage| storage.split_outcome())?;
        let last = (replica.node.term(), outcome[0].epoch.version);
        if replica.meta_recorded == Some(last) {
            return None;
        }
        let message = format!("the meta range has not recorded range {}'s last split yet; retry shortly", range);
        Some((ErrorCode::Overloaded, message))
    }

    /// Answers a meta lookup whose read the meta range confirmed: the
    /// descriptors from the one holding `key` on, at most `limit` (0: as many
    /// as one lookup gives).
    pub(super) fn answer_lookup(&mut self, read: (u64, u64), key: &[u8], limit: u32) {
        let records = self.storage.range(META_RANGE_ID).and_then(|storage| storage.meta_records());
        let limit = if limit == 0 { DESCRIPTORS_PER_LOOKUP_MAX } else { limit as usize };
        let descriptors = records.map(|records| records.lookup(key, limit)).unwrap_or_default();
        for waiter in self.take_waiters(META_RANGE_ID, read) {
            self.observer.metrics.request_answered(waiter.operation, ErrorCode::Ok, waiter.arrived.elapsed());
            self.observer.count_request(META_RANGE_ID);
            let response = proto::ClientResponse {
                request_id: waiter.request_id,
                error: ErrorCode::Ok as i32,
                success: true,
                found: !descriptors.is_empty(),
                descriptors: descriptors.iter().map(RangeDescriptor::to_proto).collect(),
                ..Default::default()
            };
            self.queue_to_client(waiter.token, &response);
        }
    }

    /// Where a client's meta request goes: a lookup to this node's meta
    /// replica; an update never: only data leaders send them, over the
    /// peer port, where every sender is a node of the cluster.
    pub(super) fn meta_request_refusal(&self, operation: &Operation) -> Option<(ErrorCode, String)> {
        match operation {
            Operation::MetaUpdate { .. } => Some((
                ErrorCode::BadRequest,
                "meta updates come from the data ranges' leaders over the peer port, not from clients".to_string(),
            )),
            Operation::MetaLookup { .. } if !self.replicas.contains_key(&META_RANGE_ID) => Some((
                ErrorCode::UnknownRange,
                "this node hosts no meta range (a replacement hosts none yet); ask another node".to_string(),
            )),
            _ => None,
        }
    }
}
