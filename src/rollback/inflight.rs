//! The agent calls of one phase that are in flight (each a task of its own, aborted when the
//! phase is left), and what they report before they end.
//!
//! The driver writes what it learns in batches: every result and retry report that has arrived
//! by the time it looks is written in one transaction. Under load that is a handful of commits
//! per rank instead of one per step; when calls finish one at a time, each still gets its own
//! write at once, so nothing waits for a batch to fill.

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use super::model::StepError;
use crate::agents::{AttemptReport, Final};

/// A step's call ended.
pub(super) struct Done<T> {
    pub index: usize,
    pub answer: Final<T>,
    /// The step's attempts including this call's (prepare and execute together).
    pub attempts: u32,
}

/// A step's call failed and will be tried again: recorded at once, so that a step retrying
/// for minutes shows its attempts, last error and next attempt while it does.
pub(super) struct Retrying {
    pub index: usize,
    pub attempts: u32,
    pub error: StepError,
    pub next_attempt_at: DateTime<Utc>,
}

/// Sends one step's retry reports to the driver.
pub(super) struct Reporter {
    sender: mpsc::UnboundedSender<Retrying>,
    index: usize,
    base: u32,
}

impl Reporter {
    /// For the agent client's `on_attempt`: reports a failed call that will be retried.
    pub fn report(&self, report: &AttemptReport) {
        let (Some(error), Some(delay)) = (&report.error, report.next_delay) else {
            return;
        };
        let next_attempt_at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .unwrap_or_else(Utc::now);
        // The receiver lives as long as the calls; a send can only fail once the phase has
        // stopped listening, when the report no longer matters.
        let _ = self.sender.send(Retrying {
            index: self.index,
            attempts: self.base.saturating_add(report.attempt),
            error: super::driver::step_error(error.code, &error.detail),
            next_attempt_at,
        });
    }
}

/// What happened since the driver last looked.
pub(super) struct Batch<T> {
    /// Reports come first: each was sent before the call it belongs to ended.
    pub retrying: Vec<Retrying>,
    pub done: Vec<Done<T>>,
}

/// Calls in flight (tasks that end with a [`Done`]) and the channel of their retry reports.
/// Dropping it aborts the calls still running: a phase left early leaves none behind.
pub(super) struct InFlight<T> {
    calls: JoinSet<Done<T>>,
    reports: mpsc::UnboundedReceiver<Retrying>,
    reporter: mpsc::UnboundedSender<Retrying>,
}

impl<T: Send + 'static> InFlight<T> {
    pub fn new() -> Self {
        let (reporter, reports) = mpsc::unbounded_channel();
        Self {
            calls: JoinSet::new(),
            reports,
            reporter,
        }
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn spawn(&mut self, call: impl Future<Output = Done<T>> + Send + 'static) {
        self.calls.spawn(call);
    }

    /// The retry reporter of step `index`, whose attempts before this call were `base`.
    pub fn reporter(&self, index: usize, base: u32) -> Reporter {
        Reporter {
            sender: self.reporter.clone(),
            index,
            base,
        }
    }

    /// Waits until a call ends or reports a retry, then takes everything else that has already
    /// happened. `None` when no call is in flight; an error when a call's task panicked.
    pub async fn next_batch(&mut self) -> Result<Option<Batch<T>>, JoinError> {
        if self.calls.is_empty() {
            return Ok(None);
        }
        let mut batch = Batch {
            retrying: Vec::new(),
            done: Vec::new(),
        };
        // `recv` cannot end: this value holds a sender.
        tokio::select! {
            Some(d) = self.calls.join_next() => batch.done.push(d?),
            Some(r) = self.reports.recv() => batch.retrying.push(r),
        }
        while let Some(d) = self.calls.try_join_next() {
            batch.done.push(d?);
        }
        // After the calls: a call that ended above sent its reports before it ended.
        while let Ok(r) = self.reports.try_recv() {
            batch.retrying.push(r);
        }
        Ok(Some(batch))
    }
}
