//! The circuit breaker of one downstream agent, as a pure state machine (the cascade draft's
//! "Circuit Breaker Protocol"): CLOSED counts calls over a sliding window and opens when the
//! error rate passes the threshold; OPEN refuses calls until its cooldown ends; HALF_OPEN lets
//! exactly one probe through, which closes the breaker or opens it again with the cooldown
//! doubled (capped).
//!
//! No I/O and no clock of its own: every method takes `now`, a [`tokio::time::Instant`], so
//! tests drive it with tokio's paused clock and the caller decides where shared state lives.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitConfig;

/// While the probe of a half-open breaker is in flight, other callers are told to look again
/// after this long (a probe ends within one call timeout).
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// The `[circuit]` settings as durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitSettings {
    pub window: Duration,
    /// Opens when the window's error rate is above this (0..=1).
    pub error_threshold: f64,
    /// A window with fewer calls never opens the breaker.
    pub min_calls: u64,
    /// The first cooldown of an open breaker.
    pub cooldown: Duration,
    /// Cooldowns double after each failed probe, up to this.
    pub max_cooldown: Duration,
}

impl CircuitSettings {
    pub fn from_config(cfg: &CircuitConfig) -> Self {
        Self {
            window: Duration::from_secs(cfg.window_s.max(1)),
            error_threshold: cfg.error_threshold,
            min_calls: cfg.min_calls,
            cooldown: Duration::from_secs(cfg.cooldown_s),
            max_cooldown: Duration::from_secs(cfg.max_cooldown_s.max(cfg.cooldown_s)),
        }
    }
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self::from_config(&CircuitConfig::default())
    }
}

/// The state names of the draft (and of the circuits endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "closed" => Some(Self::Closed),
            "open" => Some(Self::Open),
            "half_open" => Some(Self::HalfOpen),
            _ => None,
        }
    }
}

/// May a call be made now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call, then [`Breaker::record`] the outcome.
    Call,
    /// Half-open: this call is the one probe; record it with `probe = true`.
    Probe,
    /// Refused locally, nothing sent; worth asking again after `retry_after`.
    Refuse { retry_after: Duration },
}

/// A change of state that the caller must make known (shared state, evidence, metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Closed (or a failed probe) -> open. `reopened` after a failed probe.
    Opened {
        error_rate: f64,
        cooldown: Duration,
        reopened: bool,
    },
    /// A probe succeeded; `total_cooldown` is every cooldown since the breaker first opened.
    Closed { total_cooldown: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// One downstream agent's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: CircuitSettings,
    phase: Phase,
    /// Calls in the window: when each ended and whether it failed, oldest first.
    calls: VecDeque<(Instant, bool)>,
    failures: usize,
    /// The cooldown of the current (or last) opening.
    cooldown: Duration,
    total_cooldown: Duration,
    /// The error rate when the breaker last opened.
    opened_rate: f64,
}

impl Breaker {
    pub fn new(settings: CircuitSettings) -> Self {
        Self {
            settings,
            phase: Phase::Closed,
            calls: VecDeque::new(),
            failures: 0,
            cooldown: settings.cooldown,
            total_cooldown: Duration::ZERO,
            opened_rate: 0.0,
        }
    }

    pub fn settings(&self) -> &CircuitSettings {
        &self.settings
    }

    /// The state as the draft names it: an open breaker whose cooldown has ended is half-open
    /// (its next call is the probe).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { until } if now < until => CircuitState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Closed: the window's error rate; otherwise the rate that opened the breaker.
    pub fn error_rate(&mut self, now: Instant) -> f64 {
        match self.phase {
            Phase::Closed => {
                self.prune(now);
                rate(self.failures, self.calls.len())
            }
            _ => self.opened_rate,
        }
    }

    /// Calls counted in the current window.
    pub fn window_calls(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.calls.len()
    }

    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    pub fn total_cooldown(&self) -> Duration {
        self.total_cooldown
    }

