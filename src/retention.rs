//! The background pruner: on every replica, every `retention.interval_s`, deletes the
//! operational rows of finished work that are older than the configured ages
//! ([`crate::store::RetentionStore`]), batch by batch, and counts what it deleted in
//! `unwind_retention_pruned_total{table}`. The ledger is never pruned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RetentionConfig;
use crate::store::{Store, StoreError};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Batches of one table in one run, at most: a run that keeps finding full batches (a backlog
/// after retention was first enabled) leaves the rest to the next run instead of never ending.
const MAX_BATCHES: u32 = 1000;

/// How the pruner behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSettings {
    /// Age after which a finished rollback's steps go; `None` keeps them.
    pub rollback_steps: Option<Duration>,
    /// Age after which a delivered webhook event and its attempts go; `None` keeps them.
    pub webhook_deliveries: Option<Duration>,
    pub interval: Duration,
    pub batch: u32,
}

impl RetentionSettings {
    pub fn from_config(config: &RetentionConfig) -> Self {
        let days = |n: u32| (n > 0).then(|| DAY.saturating_mul(n));
        Self {
            rollback_steps: days(config.rollback_steps_days),
            webhook_deliveries: days(config.webhook_deliveries_days),
            interval: Duration::from_secs(config.interval_s.max(1)),
            batch: config.batch.max(1),
        }
    }
}

/// Rows one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rollback_steps: u64,
    pub webhook_outbox: u64,
    pub webhook_attempts: u64,
}

/// Prunes one store; one per process, any number per database.
pub struct Pruner {
    store: Arc<dyn Store>,
    settings: RetentionSettings,
}

impl Pruner {
    pub fn new(store: Arc<dyn Store>, settings: RetentionSettings) -> Arc<Self> {
        Arc::new(Self { store, settings })
    }

    /// Prunes at once, then every interval, until `shutdown` completes. A failed run is
    /// logged and tried again at the next interval.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if self.settings.rollback_steps.is_none() && self.settings.webhook_deliveries.is_none() {
            tracing::info!("retention: everything is kept (no age configured)");
            return;
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                result = self.prune_once() => if let Err(e) = result {
                    tracing::warn!(error = %e, "retention: prune run failed");
                },
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.settings.interval) => {},
            }
        }
    }

    /// One run over every table with an age: batches until one comes back short.
    pub async fn prune_once(&self) -> Result<Pruned, StoreError> {
        let started = Instant::now();
        let batch = self.settings.batch;
        let mut pruned = Pruned::default();
        if let Some(age) = self.settings.rollback_steps {
            for _ in 0..MAX_BATCHES {
                let n = self.store.prune_rollback_steps(age, batch).await?;
                pruned.rollback_steps += n;
                count("rollback_steps", n);
                if n < u64::from(batch) {
                    break;
                }
            }
        }
        if let Some(age) = self.settings.webhook_deliveries {
            for _ in 0..MAX_BATCHES {
                let n = self.store.prune_webhook_deliveries(age, batch).await?;
                pruned.webhook_outbox += n.events;
                pruned.webhook_attempts += n.attempts;
                count("webhook_outbox", n.events);
                count("webhook_attempts", n.attempts);
                if n.events < u64::from(batch) {
                    break;
                }
            }
        }
        tracing::info!(
            rollback_steps = pruned.rollback_steps,
            webhook_outbox = pruned.webhook_outbox,
            webhook_attempts = pruned.webhook_attempts,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "retention: prune run done"
        );
        Ok(pruned)
    }
}

fn count(table: &'static str, n: u64) {
    metrics::counter!("unwind_retention_pruned_total", "table" => table).increment(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_days_keeps_forever() {
        let s = RetentionSettings::from_config(&RetentionConfig {
            rollback_steps_days: 0,
            webhook_deliveries_days: 2,
            interval_s: 60,
            batch: 10,
        });
        assert_eq!(s.rollback_steps, None);
        assert_eq!(s.webhook_deliveries, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(s.interval, Duration::from_secs(60));
    }
}
