//! The latency-spike signal of the cascade draft ("Detection Signals"), per downstream agent:
//! the p99 of the recent calls against a slow exponentially weighted baseline. A p99 above
//! [`SPIKE_FACTOR`] times the baseline is a spike: congestion or failure downstream, often
//! before errors show. Pure, no clock: the caller feeds it each call's duration.

use std::collections::VecDeque;

/// How much heavier than the baseline the recent p99 must be.
pub const SPIKE_FACTOR: f64 = 3.0;
/// Calls kept for the recent p99.
const RECENT: usize = 100;
/// Calls needed before a spike can be called (a baseline of a handful of calls says little).
const MIN_SAMPLES: usize = 20;
/// Weight of a new call in the baseline: slow, so that a spike does not become its own
/// baseline within a few calls.
const ALPHA: f64 = 0.02;

#[derive(Debug, Clone, Default)]
pub struct LatencyTracker {
    baseline_ms: Option<f64>,
    recent: VecDeque<f64>,
    spiking: bool,
}

impl LatencyTracker {
    /// Records one call; true when this call started a spike.
    pub fn observe(&mut self, ms: f64) -> bool {
        let ms = ms.max(0.0);
        self.baseline_ms = Some(match self.baseline_ms {
            None => ms,
            Some(b) => b + ALPHA * (ms - b),
        });
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
        let was = self.spiking;
        self.spiking = match (self.p99_ms(), self.baseline_ms) {
            (Some(p99), Some(base)) if self.recent.len() >= MIN_SAMPLES && base > 0.0 => {
                p99 > SPIKE_FACTOR * base
            }
            _ => false,
        };
        self.spiking && !was
    }

    pub fn baseline_ms(&self) -> Option<f64> {
        self.baseline_ms
    }

    /// The 99th percentile of the recent calls (nearest rank).
    pub fn p99_ms(&self) -> Option<f64> {
        if self.recent.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = (0.99 * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied()
    }

    pub fn spiking(&self) -> bool {
        self.spiking
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_calls_are_no_spike_and_a_slowdown_is() {
        let mut t = LatencyTracker::default();
        for _ in 0..200 {
            assert!(!t.observe(10.0));
        }
        assert!(!t.spiking());
        assert_eq!(t.p99_ms(), Some(10.0));
        // Calls ten times slower: one is the 1 % the p99 ignores; from the second the p99 is
        // far above the slow baseline.
        let started: Vec<bool> = (0..3).map(|_| t.observe(100.0)).collect();
        assert_eq!(
            started,
            [false, true, false],
            "reported once, when it starts"
        );
        assert!(t.spiking());
        assert!(t.baseline_ms().unwrap() < 30.0);
        // Back to normal: once the slow calls leave the recent window, the spike ends.
        for _ in 0..RECENT {
            t.observe(10.0);
        }
        assert!(!t.spiking());
    }

    #[test]
    fn too_few_calls_never_spike() {
        let mut t = LatencyTracker::default();
        for _ in 0..(MIN_SAMPLES - 2) {
            t.observe(1.0);
        }
        assert!(!t.observe(1000.0));
        assert!(!t.spiking());
        assert_eq!(LatencyTracker::default().p99_ms(), None);
    }
}
