//! Exponential backoff with jitter between the attempts of one agent call.
//!
//! Jitter spreads the retries of many steps that failed together (an agent restarting, a
//! network blip), so they do not all hit the agent again in the same instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Delay before retry number `n`: `initial` doubled per attempt, at most `max`, spread by
/// ±`jitter` (a fraction: 0.2 = ±20 %) and still at most `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay after the `attempt`-th call (1-based) before jitter:
    /// `initial * 2^(attempt - 1)`, at most `max`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        let factor = 2u32.saturating_pow(doublings);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay to sleep after the `attempt`-th call (1-based), jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.jittered(self.base_delay(attempt), unit_random())
    }

    /// `base` scaled by `1 + jitter * (2u - 1)` for `u` in `[0, 1)`, at most `max`. Split out
    /// so the bounds can be checked without randomness.
    pub fn jittered(&self, base: Duration, u: f64) -> Duration {
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let u = if u.is_finite() {
            u.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let factor = 1.0 + jitter * (2.0 * u - 1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A uniform value in `[0, 1)`. Taken from the system CSPRNG per call, so no generator state
/// is held (nor shared) across awaits; if that fails, a counter mixed with the clock still
/// decorrelates concurrent retries, which is all jitter needs.
fn unit_random() -> f64 {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    let bits = match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => fallback_bits(),
    };
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn fallback_bits() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    splitmix64(nanos ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_initial_up_to_max() {
        let b = Backoff::default();
        let expected = [
            200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000,
        ];
        for (i, ms) in expected.iter().enumerate() {
            assert_eq!(b.base_delay(i as u32 + 1), MS * *ms, "attempt {}", i + 1);
        }
        assert_eq!(
            b.base_delay(0),
            b.initial,
            "attempt 0 is treated as the first"
        );
        assert_eq!(b.base_delay(u32::MAX), b.max, "no overflow");
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default();
        for attempt in 1..=12 {
            let base = b.base_delay(attempt);
            let low = base.mul_f64(0.8);
            let high = base.mul_f64(1.2).min(b.max);
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert!(
                    d >= low && d <= high,
                    "attempt {attempt}: {d:?} outside {low:?}..={high:?}"
                );
            }
        }
        assert_eq!(b.jittered(MS * 1000, 0.0), MS * 800);
        assert_eq!(b.jittered(MS * 1000, 0.5), MS * 1000);
        assert!(b.jittered(MS * 1000, 0.999_999) <= MS * 1200);
        assert_eq!(b.jittered(b.max, 0.999), b.max, "never above max");
    }

    #[test]
    fn jitter_varies_and_odd_settings_are_safe() {
        let b = Backoff::default();
        let samples: std::collections::HashSet<Duration> = (0..50).map(|_| b.delay(3)).collect();
        assert!(samples.len() > 10, "jitter spreads delays: {samples:?}");

        let none = Backoff { jitter: 0.0, ..b };
        assert!((0..20).all(|_| none.delay(2) == MS * 400));
        let wild = Backoff {
            jitter: f64::NAN,
            ..b
        };
        assert_eq!(wild.delay(1), MS * 200);
        let huge = Backoff { jitter: 5.0, ..b };
        assert!(huge.delay(1) <= MS * 400);
        let tiny_max = Backoff { max: MS * 50, ..b };
        assert_eq!(tiny_max.base_delay(1), MS * 50);
        let unbounded = Backoff {
            max: Duration::MAX,
            ..b
        };
        assert!(unbounded.delay(u32::MAX) <= Duration::MAX);
    }

    #[test]
    fn unit_random_in_range() {
        for _ in 0..1000 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u));
        }
        let f = fallback_bits();
        assert_ne!(f, fallback_bits());
    }
}
