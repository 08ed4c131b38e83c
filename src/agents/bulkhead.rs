//! Bulkheads (the cascade draft's "Bulkhead Patterns for Agent Pools"): a limit per key —
//! here a workflow id — with a queue of its own, so one workflow's backlog waits behind its own
//! permits and never in front of another workflow's calls.
//!
//! One semaphore per key, created on first use and dropped when its last permit or waiter is
//! gone, so the map only holds workflows that are active. Tokio's semaphore is fair: a key's
//! waiters are served in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Slots = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

/// Per-key limits. Cheap to clone; clones share the limits.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    /// The metrics label (`agent_calls`, `rollbacks`).
    kind: &'static str,
    limit: usize,
    slots: Slots,
}

/// A held place; released when dropped.
#[derive(Debug)]
pub struct BulkheadPermit {
    key: String,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    slots: Slots,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.permit.take();
        let mut slots = lock(&self.slots);
        // Only the map and this permit still know the semaphore: nobody holds or awaits it.
        // Every other holder cloned it under this lock, so the count cannot grow meanwhile.
        if Arc::strong_count(&self.semaphore) == 2 {
            slots.remove(&self.key);
        }
    }
}

impl Bulkhead {
    /// `limit` places per key (at least one).
    pub fn new(kind: &'static str, limit: usize) -> Self {
        Self {
            kind,
            limit: limit.max(1),
            slots: Arc::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for a place of `key`. A wait is counted (`unwind_bulkhead_waits_total`): the
    /// saturation signal of design.md §10.
    pub async fn acquire(&self, key: &str) -> BulkheadPermit {
        let semaphore = self.semaphore(key);
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                metrics::counter!("unwind_bulkhead_waits_total", "kind" => self.kind).increment(1);
                // Never closed, so this only fails if the semaphore were; then no limit holds.
                semaphore.clone().acquire_owned().await.ok()
            }
        };
        self.permit(key, semaphore, permit)
    }

    /// A place of `key` if one is free now.
    pub fn try_acquire(&self, key: &str) -> Option<BulkheadPermit> {
        let semaphore = self.semaphore(key);
        match semaphore.clone().try_acquire_owned() {
            Ok(p) => Some(self.permit(key, semaphore, Some(p))),
            Err(_) => {
                metrics::counter!("unwind_bulkhead_waits_total", "kind" => self.kind).increment(1);
                // Dropping `semaphore` here may leave an unused entry; the next permit of the
                // key removes it.
                None
            }
        }
    }

    /// Places of `key` in use.
    pub fn in_use(&self, key: &str) -> usize {
        lock(&self.slots)
            .get(key)
            .map_or(0, |s| self.limit - s.available_permits())
    }

    /// Keys with a semaphore (held or awaited).
    pub fn tracked(&self) -> usize {
        lock(&self.slots).len()
    }

    fn semaphore(&self, key: &str) -> Arc<Semaphore> {
        lock(&self.slots)
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone()
    }

    fn permit(
        &self,
        key: &str,
        semaphore: Arc<Semaphore>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> BulkheadPermit {
        BulkheadPermit {
            key: key.to_string(),
            semaphore,
            permit,
            slots: self.slots.clone(),
        }
    }
}

fn lock(slots: &Slots) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
    // Every update of the map is one step: a panic elsewhere leaves it consistent.
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn keys_queue_apart_and_idle_keys_are_dropped() {
        let b = Bulkhead::new("test", 2);
        let a1 = b.acquire("a").await;
        let a2 = b.acquire("a").await;
        assert!(b.try_acquire("a").is_none(), "a is full");
        // Another key is not held up by a's backlog.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire("a").await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        let c = b.try_acquire("c").expect("c has places of its own");
        assert_eq!(b.in_use("a"), 2);
        drop(a1);
        let a3 = waiter.await.unwrap();
        assert_eq!(b.in_use("a"), 2);
        drop((a2, a3, c));
        assert_eq!(b.tracked(), 0, "idle keys are dropped");
        assert_eq!(b.in_use("a"), 0);
    }
}
