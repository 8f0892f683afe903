//! Simulated node clocks: an offset and a rate against true time.

/// A node's monotonic clock, piecewise linear in true time so that its rate
/// can change mid-run without ever going backwards.
#[derive(Clone, Debug)]
pub struct Clock {
    base_true_ns: u64,
    base_local_ns: u64,
    rate: f64,
    /// Stands still, as CLOCK_MONOTONIC does while a host is suspended.
    frozen: bool,
}

impl Clock {
    pub fn new(offset_ns: u64, rate: f64) -> Clock {
        assert!(rate > 0.0, "clock rate {rate} must be positive");
        Clock { base_true_ns: 0, base_local_ns: offset_ns, rate, frozen: false }
    }

    pub fn local(&self, true_ns: u64) -> u64 {
        assert!(true_ns >= self.base_true_ns, "asked for local time at {true_ns}, before the last rate change");
        if self.frozen {
            return self.base_local_ns;
        }
        self.base_local_ns + ((true_ns - self.base_true_ns) as f64 * self.rate) as u64
    }

    /// Stops the clock at `true_ns` until `thaw`.
    pub fn freeze(&mut self, true_ns: u64) {
        self.base_local_ns = self.local(true_ns);
        self.base_true_ns = true_ns;
        self.frozen = true;
    }

    /// Starts a frozen clock again from where it stopped.
    pub fn thaw(&mut self, true_ns: u64) {
        assert!(self.frozen, "thawing a clock that runs");
        self.base_true_ns = true_ns;
        self.frozen = false;
    }

    /// The earliest true time at which this clock reads at least `local_ns`.
    pub fn true_at(&self, local_ns: u64, not_before_true_ns: u64) -> u64 {
        if local_ns <= self.local(not_before_true_ns) {
            return not_before_true_ns;
        }
        assert!(!self.frozen, "a frozen clock never reaches {local_ns}; its node's timers wait for the thaw");
        let elapsed_local = (local_ns - self.base_local_ns) as f64;
        let mut true_ns = self.base_true_ns + (elapsed_local / self.rate).ceil() as u64;
        // Float rounding may land a nanosecond short.
        while self.local(true_ns) < local_ns {
            true_ns += 1;
        }
        true_ns.max(not_before_true_ns)
    }

    /// Changes the rate from `true_ns` on, keeping the clock continuous.
    pub fn set_rate(&mut self, true_ns: u64, rate: f64) {
        assert!(rate > 0.0, "clock rate {rate} must be positive");
        if !self.frozen {
            self.base_local_ns = self.local(true_ns);
            self.base_true_ns = true_ns;
        }
        self.rate = rate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_at_inverts_local_and_rate_changes_keep_continuity() {
        let mut clock = Clock::new(1_000, 1.01);
        let local = clock.local(5_000_000);
        let back = clock.true_at(local, 0);
        assert!(clock.local(back) >= local && back <= 5_000_000);
        let before = clock.local(10_000_000);
        clock.set_rate(10_000_000, 0.99);
        assert_eq!(clock.local(10_000_000), before);
        assert!(clock.local(20_000_000) > before);
    }

    #[test]
    fn a_frozen_clock_stands_still_and_resumes_where_it_stopped() {
        let mut clock = Clock::new(0, 1.0);
        clock.freeze(1_000);
        assert_eq!(clock.local(5_000), 1_000);
        clock.thaw(5_000);
        assert_eq!(clock.local(6_000), 2_000);
    }
}
