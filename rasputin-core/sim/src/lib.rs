//! The deterministic cluster simulator. A whole cluster, its clients, its
//! network, disks and clocks run on one thread, driven by one seeded RNG;
//! events are ordered by (true time, sequence), so a seed replays exactly.
//! It never reads the wall clock and never sleeps.

mod clock;
mod disk;
pub mod experiment;
mod invariants;
pub mod nemesis;
mod network;
mod workload;
mod world;

#[cfg(test)]
mod tests;

pub use nemesis::NemesisKind;
pub use network::{Hold, NetworkConfig};
pub use world::{run_seed, SeedReport};

use rasputin_consensus::{ElectionMode, Faults};
use rasputin_kv::range::RangeDescriptor;
use rasputin_kv::snapshot::SnapshotDecodeError;
use rasputin_kv::state_machine::{KvStore, SessionLimits, StoreFaults};

/// Simulated nanoseconds per second, for readable settings.
pub const SECOND_NS: u64 = 1_000_000_000;
/// Events one seed may process before the run counts as stuck.
pub const EVENTS_PER_SEED_MAX: u64 = 20_000_000;
/// Ranges the split nemesis may make in one run, the first included.
pub const RANGES_MAX: usize = 64;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub mode: ElectionMode,
    pub nemeses: Vec<NemesisKind>,
    pub clients: usize,
    pub keys: u64,
    /// Faults are injected from 1 s until this true time; then everything heals.
    pub fault_phase_ns: u64,
    /// After healing, a new write must commit within this long.
    pub recovery_bound_ns: u64,
    /// How long the run goes on after healing.
    pub recovery_phase_ns: u64,
    /// Each clock's rate lies in [1 − ε, 1 + ε].
    pub clock_epsilon: f64,
    pub network: NetworkConfig,
    pub sync_ns: u64,
    /// A paused node's clock stands still, as CLOCK_MONOTONIC does through
    /// a host's suspend, instead of running on as CLOCK_BOOTTIME does.
    pub pause_freezes_clock: bool,
    pub client_think_ns: u64,
    pub attempt_timeout_ns: u64,
    pub operation_timeout_ns: u64,
    /// A node snapshots its state machine after this many applied entries.
    pub snapshot_every_entries: u64,
    /// When client sessions expire; every node of a run uses the same.
    pub session_limits: SessionLimits,
    /// Deliberate consensus bugs, for tests that show the checks catch them.
    pub faults: Faults,
    /// Deliberate state-machine bugs, likewise.
    pub store_faults: StoreFaults,
    /// Harpoon's campaign preference (`Config::campaign_defers_to_better_logs`).
    pub campaign_defers_to_better_logs: bool,
    /// The split nemesis: now and then a range's leader is asked to split
    /// it at a random key, during every other fault. Runs with it have a
    /// meta range, which clients look routes up in.
    pub splits: bool,
    /// The leader balancer: every second, leadership transfers bring each
    /// node within one range of the others' leader counts.
    pub balance_leaders: bool,
    pub record_trace: bool,
    /// Keep the client history as JSON lines in the report.
    pub record_history: bool,
}

impl SimConfig {
    /// The settings `rasputin-sim` uses: harpoon's production timing, lossy
    /// links, clocks within the drift bound.
    pub fn new(nodes: usize, mode: ElectionMode, nemeses: Vec<NemesisKind>) -> SimConfig {
        let consensus = rasputin_consensus::Config::new(1, vec![1]);
        // Two clocks at opposite ends of [1 − ε, 1 + ε] differ in rate by about 2ε.
        let clock_epsilon = consensus.drift_bound * 0.45;
        SimConfig {
            nodes,
            mode,
            nemeses,
            clients: 5,
            keys: 3,
            fault_phase_ns: 12 * SECOND_NS,
            recovery_bound_ns: 10 * consensus.election_timeout_ns,
            recovery_phase_ns: 12 * consensus.election_timeout_ns,
            clock_epsilon,
            network: NetworkConfig { loss_probability: 0.01, duplicate_probability: 0.01, ..NetworkConfig::default() },
            sync_ns: 1_000_000,
            pause_freezes_clock: false,
            client_think_ns: 20_000_000,
            attempt_timeout_ns: 1_500_000_000,
            operation_timeout_ns: 5 * SECOND_NS,
            snapshot_every_entries: 200,
            session_limits: SessionLimits::PRODUCTION,
            faults: Faults::default(),
            store_faults: StoreFaults::default(),
            campaign_defers_to_better_logs: true,
            splits: false,
            balance_leaders: false,
            record_trace: false,
            record_history: false,
        }
    }

    /// The range a run starts with: every key, on every node.
    pub fn first_range(&self) -> RangeDescriptor {
        RangeDescriptor::first((1..=self.nodes as u64).collect())
    }

    /// The meta range of a run with ranges: on every node.
    pub fn meta_range(&self) -> RangeDescriptor {
        RangeDescriptor::meta((1..=self.nodes as u64).collect())
    }

    /// An empty store of `range`, with this run's planted state-machine
    /// bugs; the meta range's starts out recording the first range.
    pub fn store(&self, range: RangeDescriptor) -> KvStore {
        let store = match range.is_meta() {
            true => KvStore::meta(self.session_limits, range, self.first_range()),
            false => KvStore::empty(self.session_limits, range),
        };
        store.with_faults(self.store_faults)
    }

    /// A store restored from a snapshot, with this run's planted bugs.
    pub fn restored_store(&self, data: &[u8]) -> Result<KvStore, SnapshotDecodeError> {
        KvStore::restore(data, self.session_limits).map(|store| store.with_faults(self.store_faults))
    }

    pub fn consensus_config(&self, id: u64) -> rasputin_consensus::Config {
        let members = (1..=self.nodes as u64).collect();
        let mut config = rasputin_consensus::Config::new(id, members);
        config.mode = self.mode;
        config.faults = self.faults;
        config.campaign_defers_to_better_logs = self.campaign_defers_to_better_logs;
        config
    }
}
