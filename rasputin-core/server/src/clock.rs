//! The daemon's clock for consensus: CLOCK_BOOTTIME.
//!
//! Leases are promises about elapsed time. `std::time::Instant` reads
//! CLOCK_MONOTONIC, which stands still while the host is suspended: a
//! leader suspended for a minute would wake believing its lease still runs,
//! while its followers' clocks (on other hosts) went on and elected a new
//! leader. CLOCK_BOOTTIME counts suspended time too, so a leader that wakes
//! sees its lease has lapsed. The simulator shows what the other choice
//! does (`a_clock_that_stops_while_its_node_is_paused_breaks_lease_exclusivity`).

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds since the daemon started, counting time the host spent suspended.
pub struct BootClock {
    started_ns: u64,
}

fn boot_time_ns() -> u64 {
    // CLOCK_BOOTTIME exists on every Linux this daemon supports (2.6.39 on),
    // so a failure here is a broken platform, not an operating error.
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is readable on Linux");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

impl BootClock {
    pub fn start() -> BootClock {
        BootClock { started_ns: boot_time_ns() }
    }

    pub fn now_ns(&self) -> u64 {
        boot_time_ns() - self.started_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_runs_with_the_monotonic_clock_while_the_host_is_awake() {
        let clock = BootClock::start();
        let started = std::time::Instant::now();
        let before = clock.now_ns();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let boot_elapsed = clock.now_ns() - before;
        let monotonic_elapsed = started.elapsed().as_nanos() as u64;
        assert!(boot_elapsed >= 20_000_000, "boot clock advanced {boot_elapsed} ns over a 20 ms sleep");
        assert!(boot_elapsed.abs_diff(monotonic_elapsed) < 5_000_000, "{boot_elapsed} vs {monotonic_elapsed}");
    }
}
