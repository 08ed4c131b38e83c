//! The ingest pipeline: verify tokens, order a batch topologically, check the DAG rules against
//! the ledger and the batch itself, and append what passed in one transaction.
//!
//! The ledger is append-only, so a parent that was seen once stays: checking parents before the
//! append transaction is safe. The only race left is two writers storing one `jti` with other
//! content; the store detects it inside its transaction and the batch is checked again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

pub mod chain;
pub mod group;
pub mod heads;

use crate::dag::order_batch;
use crate::ect::{RejectCode, Rejection, VerifiedEct, Verifier};
use crate::store::{ChainEntry, EctMeta, InsertOutcome, NewEct, Store, StoreError};

/// How a token that was not refused ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IngestStatus {
    /// Appended now.
    Created,
    /// The same token was already in the ledger; nothing changed.
    Duplicate,
}

impl IngestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Duplicate => "duplicate",
        }
    }
}

/// The result for one token of a batch, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestResult {
    /// The token's `jti` when it could be read.
    pub jti: Option<String>,
    pub outcome: Result<IngestStatus, Rejection>,
    /// The token's entry in the ledger's hash chain (the original entry for a duplicate);
    /// `None` when it was refused.
    pub entry: Option<ChainEntry>,
    /// Refused only because the rest of its request was (see [`Atomicity`]).
    pub withheld: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which tokens of one request are stored only together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atomicity {
    /// Each token on its own (a plain batch).
    PerToken,
    /// The first `context` tokens are the caller's `Execution-Context` and the rest its body.
    /// A refused context stores nothing; a refused single body stores no context; in a batch
    /// the context is stored only if some body item succeeds. Nothing is written for a
    /// request that is refused.
    WithContext { context: usize, single_body: bool },
}

impl Atomicity {
    /// Why nothing of the request may be stored, given each token's outcome before the
    /// append: the first refused context token, or a refused single body, or (batch) a body
    /// in which every item was refused. Tokens withheld with a refused request get the
    /// returned rejection as their outcome.
    fn refusal(self, outcomes: &[Result<IngestStatus, Rejection>]) -> Option<Rejection> {
        let Self::WithContext {
            context,
            single_body,
        } = self
        else {
            return None;
        };
        let (context, body) = outcomes.split_at(context.min(outcomes.len()));
        if let Some(refused) = context.iter().find_map(|o| o.as_ref().err()) {
            return Some(Rejection::new(
                refused.code,
                format!(
                    "not recorded: the Execution-Context was refused ({})",
                    refused.detail
                ),
            ));
        }
        if context.is_empty() || body.iter().any(|o| o.is_ok()) {
            return None;
        }
        let first = body.iter().find_map(|o| o.as_ref().err())?;
        Some(Rejection::new(
            first.code,
            if single_body {
                format!(
                    "not recorded: the body token was refused ({})",
                    first.detail
                )
            } else {
                "not recorded: every token of the batch was refused".to_string()
            },
        ))
    }
}

/// How many times a batch is checked again after losing a `jti` race inside the store.
const APPEND_ATTEMPTS: usize = 3;

/// Told of every token the ledger appends, after its transaction committed (cascade
/// detection listens here). Called on the ingest path: it must only hand the token on.
pub trait IngestObserver: Send + Sync {
    fn appended(&self, ect: &VerifiedEct);
}

/// Verifies and records ECTs.
pub struct Ledger {
    store: Arc<dyn Store>,
    /// Appends through group commit (see [`group`]).
    appender: group::GroupAppender,
    verifier: Arc<Verifier>,
    clock_skew_s: i64,
    observer: Option<Arc<dyn IngestObserver>>,
    /// Unwind's own issuer id: its evidence may still be recorded in a terminated workflow.
    own_issuer: Option<String>,
}

impl Ledger {
    pub fn new(store: Arc<dyn Store>, verifier: Arc<Verifier>, clock_skew_s: i64) -> Self {
        Self {
            appender: group::GroupAppender::new(store.clone()),
            store,
            verifier,
            clock_skew_s,
            observer: None,
            own_issuer: None,
        }
    }

