//! The simulated network between nodes: latency, loss, duplication,
//! reordering (through random latency), cuts and clogged links.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub latency_min_ns: u64,
    /// Mean of the exponential part of the latency.
    pub latency_mean_extra_ns: u64,
    pub loss_probability: f64,
    pub duplicate_probability: f64,
    /// Messages of chosen kinds held back far longer than any latency, to
    /// open the narrow windows that random latency rarely does.
    pub holds: Vec<Hold>,
}

/// Holds each message of `kind` (see `Message::kind`) from node index
/// `from` to node index `to` (None: any) back by `extra_ns`, with
/// probability `probability`.
#[derive(Clone, Debug)]
pub struct Hold {
    pub kind: &'static str,
    pub from: Option<usize>,
    pub to: Option<usize>,
    pub probability: f64,
    pub extra_ns: u64,
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            latency_min_ns: 200_000,
            latency_mean_extra_ns: 800_000,
            loss_probability: 0.0,
            duplicate_probability: 0.0,
            holds: Vec::new(),
        }
    }
}

/// Link state between nodes, by index. `cut[a][b]` drops a → b only.
#[derive(Clone, Debug)]
pub struct Network {
    pub config: NetworkConfig,
    cut: Vec<Vec<bool>>,
    clog_ns: Vec<Vec<u64>>,
}

impl Network {
    pub fn new(nodes: usize, config: NetworkConfig) -> Network {
        Network { config, cut: vec![vec![false; nodes]; nodes], clog_ns: vec![vec![0; nodes]; nodes] }
    }

    pub fn heal(&mut self) {
        for row in &mut self.cut {
            row.fill(false);
        }
        for row in &mut self.clog_ns {
            row.fill(0);
        }
    }

    pub fn cut_one_way(&mut self, from: usize, to: usize) {
        self.cut[from][to] = true;
    }

    pub fn cut_both_ways(&mut self, a: usize, b: usize) {
        self.cut[a][b] = true;
        self.cut[b][a] = true;
    }

    pub fn clog_both_ways(&mut self, a: usize, b: usize, extra_ns: u64) {
        self.clog_ns[a][b] = extra_ns;
        self.clog_ns[b][a] = extra_ns;
    }

    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut[from][to]
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        !self.cut[a][b] && !self.cut[b][a]
    }

    /// A delivery delay for one copy of a message, or None if it is lost.
    pub fn delay(&self, rng: &mut ChaCha8Rng, from: usize, to: usize) -> Option<u64> {
        if self.cut[from][to] || rng.gen_bool(self.config.loss_probability) {
            return None;
        }
        Some(self.config.latency_min_ns + exponential(rng, self.config.latency_mean_extra_ns) + self.clog_ns[from][to])
    }

    /// How long to hold back a message of `kind` from `from` to `to`, beyond its latency.
    pub fn hold(&self, rng: &mut ChaCha8Rng, from: usize, to: usize, kind: &str) -> u64 {
        if self.cut[from][to] {
            return 0;
        }
        self.config
            .holds
            .iter()
            .filter(|hold| hold.kind == kind && hold.from.is_none_or(|node| node == from))
            .filter(|hold| hold.to.is_none_or(|node| node == to))
            .map(|hold| if rng.gen_bool(hold.probability) { hold.extra_ns } else { 0 })
            .sum()
    }

    /// Whether to deliver an extra copy of a message.
    pub fn duplicate(&self, rng: &mut ChaCha8Rng) -> bool {
        rng.gen_bool(self.config.duplicate_probability)
    }
}

/// An exponentially distributed delay with the given mean.
pub fn exponential(rng: &mut ChaCha8Rng, mean_ns: u64) -> u64 {
    let uniform: f64 = rng.gen_range(f64::EPSILON..1.0);
    (-uniform.ln() * mean_ns as f64) as u64
}
