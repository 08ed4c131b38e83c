//! The webhook delivery worker: claims due outbox rows under a lease, POSTs each stored body
//! with a fresh `Unwind-Signature`, records every attempt, and retries with exponential
//! backoff and jitter until the receiver answers 2xx. Rows stay in the store until delivered,
//! so a restart loses nothing; a worker that dies mid-send leaves a lease that expires, and the
//! row is sent again (at least once, with the same event id and body).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::signature;
use super::webhook::WebhookTarget;
use crate::agents::Backoff;
use crate::store::hitl::{Attempt, AttemptOutcome, Delivery};
use crate::store::{Store, StoreError};

/// How the worker behaves.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Identifies this worker in leases.
    pub owner: String,
    /// Timeout of one POST.
    pub timeout: Duration,
    pub backoff: Backoff,
    /// How often to look for due rows when nothing wakes the worker.
    pub poll_interval: Duration,
    /// Rows claimed (and sent concurrently) at once.
    pub batch: u32,
}

impl DeliverySettings {
    pub fn from_config(config: &crate::config::HitlConfig, owner: String) -> Self {
        Self {
            owner,
            timeout: Duration::from_millis(config.timeout_ms),
            backoff: Backoff {
                initial: Duration::from_millis(config.retry_initial_ms),
                max: Duration::from_secs(config.retry_max_s),
                jitter: 0.2,
            },
            poll_interval: Duration::from_millis(config.poll_ms),
            batch: 16,
        }
    }

    /// A claimed row is not claimed again before its POST must have ended.
    fn lease(&self) -> Duration {
        self.timeout.saturating_mul(2) + Duration::from_secs(5)
    }
}

/// Sends webhook events; one per process, any number per database.
pub struct Deliverer {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    targets: HashMap<String, WebhookTarget>,
    settings: DeliverySettings,
    wake: Arc<Notify>,
}

impl Deliverer {
    /// `wake` is the notifier [`super::Escalations`] signals when it stores events.
    pub fn new(
        store: Arc<dyn Store>,
        targets: Vec<WebhookTarget>,
        settings: DeliverySettings,
        wake: Arc<Notify>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        // Never follow redirects: the receiver is the configured URL, nothing else.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()?;
        Ok(Arc::new(Self {
            store,
            client,
            targets: targets.into_iter().map(|t| (t.url.clone(), t)).collect(),
            settings,
            wake,
        }))
    }

    /// Delivers until `shutdown` completes.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let busy = match self.deliver_due().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.settings.poll_interval) => {},
            }
        }
    }

    /// Claims the due rows and sends them concurrently; returns how many it claimed.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let claimed = self
            .store
            .claim_deliveries(
                &self.settings.owner,
                self.settings.lease(),
                self.settings.batch,
            )
            .await?;
        let n = claimed.len();
        let sends = claimed.iter().map(|d| self.deliver(d));
        for result in futures::future::join_all(sends).await {
            result?;
        }
        Ok(n)
    }

    async fn deliver(&self, d: &Delivery) -> Result<(), StoreError> {
        let attempt = self.attempt(d).await;
        let delivered = attempt.http_status.is_some_and(|s| (200..300).contains(&s));
        let outcome = if delivered {
            AttemptOutcome::Delivered
        } else {
            let number = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
            AttemptOutcome::RetryIn(self.settings.backoff.delay(number))
        };
        let result = if delivered { "delivered" } else { "failed" };
        metrics::counter!("unwind_webhook_attempts_total", "result" => result).increment(1);
        tracing::debug!(event_id = %d.event_id, url = %d.url, status = ?attempt.http_status, error = ?attempt.error, "webhook attempt");
        if !self
            .store
            .record_attempt(d, &self.settings.owner, &attempt, outcome)
            .await?
        {
            tracing::warn!(event_id = %d.event_id, "webhook lease lost before its attempt was recorded");
        }
        Ok(())
    }

    /// One POST of the stored body, signed now.
    async fn attempt(&self, d: &Delivery) -> Attempt {
        let attempted_at = chrono::Utc::now();
        let started = Instant::now();
        let (http_status, error) = match self.targets.get(&d.url) {
            None => (
                None,
                Some("this webhook is no longer configured".to_string()),
            ),
            Some(target) => {
                let header = signature::header_value(
                    target.secret(),
                    attempted_at.timestamp(),
                    d.body.as_bytes(),
                );
                let sent = self
                    .client
                    .post(&d.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(signature::HEADER, header)
                    .body(d.body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
                    Ok(r) => (
                        Some(r.status().as_u16()),
                        Some(format!("the receiver answered {}", r.status())),
                    ),
                    Err(e) => (None, Some(describe(&e))),
                }
            }
        };
        Attempt {
            attempted_at,
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            http_status,
            error,
        }
    }
}

/// A short reason for a failed request (without the URL, which the record names already).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text.chars().take(500).collect()
}