    /// Lets tokens of `issuer` (the coordinator) into workflows a rollback has terminated.
    pub fn with_own_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.own_issuer = Some(issuer.into());
        self
    }

    /// Tells `observer` of every appended token.
    pub fn with_observer(mut self, observer: Arc<dyn IngestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Ingests a batch; one result per token, in input order.
    pub async fn ingest(&self, tokens: &[String]) -> Result<Vec<IngestResult>, LedgerError> {
        self.ingest_request(tokens, Atomicity::PerToken).await
    }

    /// Ingests the tokens of one request, storing together what `atomicity` says; one result
    /// per token, in input order. A token withheld because the rest of its request was
    /// refused is refused too (`withheld`); a refused `Execution-Context` token keeps its own
    /// refusal.
    pub async fn ingest_request(
        &self,
        tokens: &[String],
        atomicity: Atomicity,
    ) -> Result<Vec<IngestResult>, LedgerError> {
        let started = Instant::now();
        let now = chrono::Utc::now().timestamp();
        let verified = self.verifier.verify_batch(tokens, now).await;
        let results = self.ingest_checked(verified, atomicity).await?;
        for result in &results {
            let label = match &result.outcome {
                Ok(status) => status.as_str(),
                Err(rejection) => rejection.code.as_str(),
            };
            metrics::counter!("unwind_ect_ingest_total", "result" => label).increment(1);
        }
        metrics::histogram!("unwind_ect_ingest_batch_seconds").record(started.elapsed());
        Ok(results)
    }

    /// Ingests tokens that already went through verification (refusals pass through).
    pub async fn ingest_verified(
        &self,
        verified: Vec<Result<VerifiedEct, Rejection>>,
    ) -> Result<Vec<IngestResult>, LedgerError> {
        self.ingest_checked(verified, Atomicity::PerToken).await
    }

    async fn ingest_checked(
        &self,
        verified: Vec<Result<VerifiedEct, Rejection>>,
        atomicity: Atomicity,
    ) -> Result<Vec<IngestResult>, LedgerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.check_and_append(&verified, atomicity).await {
                Err(LedgerError::Store(StoreError::JtiConflict(jti)))
                    if attempt < APPEND_ATTEMPTS =>
                {
                    tracing::debug!(%jti, attempt, "lost a jti race; checking the batch again");
                }
                other => return other,
            }
        }
    }

    async fn check_and_append(
        &self,
        verified: &[Result<VerifiedEct, Rejection>],
        atomicity: Atomicity,
    ) -> Result<Vec<IngestResult>, LedgerError> {
        let mut results: Vec<IngestResult> = verified
            .iter()
            .map(|v| IngestResult {
                jti: v.as_ref().ok().map(|e| e.jti.clone()),
                outcome: match v {
                    Ok(_) => Ok(IngestStatus::Created),
                    Err(rejection) => Err(rejection.clone()),
                },
                entry: None,
                withheld: false,
            })
            .collect();

        // One candidate per jti: a repeat of the same token is a duplicate of the first, a
        // repeat with other content conflicts with it.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut candidates: Vec<usize> = Vec::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for (i, v) in verified.iter().enumerate() {
            let Ok(ect) = v else { continue };
            match first_of.get(ect.jti.as_str()) {
                None => {
                    first_of.insert(&ect.jti, i);
                    candidates.push(i);
                }
                Some(&first) => repeats.push((i, first)),
            }
        }
        let ect = |i: usize| verified[i].as_ref().ok();

        let items: Vec<(String, Vec<String>)> = candidates
            .iter()
            .filter_map(|&i| ect(i).map(|e| (e.jti.clone(), e.parents.clone())))
            .collect();
        let order = order_batch(&items);
        for &k in &order.cyclic {
            results[candidates[k]].outcome = Err(Rejection::new(
                RejectCode::Cycle,
                "the token's parents form a cycle inside the batch",
            ));
        }

        // Everything the checks may need from the ledger, in one query.
        let mut wanted: Vec<String> = Vec::new();
        for &i in &candidates {
            if let Some(e) = ect(i) {
                wanted.push(e.jti.clone());
                wanted.extend(e.parents.iter().cloned());
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let stored: HashMap<String, EctMeta> = self
            .store
            .find_meta(&wanted)
            .await?
            .into_iter()
            .map(|m| (m.jti.clone(), m))
            .collect();

        // Workflows that a completed full_workflow rollback ended take no more agent tokens.
        let mut wids: Vec<String> = candidates
            .iter()
            .filter_map(|&i| ect(i))
            .filter(|e| Some(e.iss.as_str()) != self.own_issuer.as_deref())
            .filter_map(|e| e.wid.clone())
            .collect();
        wids.sort_unstable();
        wids.dedup();
        let terminated: HashSet<String> = self
            .store
            .terminated_workflows(&wids)
            .await?
            .into_iter()
            .collect();

        // Parents accepted earlier in this batch.
        let mut accepted: HashMap<&str, Parent<'_>> = HashMap::new();
        let mut to_append: Vec<(usize, NewEct)> = Vec::new();
        let mut duplicates: Vec<usize> = Vec::new();
        for &k in &order.order {
            let i = candidates[k];
            let Some(e) = ect(i) else { continue };
            match self.check_rules(e, &stored, &accepted, &terminated) {
                Ok(Some(IngestStatus::Duplicate)) => {
                    results[i].outcome = Ok(IngestStatus::Duplicate);
                    duplicates.push(i);
                    // A duplicate is in the ledger: children later in the batch may use it.
                }
                Ok(_) => {
                    accepted.insert(
                        &e.jti,
                        Parent {
                            wid: e.wid.as_deref(),
                            iss: &e.iss,
                            iat: e.iat,
                        },
                    );
                    to_append.push((i, new_ect(e)));
                }
                Err(rejection) => results[i].outcome = Err(rejection),
            }
        }

        // Repeats inside the batch take their first's outcome, so the request's refusal is
        // decided on what the checks said of each token before anything is written.
        let mut before_append: Vec<Result<IngestStatus, Rejection>> =
            results.iter().map(|r| r.outcome.clone()).collect();
        for &(i, first) in &repeats {
            if let (Some(e), Some(f)) = (ect(i), ect(first)) {
                before_append[i] = repeat_outcome(e, f, &before_append[first]);
            }
        }
        if let Some(refusal) = atomicity.refusal(&before_append) {
            for (i, _) in to_append.drain(..) {
                results[i].outcome = Err(refusal.clone());
                results[i].withheld = true;
            }
        }

        if !to_append.is_empty() {
            let (indices, batch): (Vec<usize>, Vec<NewEct>) = to_append.into_iter().unzip();
            let outcomes = self.appender.append(batch).await?;
            for (&i, (outcome, entry)) in indices.iter().zip(outcomes) {
                results[i].outcome = Ok(match outcome {
                    InsertOutcome::Created => IngestStatus::Created,
                    InsertOutcome::Duplicate => IngestStatus::Duplicate,
                });
                results[i].entry = Some(entry);
                if let (InsertOutcome::Created, Some(observer), Some(e)) =
                    (outcome, &self.observer, ect(i))
                {
                    observer.appended(e);
                }
            }
        }

        // Duplicates of stored tokens answer with the original entry.
        if !duplicates.is_empty() {
            let jtis: Vec<String> = duplicates
                .iter()
                .filter_map(|&i| results[i].jti.clone())
                .collect();
            let mut entries: HashMap<String, ChainEntry> = self
                .store
                .chain_entries(&jtis)
                .await?
                .into_iter()
                .map(|e| (e.jti.clone(), e))
                .collect();
            for i in duplicates {
                let jti = results[i].jti.as_deref().unwrap_or_default();
                results[i].entry = entries.remove(jti);
            }
        }

        for (i, first) in repeats {
            let (Some(e), Some(f)) = (ect(i), ect(first)) else {
                continue;
            };
            results[i].outcome = repeat_outcome(e, f, &results[first].outcome);
            results[i].withheld = results[first].withheld;
            results[i].entry = match results[i].outcome {
                Ok(_) => results[first].entry.clone(),
                Err(_) => None,
            };
        }
        Ok(results)
    }

    /// The DAG rules of spec/ect.md, in their order. `Ok(Some(Duplicate))` when the same token
    /// is already stored.
    fn check_rules(
        &self,
        e: &VerifiedEct,
        stored: &HashMap<String, EctMeta>,
        accepted: &HashMap<&str, Parent<'_>>,
        terminated: &HashSet<String>,
    ) -> Result<Option<IngestStatus>, Rejection> {
        if let Some(existing) = stored.get(&e.jti) {
            if existing.content_hash == e.content_hash {
                return Ok(Some(IngestStatus::Duplicate));
            }
            return Err(Rejection::new(
                RejectCode::JtiConflict,
                format!("jti {} is already recorded with other content", e.jti),
            ));
        }
        // Unwind's own evidence (the rollback's end, a breaker closing) is still recorded.
        if let Some(wid) = e.wid.as_ref().filter(|w| terminated.contains(*w))
            && Some(e.iss.as_str()) != self.own_issuer.as_deref()
        {
            return Err(Rejection::new(
                RejectCode::WorkflowTerminated,
                format!("workflow {wid} was ended by a completed full_workflow rollback"),
            ));
        }
        let mut parents = Vec::with_capacity(e.parents.len());
        for parent in &e.parents {
            let found = match stored.get(parent) {
                Some(meta) => Some(Parent {
                    wid: meta.wid.as_deref(),
                    iss: &meta.iss,
                    iat: meta.iat,
                }),
                None => accepted.get(parent.as_str()).copied(),
            };
            match found {
                Some(p) => parents.push((parent, p)),
                None => {
                    return Err(Rejection::new(
                        RejectCode::UnknownParent,
                        format!("parent {parent} is not in the ledger"),
                    ));
                }
            }
        }
        for (parent, Parent { wid, .. }) in &parents {
            if *wid != e.wid.as_deref() {
                return Err(Rejection::new(
                    RejectCode::WidMismatch,
                    format!(
                        "parent {parent} belongs to workflow {}, the token to {}",
                        wid.unwrap_or("(none)"),
                        e.wid.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
        }
        // A trust entry names whose nodes its agents may build on (`link_to`): joining another
        // team's workflow by naming its node would give standing over that team's checkpoints.
        if Some(e.iss.as_str()) != self.own_issuer.as_deref() {
            let trust = self.verifier.trust();
            for (parent, Parent { iss, .. }) in &parents {
                if Some(*iss) == self.own_issuer.as_deref() {
                    continue;
                }
                if let Err(why) = trust.may_link(&e.iss, iss) {
                    return Err(Rejection::new(
                        RejectCode::ParentNotLinkable,
                        format!("parent {parent} was issued by {iss}: {why}"),
                    ));
                }
            }
        }
        for (parent, Parent { iat, .. }) in &parents {
            if *iat > e.iat.saturating_add(self.clock_skew_s) {
                return Err(Rejection::new(
                    RejectCode::ParentAfterChild,
                    format!(
                        "parent {parent} was issued at {iat}, after the token ({})",
                        e.iat
                    ),
                ));
            }
        }
        Ok(None)
    }
}

/// The outcome of a token whose `jti` came earlier in the batch (`first`): a duplicate of it,
/// or a conflict when the content differs.
fn repeat_outcome(
    e: &VerifiedEct,
    first: &VerifiedEct,
    first_outcome: &Result<IngestStatus, Rejection>,
) -> Result<IngestStatus, Rejection> {
    if e.content_hash != first.content_hash {
        return Err(Rejection::new(
            RejectCode::JtiConflict,
            format!(
                "jti {} appears earlier in the batch with other content",
                e.jti
            ),
        ));
    }
    match first_outcome {
        Ok(_) => Ok(IngestStatus::Duplicate),
        Err(rejection) => Err(rejection.clone()),
    }
}

/// What the DAG rules need of a parent, stored or accepted earlier in the batch.
#[derive(Debug, Clone, Copy)]
struct Parent<'a> {
    wid: Option<&'a str>,
    iss: &'a str,
    iat: i64,
}

/// The row to append for a verified token.
pub fn new_ect(e: &VerifiedEct) -> NewEct {
    NewEct {
        jti: e.jti.clone(),
        wid: e.wid.clone(),
        iss: e.iss.clone(),
        sub: e.sub.clone(),
        exec_act: e.exec_act.clone(),
        parents: e.parents.clone(),
        iat: e.iat,
        exp: e.exp,
        out_hash: e.out_hash.clone(),
        ext: e.ext.clone(),
        token: e.token.clone(),
        kid: e.header.kid.clone(),
        content_hash: e.content_hash.clone(),
    }
}