    /// Time left before an open breaker lets its probe through (zero otherwise).
    pub fn cooldown_remaining(&self, now: Instant) -> Duration {
        match self.phase {
            Phase::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Call,
            Phase::Open { until } if now < until => Admission::Refuse {
                retry_after: until - now,
            },
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                self.phase = Phase::HalfOpen { probing: true };
                Admission::Probe
            }
            Phase::HalfOpen { probing: true } => Admission::Refuse {
                retry_after: PROBE_WAIT,
            },
        }
    }

    /// The outcome of an admitted call (`failed`: a failure for the breaker). Calls admitted
    /// while closed that end after the breaker opened change nothing.
    pub fn record(&mut self, now: Instant, failed: bool, probe: bool) -> Option<Transition> {
        match (self.phase, probe) {
            (Phase::Closed, false) => {
                self.calls.push_back((now, failed));
                self.failures += usize::from(failed);
                self.prune(now);
                let calls = self.calls.len();
                let error_rate = rate(self.failures, calls);
                let trips = failed
                    && calls as u64 >= self.settings.min_calls.max(1)
                    && error_rate > self.settings.error_threshold;
                trips.then(|| {
                    self.cooldown = self.settings.cooldown;
                    self.total_cooldown = self.cooldown;
                    self.open(now, error_rate, false)
                })
            }
            (Phase::HalfOpen { probing: true }, true) if failed => {
                self.cooldown = self
                    .cooldown
                    .saturating_mul(2)
                    .min(self.settings.max_cooldown);
                self.total_cooldown = self.total_cooldown.saturating_add(self.cooldown);
                Some(self.open(now, 1.0, true))
            }
            (Phase::HalfOpen { probing: true }, true) => {
                let total_cooldown = self.total_cooldown;
                self.reset();
                Some(Transition::Closed { total_cooldown })
            }
            _ => None,
        }
    }

    /// The probe's caller gave up without an outcome (cancelled): another caller may probe.
    pub fn abandon_probe(&mut self) {
        if let Phase::HalfOpen { probing: true } = self.phase {
            self.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// Another replica opened the breaker (or claimed its probe): refuse calls for
    /// `remaining`, then probe; `cooldown` and `total_cooldown` continue from there.
    pub fn adopt_open(
        &mut self,
        now: Instant,
        remaining: Duration,
        cooldown: Duration,
        total_cooldown: Duration,
        error_rate: f64,
    ) {
        self.calls.clear();
        self.failures = 0;
        self.cooldown = cooldown;
        self.total_cooldown = total_cooldown;
        self.opened_rate = error_rate;
        self.phase = Phase::Open {
            until: now + remaining,
        };
    }

    /// Another replica closed the breaker.
    pub fn adopt_closed(&mut self) {
        self.reset();
    }

    fn open(&mut self, now: Instant, error_rate: f64, reopened: bool) -> Transition {
        self.calls.clear();
        self.failures = 0;
        self.opened_rate = error_rate;
        self.phase = Phase::Open {
            until: now + self.cooldown,
        };
        Transition::Opened {
            error_rate,
            cooldown: self.cooldown,
            reopened,
        }
    }

    /// Closed with counters reset (the draft's rule 3).
    fn reset(&mut self) {
        self.phase = Phase::Closed;
        self.calls.clear();
        self.failures = 0;
        self.cooldown = self.settings.cooldown;
        self.total_cooldown = Duration::ZERO;
        self.opened_rate = 0.0;
    }

    /// Drops the calls that left the window.
    fn prune(&mut self, now: Instant) {
        while let Some(&(at, failed)) = self.calls.front() {
            if now.saturating_duration_since(at) < self.settings.window {
                break;
            }
            self.calls.pop_front();
            self.failures -= usize::from(failed);
        }
    }
}

fn rate(failures: usize, calls: usize) -> f64 {
    if calls == 0 {
        0.0
    } else {
        failures as f64 / calls as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(CircuitSettings::default())
    }

    /// Records `n` outcomes one millisecond apart; the transitions seen.
    async fn calls(b: &mut Breaker, n: usize, failed: bool) -> Vec<Transition> {
        let mut out = Vec::new();
        for _ in 0..n {
            assert_eq!(b.admit(Instant::now()), Admission::Call);
            out.extend(b.record(Instant::now(), failed, false));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        out
    }

    fn opened(cooldown_s: u64) -> impl Fn(&Transition) -> bool {
        move |t| matches!(t, Transition::Opened { cooldown, .. } if *cooldown == S * cooldown_s as u32)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_when_the_error_rate_passes_the_threshold() {
        let mut b = breaker();
        assert!(calls(&mut b, 3, false).await.is_empty());
        // 3 ok + 3 failed = 0.5: not above the threshold.
        assert!(calls(&mut b, 3, true).await.is_empty());
        assert_eq!(b.state(Instant::now()), CircuitState::Closed);
        assert_eq!(b.error_rate(Instant::now()), 0.5);
        let t = calls(&mut b, 1, true).await;
        assert_eq!(t.len(), 1);
        match t[0] {
            Transition::Opened {
                error_rate,
                cooldown,
                reopened,
            } => {
                assert!((error_rate - 4.0 / 7.0).abs() < 1e-9);
                assert_eq!(cooldown, S * 30);
                assert!(!reopened);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.state(Instant::now()), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn fewer_than_min_calls_never_open() {
        let mut b = breaker();
        assert!(calls(&mut b, 4, true).await.is_empty(), "4 < min_calls 5");
        assert_eq!(b.error_rate(Instant::now()), 1.0);
        // The window slides: the four failures leave it before the next ones arrive.
        tokio::time::advance(S * 61).await;
        assert_eq!(b.window_calls(Instant::now()), 0);
        assert!(calls(&mut b, 4, true).await.is_empty());
        assert!(calls(&mut b, 1, true).await.iter().any(opened(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_while_open_then_lets_exactly_one_probe_through() {
        let mut b = breaker();
        assert_eq!(calls(&mut b, 5, true).await.len(), 1);
        let now = Instant::now();
        match b.admit(now) {
            Admission::Refuse { retry_after } => {
                assert!(retry_after <= S * 30 && retry_after > S * 29)
            }
            other => panic!("{other:?}"),
        }
        tokio::time::advance(S * 10).await;
        assert!(
            matches!(b.admit(Instant::now()), Admission::Refuse { retry_after } if retry_after <= S * 20)
        );
        assert!(b.cooldown_remaining(Instant::now()) <= S * 20);
        // A late answer to a call admitted before the breaker opened changes nothing.
        assert_eq!(b.record(Instant::now(), false, false), None);
        assert_eq!(b.state(Instant::now()), CircuitState::Open);

        tokio::time::advance(S * 20).await;
        assert_eq!(b.state(Instant::now()), CircuitState::HalfOpen);
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        for _ in 0..3 {
            assert_eq!(
                b.admit(Instant::now()),
                Admission::Refuse {
                    retry_after: PROBE_WAIT
                },
                "concurrent callers wait for the probe"
            );
        }
        // A probe whose caller went away frees the slot for one other caller.
        b.abandon_probe();
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert!(matches!(b.admit(Instant::now()), Admission::Refuse { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_probe_closes_and_resets_the_counters() {
        let mut b = breaker();
        calls(&mut b, 5, true).await;
        tokio::time::advance(S * 30).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert_eq!(
            b.record(Instant::now(), false, true),
            Some(Transition::Closed {
                total_cooldown: S * 30
            })
        );
        assert_eq!(b.state(Instant::now()), CircuitState::Closed);
        assert_eq!(b.window_calls(Instant::now()), 0, "counters reset");
        assert_eq!(b.error_rate(Instant::now()), 0.0);
        // A fresh window: four failures are not enough again.
        assert!(calls(&mut b, 4, true).await.is_empty());
        assert!(calls(&mut b, 1, true).await.iter().any(opened(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_cooldown_up_to_the_cap() {
        let mut b = breaker();
        calls(&mut b, 5, true).await;
        let mut total = 30;
        for expected in [60, 120, 240, 300, 300] {
            tokio::time::advance(b.cooldown_remaining(Instant::now())).await;
            assert_eq!(b.admit(Instant::now()), Admission::Probe);
            let t = b.record(Instant::now(), true, true);
            assert_eq!(
                t,
                Some(Transition::Opened {
                    error_rate: 1.0,
                    cooldown: S * expected,
                    reopened: true
                })
            );
            total += expected;
            assert_eq!(b.total_cooldown(), S * total);
            assert!(
                matches!(b.admit(Instant::now()), Admission::Refuse { retry_after } if retry_after == S * expected)
            );
        }
        tokio::time::advance(S * 300).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert_eq!(
            b.record(Instant::now(), false, true),
            Some(Transition::Closed {
                total_cooldown: S * total
            })
        );
        // The next opening starts from the first cooldown again.
        calls(&mut b, 5, true).await;
        assert_eq!(b.cooldown(), S * 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_replicas_opening_is_adopted() {
        let mut b = breaker();
        calls(&mut b, 2, true).await;
        b.adopt_open(Instant::now(), S * 5, S * 60, S * 90, 0.8);
        assert_eq!(b.state(Instant::now()), CircuitState::Open);
        assert_eq!(b.error_rate(Instant::now()), 0.8);
        assert!(
            matches!(b.admit(Instant::now()), Admission::Refuse { retry_after } if retry_after == S * 5)
        );
        tokio::time::advance(S * 5).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert_eq!(
            b.record(Instant::now(), true, true),
            Some(Transition::Opened {
                error_rate: 1.0,
                cooldown: S * 120,
                reopened: true
            })
        );
        b.adopt_closed();
        assert_eq!(b.state(Instant::now()), CircuitState::Closed);
        assert_eq!(b.admit(Instant::now()), Admission::Call);
    }
}
