//! Group commit: appends that wait at the same moment go to the store as one chained
//! transaction.
//!
//! Every append takes the chain head's lock and holds it through its commit, so appends commit
//! one at a time. A single-token append then costs one commit (a WAL flush) under that lock, and
//! at a thousand single tokens per second the flushes alone fill the time. Gathering what is
//! queued while the previous group is in the database into one transaction costs no latency
//! when the ledger is idle (a lone append goes at once) and one flush per group under load.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::store::{ChainEntry, InsertOutcome, NewEct, Store, StoreError};

/// What one append answers: its outcomes and chain entries, in batch order.
pub type AppendResult = Result<Vec<(InsertOutcome, ChainEntry)>, StoreError>;

/// Tokens gathered into one group at most (a larger batch goes alone).
const GROUP_TOKENS: usize = 2_000;

/// Groups in the database at once. Two let one group write its rows while the other holds the
/// chain head through its commit.
const GROUPS_IN_FLIGHT: usize = 2;

/// Appends waiting for a group.
const QUEUE: usize = 4_096;

struct Request {
    batch: Vec<NewEct>,
    reply: oneshot::Sender<AppendResult>,
}

/// Appends batches through [`Store::append_chained`], gathering concurrent ones into groups.
pub struct GroupAppender {
    store: Arc<dyn Store>,
    /// The queue of the grouping task, started on first use (it needs a runtime).
    queue: Mutex<Option<mpsc::Sender<Request>>>,
}

impl GroupAppender {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            queue: Mutex::new(None),
        }
    }

    /// Appends `batch` (see [`Store::append_chained`]), in a group with whatever else is
    /// waiting. The result is the batch's own: another batch of the group failing does not
    /// fail it.
    pub async fn append(&self, batch: Vec<NewEct>) -> AppendResult {
        let (reply, answer) = oneshot::channel();
        let mut request = Request { batch, reply };
        // A queue whose task ended (its runtime shut down) is replaced once.
        for _ in 0..2 {
            let queue = self.queue();
            match queue.send(request).await {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(StoreError::Config(
                            "the ledger's append task stopped".into(),
                        ))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
                    request = back;
                    self.clear_queue(&queue);
                }
            }
        }
        Err(StoreError::Config(
            "the ledger's append task cannot be started".into(),
        ))
    }

    fn queue(&self) -> mpsc::Sender<Request> {
        let mut slot = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = slot.as_ref().filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(self.store.clone(), rx));
        *slot = Some(tx.clone());
        tx
    }

    fn clear_queue(&self, dead: &mpsc::Sender<Request>) {
        let mut slot = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|q| q.same_channel(dead)) {
            *slot = None;
        }
    }
}

/// Forms groups from the queue and appends them, at most [`GROUPS_IN_FLIGHT`] at a time;
/// ends when every sender is gone.
async fn run(store: Arc<dyn Store>, mut queue: mpsc::Receiver<Request>) {
    let mut in_flight = JoinSet::new();
    // A request that shares a jti with the group being formed waits for the next one: one
    // transaction must not insert a jti twice.
    let mut held: Option<Request> = None;
    loop {
        while in_flight.try_join_next().is_some() {}
        while in_flight.len() >= GROUPS_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let first = match held.take() {
            Some(request) => request,
            None => match queue.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        let mut jtis: HashSet<String> = first.batch.iter().map(|e| e.jti.clone()).collect();
        let mut tokens = first.batch.len();
        let mut group = vec![first];
        while tokens < GROUP_TOKENS {
            let Ok(next) = queue.try_recv() else { break };
            if tokens + next.batch.len() > GROUP_TOKENS
                || next.batch.iter().any(|e| jtis.contains(&e.jti))
            {
                held = Some(next);
                break;
            }
            jtis.extend(next.batch.iter().map(|e| e.jti.clone()));
            tokens += next.batch.len();
            group.push(next);
        }
        let store = store.clone();
        in_flight.spawn(async move {
            let (batches, replies): (Vec<_>, Vec<_>) =
                group.into_iter().map(|r| (r.batch, r.reply)).unzip();
            let results = append_group(store.as_ref(), batches).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// Appends `batches` in one call to the store and gives each its share of the result; when
/// that fails, each batch is appended alone so that it gets its own answer (a `jti` race lost
/// by one batch is that batch's error only). One result per batch, in order.
pub async fn append_group(store: &dyn Store, batches: Vec<Vec<NewEct>>) -> Vec<AppendResult> {
    metrics::counter!("unwind_ledger_append_groups_total").increment(1);
    metrics::counter!("unwind_ledger_appends_total").increment(batches.len() as u64);
    let lens: Vec<usize> = batches.iter().map(Vec::len).collect();
    let all: Vec<NewEct> = batches.into_iter().flatten().collect();
    if lens.len() == 1 {
        return vec![store.append_chained(&all).await];
    }
    match store.append_chained(&all).await {
        Ok(results) if results.len() == all.len() => {
            let mut results = results.into_iter();
            lens.iter()
                .map(|&len| Ok(results.by_ref().take(len).collect()))
                .collect()
        }
        other => {
            if let Err(e) = &other {
                tracing::debug!(error = %e, batches = lens.len(), "group append failed; appending each batch alone");
            }
            let mut results = Vec::with_capacity(lens.len());
            let mut start = 0;
            for len in lens {
                results.push(store.append_chained(&all[start..start + len]).await);
                start += len;
            }
            results
        }
    }
}
