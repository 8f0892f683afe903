//! Log-bucketed histograms, in the manner of loghisto: every value lands in
//! a bucket whose bounds grow by a constant factor, so a quantile read from
//! the buckets is within a fixed *relative* error of the true one
//! (`RELATIVE_ERROR`, 1%), whatever the values' scale: 1 µs and 10 s are
//! measured equally well. Memory is constant (`BUCKET_COUNT` counters, about
//! 17 KiB), recording is a logarithm and an add, and two histograms merge by
//! adding their counters, so per-thread or per-window histograms combine
//! exactly.
//!
//! Bucket `i` holds the values in (γ^(i-1), γ^i], with γ = (1 + ε) / (1 - ε),
//! and stands for 2γ^i / (γ + 1): every value of the bucket is within ε of
//! it. Zero has a bucket of its own.

/// The bound on `|reported - true| / true` for every quantile.
pub const RELATIVE_ERROR: f64 = 0.01;
/// γ, the ratio of a bucket's upper bound to its lower one.
const GAMMA: f64 = (1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR);
/// Buckets for values 1..=u64::MAX: ceil(ln(2^64) / ln γ) + 1.
pub const BUCKET_COUNT: usize = 2_220;

/// Counts of u64 values (nanoseconds, bytes, ...), in log-sized buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    zeros: u64,
    buckets: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

/// The bucket of a value of at least 1.
fn bucket_of(value: u64) -> usize {
    let index = ((value as f64).ln() / GAMMA.ln()).ceil() as usize;
    index.min(BUCKET_COUNT - 1)
}

/// The value a bucket stands for: within RELATIVE_ERROR of each of its values.
fn representative(bucket: usize) -> f64 {
    2.0 * GAMMA.powi(bucket as i32) / (GAMMA + 1.0)
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { zeros: 0, buckets: vec![0; BUCKET_COUNT].into(), count: 0, sum: 0, min: u64::MAX, max: 0 }
    }

    pub fn record(&mut self, value: u64) {
        self.record_many(value, 1);
    }

    /// Records `value` `times` times.
    pub fn record_many(&mut self, value: u64, times: u64) {
        if times == 0 {
            return;
        }
        if value == 0 {
            self.zeros += times;
        } else {
            self.buckets[bucket_of(value)] += times;
        }
        self.count += times;
        self.sum += u128::from(value) * u128::from(times);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value `other` recorded.
    pub fn merge(&mut self, other: &Histogram) {
        self.zeros += other.zeros;
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The exact sum of the values recorded.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// The smallest and largest values recorded, exactly; None if none was.
    pub fn min_max(&self) -> Option<(u64, u64)> {
        (self.count > 0).then_some((self.min, self.max))
    }

    /// The `q`-quantile (0 ≤ q ≤ 1): within RELATIVE_ERROR of the value of
    /// rank ceil(q · count) among those recorded (rank 1 is the smallest),
    /// and never outside [min, max]. None if nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        assert!((0.0..=1.0).contains(&q), "a quantile is between 0 and 1, not {q}");
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank <= self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        let (min, max) = (self.min as f64, self.max as f64);
        for (bucket, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(representative(bucket).clamp(min, max));
            }
        }
        unreachable!("the buckets hold all {} values, and rank {rank} is among them", self.count)
    }

    /// How many values were at most `bound`, as far as the buckets tell:
    /// exact for bounds that are bucket bounds, and otherwise counting a
    /// bucket that straddles `bound` as below it. For Prometheus's
    /// cumulative buckets.
    pub fn count_at_most(&self, bound: u64) -> u64 {
        if bound == 0 {
            return self.zeros;
        }
        let last = bucket_of(bound);
        self.zeros + self.buckets[..=last].iter().sum::<u64>()
    }

    /// Forgets every value.
    pub fn clear(&mut self) {
        *self = Histogram::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Floating-point rounding at a bucket's edge may put a value one
    /// bucket over; this is the slack the bound gets for it.
    const ROUNDING: f64 = 1e-9;

    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn check_against_exact(values: &mut [u64], seed: u64) {
        let mut histogram = Histogram::new();
        for &value in values.iter() {
            histogram.record(value);
        }
        values.sort_unstable();
        for q in [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            let exact = exact_quantile(values, q) as f64;
            let reported = histogram.quantile(q).unwrap();
            let error = if exact == 0.0 { reported } else { (reported - exact).abs() / exact };
            assert!(
                error <= RELATIVE_ERROR + ROUNDING,
                "seed {seed}, q {q}: reported {reported}, exact {exact}, relative error {error}"
            );
        }
        assert_eq!(histogram.count(), values.len() as u64);
        assert_eq!(histogram.sum(), values.iter().map(|&value| u128::from(value)).sum::<u128>());
        assert_eq!(histogram.min_max(), Some((values[0], values[values.len() - 1])));
    }

    /// The error bound, against exact quantiles of random data spread over
    /// many orders of magnitude, of uniform data and of a few repeated values.
    #[test]
    fn every_quantile_is_within_the_relative_error_of_the_exact_one() {
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let count = rng.gen_range(1..20_000);
            let mut log_spread: Vec<u64> = (0..count).map(|_| 2f64.powf(rng.gen_range(0.0..63.9)) as u64).collect();
            check_against_exact(&mut log_spread, seed);
            let mut uniform: Vec<u64> = (0..count).map(|_| rng.gen_range(0..1_000_000)).collect();
            check_against_exact(&mut uniform, seed);
            let mut repeated: Vec<u64> = (0..count).map(|_| [0, 1, 7, 1_000, u64::MAX][rng.gen_range(0..5)]).collect();
            check_against_exact(&mut repeated, seed);
        }
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut left, mut right, mut both) = (Histogram::new(), Histogram::new(), Histogram::new());
        for _ in 0..10_000 {
            let value = rng.gen_range(0..10_000_000_000u64);
            if rng.gen_bool(0.3) { &mut left } else { &mut right }.record(value);
            both.record(value);
        }
        left.merge(&right);
        assert_eq!(left, both);
    }

    #[test]
    fn an_empty_histogram_has_no_quantiles_and_cumulative_counts_rise() {
        let mut histogram = Histogram::new();
        assert_eq!(histogram.quantile(0.5), None);
        assert_eq!(histogram.min_max(), None);
        for value in [0, 5, 50, 500, 5_000] {
            histogram.record(value);
        }
        assert_eq!(histogram.count_at_most(0), 1);
        assert_eq!(histogram.count_at_most(50), 3);
        assert_eq!(histogram.count_at_most(u64::MAX), 5);
        histogram.clear();
        assert_eq!(histogram.count(), 0);
    }

    #[test]
    fn the_largest_value_has_a_bucket() {
        assert!(bucket_of(u64::MAX) < BUCKET_COUNT);
        assert!((((u64::MAX as f64).ln() / GAMMA.ln()).ceil() as usize) < BUCKET_COUNT);
    }
}
