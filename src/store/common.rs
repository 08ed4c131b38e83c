//! What both back ends share: row shapes and their conversion to the public types, the
//! preparation of an append batch, cursors and the migration check. Only the SQL dialect differs
//! between `postgres.rs` and `sqlite.rs`; everything that can be decided in Rust is decided here,
//! once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use sqlx::migrate::Migrator;

use super::{EctMeta, EctRecord, InsertOutcome, NewEct, StoreError, WorkflowSummary};
use crate::dag::DagNode;
use crate::ledger::chain::{self, ChainEntry, ChainHead};
use crate::rollback::model::{
    ALL_STATUSES, ActiveRollback, CreateContext, CreateDecision, CreateOutcome, Lease, NewRollback,
    RollbackRecord, RollbackStatus, StepError, StepRecord,
};

/// The value of `exec_act` that marks a checkpoint (cascade draft).
pub(crate) const CHECKPOINT: &str = "checkpoint";

/// The current time at the precision both databases keep (microseconds), so that what
/// `append` returns to callers and what a later read returns are equal.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Clamps a requested page size to `1..=MAX_LIMIT`.
pub(crate) fn page_size(limit: u32) -> i64 {
    i64::from(limit.clamp(1, super::MAX_LIMIT))
}

/// Encodes the position after which the next page starts.
pub(crate) fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(seq.to_string())
}

/// Decodes a cursor made by [`encode_cursor`]; anything else is [`StoreError::BadCursor`].
pub(crate) fn decode_cursor(cursor: &str) -> Result<i64, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| StoreError::BadCursor)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StoreError::BadCursor);
    }
    text.parse::<i64>().map_err(|_| StoreError::BadCursor)
}

/// Turns `limit + 1` fetched rows into a page: the extra row only says that more exist.
pub(crate) fn into_page<R, T>(
    mut rows: Vec<R>,
    limit: i64,
    seq_of: impl Fn(&R) -> i64,
    convert: impl Fn(R) -> Result<T, StoreError>,
) -> Result<super::Page<T>, StoreError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(seq_of(r)))
    } else {
        None
    };
    let items = rows.into_iter().map(convert).collect::<Result<_, _>>()?;
    Ok(super::Page { items, next_cursor })
}

fn parse_object(column: &str, jti: &str, text: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(StoreError::Corrupt(format!(
            "{column} of {jti} is not a JSON object"
        ))),
        Err(e) => Err(StoreError::Corrupt(format!("{column} of {jti}: {e}"))),
    }
}

fn parse_parents(jti: &str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str::<Vec<String>>(text)
        .map_err(|e| StoreError::Corrupt(format!("parents of {jti}: {e}")))
}

fn to_json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

/// One `ects` row as selected by both back ends (JSON columns as text).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EctRow {
    pub seq: i64,
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub sub: Option<String>,
    pub exec_act: String,
    pub parents: String,
    pub iat: i64,
    pub exp: i64,
    pub out_hash: Option<String>,
    pub ext: String,
    pub token: String,
    pub kid: String,
    pub content_hash: String,
    pub received_at: DateTime<Utc>,
}

impl EctRow {
    pub(crate) fn into_record(self) -> Result<EctRecord, StoreError> {
        let parents = parse_parents(&self.jti, &self.parents)?;
        let ext = parse_object("ext", &self.jti, &self.ext)?;
        // The claims are the token's payload: stored once, as the signed bytes.
        let claims = match crate::ect::jws::decode_unverified(&self.token) {
            Ok((_, serde_json::Value::Object(claims))) => claims,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "{}: stored token does not decode",
                    self.jti
                )));
            }
        };
        Ok(EctRecord {
            seq: self.seq,
            jti: self.jti,
            wid: self.wid,
            iss: self.iss,
            sub: self.sub,
            exec_act: self.exec_act,
            parents,
            iat: self.iat,
            exp: self.exp,
            out_hash: self.out_hash,
            ext,
            claims,
            token: self.token,
            kid: self.kid,
            content_hash: self.content_hash,
            received_at: self.received_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MetaRow {
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub iat: i64,
    pub content_hash: String,
}

impl From<MetaRow> for EctMeta {
    fn from(r: MetaRow) -> Self {
        EctMeta {
            jti: r.jti,
            wid: r.wid,
            iss: r.iss,
            iat: r.iat,
            content_hash: r.content_hash,
        }
    }
}

/// The select list and join of [`Store::workflow_nodes`](super::Store::workflow_nodes): the
/// stored token of every chained row (`e` is `ects`). Rows without a chain entry are not read.
pub(crate) const NODE_SOURCE: &str =
    "SELECT e.jti, e.token FROM ects e JOIN ledger_chain c ON c.jti = e.jti";

/// One chained row of a workflow: what the graph needs is read from the token itself.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DagNodeRow {
    pub jti: String,
    pub token: String,
}

impl DagNodeRow {
    /// The node as the token states it, or `None` (logged) when the row does not match its
    /// token: a token that does not decode, names another `jti`, or belongs to another
    /// workflow than `wid` (the row's columns were edited). Only the signed bytes decide what
    /// a rollback calls and whom it reaches.
    pub(crate) fn into_node(self, wid: Option<&str>) -> Option<DagNode> {
        let ect = match chain::token_ect(&self.token) {
            Ok(ect) => ect,
            Err(e) => {
                tracing::warn!(jti = %self.jti, error = %e, "stored token does not decode; node left out");
                return None;
            }
        };
        if ect.jti != self.jti || ect.wid.as_deref() != wid {
            tracing::warn!(
                row = %self.jti,
                token = %ect.jti,
                "a ledger row does not match its token; node left out"
            );
            return None;
        }
        let ext = (ect.exec_act == CHECKPOINT).then_some(ect.ext);
        Some(DagNode {
            jti: ect.jti,
            iss: ect.iss,
            exec_act: ect.exec_act,
            iat: ect.iat,
            parents: ect.parents,
            ext,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct WorkflowRow {
    pub seq: i64,
    pub wid: String,
    pub nodes: i64,
    pub agents: i64,
    pub checkpoints: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl From<WorkflowRow> for WorkflowSummary {
    fn from(r: WorkflowRow) -> Self {
        WorkflowSummary {
            wid: r.wid,
            nodes: r.nodes,
            agents: r.agents,
            checkpoints: r.checkpoints,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
        }
    }
}

/// A batch token with its JSON columns already encoded.
pub(crate) struct EncodedEct<'a> {
    pub ect: &'a NewEct,
    pub parents: String,
    pub ext: String,
}

pub(crate) fn encode_batch(batch: &[NewEct]) -> Result<Vec<EncodedEct<'_>>, StoreError> {
    batch
        .iter()
        .map(|ect| {
            Ok(EncodedEct {
                ect,
                parents: to_json(&ect.parents)?,
                ext: to_json(&ect.ext)?,
            })
        })
        .collect()
}

/// Decides the outcome of every token of a batch once the insert has run: `created` holds the
/// jtis the insert wrote, `stored` the content hashes of the others as found in the ledger.
/// The first token (in input order) whose stored hash differs is a conflict.
pub(crate) fn outcomes(
    batch: &[NewEct],
    created: &HashSet<String>,
    stored: &HashMap<String, String>,
) -> Result<Vec<InsertOutcome>, StoreError> {
    batch
        .iter()
        .map(|ect| {
            if created.contains(&ect.jti) {
                return Ok(InsertOutcome::Created);
            }
            match stored.get(&ect.jti) {
                Some(hash) if *hash == ect.content_hash => Ok(InsertOutcome::Duplicate),
                Some(_) => Err(StoreError::JtiConflict(ect.jti.clone())),
                // Not inserted yet not found: under READ COMMITTED / a single writer this cannot
                // happen; refuse rather than report a state we did not observe.
                None => Err(StoreError::Corrupt(format!(
                    "jti {} was neither inserted nor found",
                    ect.jti
                ))),
            }
        })
        .collect()
}

/// Per-workflow changes caused by the created rows of a batch.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// (parent, child, wid), distinct.
    pub edges: Vec<(String, String, Option<String>)>,
    /// wid -> (nodes, checkpoints) added, in sorted wid order (a fixed lock order on PostgreSQL,
    /// so that concurrent batches touching the same workflows cannot deadlock).
    pub workflows: BTreeMap<String, (i64, i64)>,
    /// (wid, iss), sorted for the same reason.
    pub agents: BTreeSet<(String, String)>,
}

pub(crate) fn derive(batch: &[NewEct], created: &HashSet<String>) -> Derived {
    let mut d = Derived::default();
    let mut seen_edges = HashSet::new();
    for ect in batch.iter().filter(|e| created.contains(&e.jti)) {
        for parent in &ect.parents {
            if seen_edges.insert((parent.as_str(), ect.jti.as_str())) {
                d.edges
                    .push((parent.clone(), ect.jti.clone(), ect.wid.clone()));
            }
        }
        if let Some(wid) = &ect.wid {
            let entry = d.workflows.entry(wid.clone()).or_default();
            entry.0 += 1;
            if ect.exec_act == CHECKPOINT {
                entry.1 += 1;
            }
            d.agents.insert((wid.clone(), ect.iss.clone()));
        }
    }
    d
}

/// One row of `_sqlx_migrations`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AppliedRow {
    pub version: i64,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// Ok when every (up) migration embedded in this build is recorded as applied successfully,
/// with the same checksum.
pub(crate) fn check_applied(migrator: &Migrator, applied: &[AppliedRow]) -> Result<(), StoreError> {
    let by_version: HashMap<i64, &AppliedRow> = applied.iter().map(|a| (a.version, a)).collect();
    for m in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        match by_version.get(&m.version) {
            None => {
                return Err(StoreError::NotMigrated(format!(
                    "migration {} ({}) is not applied",
                    m.version, m.description
                )));
            }
            Some(a) if !a.success => {
                return Err(StoreError::NotMigrated(format!(
                    "migration {} ({}) failed",
                    m.version, m.description
                )));
            }
            Some(a) if a.checksum != *m.checksum => {
                return Err(StoreError::NotMigrated(format!(
                    "migration {} ({}) was applied with other content",
                    m.version, m.description
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

// ---- Rollbacks ----

/// Statuses whose rollbacks a worker drives (claims pick only these).
pub(crate) const WORKABLE: [RollbackStatus; 3] = [
    RollbackStatus::Accepted,
    RollbackStatus::Preparing,
    RollbackStatus::Executing,
];

/// `'accepted', ...`: the non-terminal statuses as an SQL list, derived from the model so that
/// the queries cannot drift from [`RollbackStatus::is_terminal`]. Static strings only.
pub(crate) static ACTIVE_SQL: LazyLock<String> =
    LazyLock::new(|| sql_list(ALL_STATUSES.iter().copied().filter(|s| !s.is_terminal())));

/// The [`WORKABLE`] statuses as an SQL list.
pub(crate) static WORKABLE_SQL: LazyLock<String> =
    LazyLock::new(|| sql_list(WORKABLE.iter().copied()));

fn sql_list(statuses: impl Iterator<Item = RollbackStatus>) -> String {
    statuses
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A lease duration in microseconds, the unit both back ends add to their clock.
pub(crate) fn lease_micros(lease_for: std::time::Duration) -> Result<i64, StoreError> {
    i64::try_from(lease_for.as_micros())
        .map_err(|_| StoreError::Invalid(format!("lease duration {lease_for:?} is too long")))
}

/// `now + lease_for`, for the back end whose clock is the process clock.
pub(crate) fn lease_end(
    now: DateTime<Utc>,
    lease_for: std::time::Duration,
) -> Result<DateTime<Utc>, StoreError> {
    now.checked_add_signed(chrono::Duration::microseconds(lease_micros(lease_for)?))
        .ok_or_else(|| StoreError::Invalid(format!("lease duration {lease_for:?} is too long")))
}

/// The wire name of a snake_case serde enum (scope, statuses), as stored in TEXT columns.
fn enum_text<T: serde::Serialize + std::fmt::Debug>(value: &T) -> Result<String, StoreError> {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => Ok(s),
        _ => Err(StoreError::Invalid(format!("{value:?} has no text form"))),
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    column: &str,
    id: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_value(Value::String(text.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("{column} of {id}: unknown value {text:?}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    column: &str,
    id: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column} of {id}: {e}")))
}

fn to_u32(column: &str, id: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("{column} of {id} out of range: {value}")))
}

/// JSON text for a column. U+0000 is refused on both back ends alike: PostgreSQL's JSONB cannot
/// hold it, and a value one back end stores and the other refuses would make them differ.
fn json_column(column: &str, value: &impl serde::Serialize) -> Result<String, StoreError> {
    let value = serde_json::to_value(value)
        .map_err(|e| StoreError::Invalid(format!("{column}: cannot encode: {e}")))?;
    if has_nul(&value) {
        return Err(StoreError::Invalid(format!(
            "{column}: JSON text with U+0000 cannot be stored"
        )));
    }
    Ok(value.to_string())
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// One `rollbacks` row as selected by both back ends (JSON columns as text).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RollbackRow {
    pub seq: i64,
    pub rollback_id: String,
    pub wid: String,
    pub checkpoint_id: String,
    pub trigger_ect: Option<String>,
    pub scope: String,
    pub status: String,
    pub requested_by: String,
    pub reason: Option<String>,
    pub on_cannot_prepare: String,
    pub request_hash: String,
    pub plan: String,
    pub failed_agents: String,
    pub superseded_by: Option<String>,
    pub evidence_start: Option<String>,
    pub evidence_complete: Option<String>,
    pub result: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl RollbackRow {
    pub(crate) fn into_record(self) -> Result<RollbackRecord, StoreError> {
        let id = self.rollback_id.as_str();
        let status = RollbackStatus::parse(&self.status).ok_or_else(|| {
            StoreError::Corrupt(format!("status of {id}: unknown value {:?}", self.status))
        })?;
        Ok(RollbackRecord {
            scope: parse_enum("scope", id, &self.scope)?,
            status,
            on_cannot_prepare: parse_enum("on_cannot_prepare", id, &self.on_cannot_prepare)?,
            plan: parse_json("plan", id, &self.plan)?,
            failed_agents: parse_json("failed_agents", id, &self.failed_agents)?,
            result: parse_json("result", id, &self.result)?,
            rollback_id: self.rollback_id,
            wid: self.wid,
            checkpoint_id: self.checkpoint_id,
            trigger_ect: self.trigger_ect,
            requested_by: self.requested_by,
            reason: self.reason,
            request_hash: self.request_hash,
            superseded_by: self.superseded_by,
            evidence_start: self.evidence_start,
            evidence_complete: self.evidence_complete,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        })
    }
}

/// One `rollback_steps` row as selected by both back ends.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StepRow {
    pub rollback_id: String,
    pub checkpoint_id: String,
    pub agent: String,
    pub rollback_uri: Option<String>,
    pub rank: i64,
    pub critical: bool,
    pub reversible: bool,
    pub expired: bool,
    pub waits_for: String,
    pub prepare_status: String,
    pub execute_status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub response: Option<String>,
    pub reused_from: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl StepRow {
    pub(crate) fn into_step(self) -> Result<StepRecord, StoreError> {
        let id = format!("{} step {}", self.rollback_id, self.checkpoint_id);
        let error = match (self.error_code, self.error_detail) {
            (Some(code), Some(detail)) => Some(StepError { code, detail }),
            (None, None) => None,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "{id}: error code and detail must be set together"
                )));
            }
        };
        let response = match &self.response {
            Some(text) => Some(parse_json("response", &id, text)?),
            None => None,
        };
        Ok(StepRecord {
            rank: to_u32("rank", &id, self.rank)?,
            attempts: to_u32("attempts", &id, self.attempts)?,
            waits_for: parse_json("waits_for", &id, &self.waits_for)?,
            prepare_status: parse_enum("prepare_status", &id, &self.prepare_status)?,
            execute_status: parse_enum("execute_status", &id, &self.execute_status)?,
            error,
            response,
            rollback_id: self.rollback_id,
            checkpoint_id: self.checkpoint_id,
            agent: self.agent,
            rollback_uri: self.rollback_uri,
            critical: self.critical,
            reversible: self.reversible,
            expired: self.expired,
            next_attempt_at: self.next_attempt_at,
            reused_from: self.reused_from,
            updated_at: self.updated_at,
        })
    }
}

/// Converts step rows and puts them in the order of the contract (rank, then checkpoint id),
/// sorted here rather than in SQL so that both back ends agree whatever the collation.
pub(crate) fn into_steps(rows: Vec<StepRow>) -> Result<Vec<StepRecord>, StoreError> {
    let mut steps = rows
        .into_iter()
        .map(StepRow::into_step)
        .collect::<Result<Vec<_>, _>>()?;
    steps.sort_by(|a, b| {
        (a.rank, a.checkpoint_id.as_str()).cmp(&(b.rank, b.checkpoint_id.as_str()))
    });
    Ok(steps)
}

/// The active rollbacks of a workflow with their steps, in the order of `records`.
pub(crate) fn active_rollbacks(
    records: Vec<RollbackRecord>,
    steps: Vec<StepRow>,
) -> Result<Vec<ActiveRollback>, StoreError> {
    let mut by_rollback: HashMap<String, Vec<StepRecord>> = HashMap::new();
    for step in into_steps(steps)? {
        by_rollback
            .entry(step.rollback_id.clone())
            .or_default()
            .push(step);
    }
    Ok(records
        .into_iter()
        .map(|record| {
            let steps = by_rollback.remove(&record.rollback_id).unwrap_or_default();
            ActiveRollback { record, steps }
        })
        .collect())
}

/// The columns of a rollback that writes set, encoded.
pub(crate) struct EncodedRollback {
    pub scope: String,
    pub on_cannot_prepare: String,
    pub plan: String,
    pub failed_agents: String,
    pub result: String,
}

pub(crate) fn encode_rollback(record: &RollbackRecord) -> Result<EncodedRollback, StoreError> {
    Ok(EncodedRollback {
        scope: enum_text(&record.scope)?,
        on_cannot_prepare: enum_text(&record.on_cannot_prepare)?,
        plan: json_column("plan", &record.plan)?,
        failed_agents: json_column("failed_agents", &record.failed_agents)?,
        result: result_column(&record.result)?,
    })
}

/// The `result` column's text.
pub(crate) fn result_column(result: &Value) -> Result<String, StoreError> {
    json_column("result", result)
}

/// The columns of a step, encoded.
pub(crate) struct EncodedStep<'a> {
    pub step: &'a StepRecord,
    pub rank: i64,
    pub attempts: i64,
    pub waits_for: String,
    pub prepare_status: String,
    pub execute_status: String,
    pub error_code: Option<&'a str>,
    pub error_detail: Option<&'a str>,
    pub response: Option<String>,
}

pub(crate) fn encode_step(step: &StepRecord) -> Result<EncodedStep<'_>, StoreError> {
    Ok(EncodedStep {
        step,
        rank: i64::from(step.rank),
        attempts: i64::from(step.attempts),
        waits_for: json_column("waits_for", &step.waits_for)?,
        prepare_status: enum_text(&step.prepare_status)?,
        execute_status: enum_text(&step.execute_status)?,
        error_code: step.error.as_ref().map(|e| e.code.as_str()),
        error_detail: step.error.as_ref().map(|e| e.detail.as_str()),
        response: step
            .response
            .as_ref()
            .map(|r| json_column("response", r))
            .transpose()?,
    })
}

/// A new rollback, encoded before its transaction starts (so that a value that cannot be stored
/// fails before anything is locked). Steps in checkpoint order, with their duplicates refused.
pub(crate) struct EncodedNew<'a> {
    pub rollback: EncodedRollback,
    pub steps: Vec<EncodedStep<'a>>,
}

pub(crate) fn encode_new(new: &NewRollback) -> Result<EncodedNew<'_>, StoreError> {
    let rollback = encode_rollback(&new.record)?;
    let mut steps = new
        .steps
        .iter()
        .map(encode_step)
        .collect::<Result<Vec<_>, _>>()?;
    steps.sort_by(|a, b| a.step.checkpoint_id.cmp(&b.step.checkpoint_id));
    if let Some(w) = steps
        .windows(2)
        .find(|w| w[0].step.checkpoint_id == w[1].step.checkpoint_id)
    {
        return Err(StoreError::Invalid(format!(
            "checkpoint {} appears twice in rollback {}",
            w[0].step.checkpoint_id, new.record.rollback_id
        )));
    }
    Ok(EncodedNew { rollback, steps })
}

/// What a transaction of `create_rollback` does once `decide` has answered.
// Short-lived, one per request: boxing the answer would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Resolution {
    /// Nothing to write: answer this (boxed: a record is large beside a list of ids).
    Answer(Box<CreateOutcome>),
    /// Insert the new rollback and mark these (sorted, distinct: the lock order) as superseded.
    Insert { supersede: Vec<String> },
}

/// Checks a decision against the context it was taken on. Only rollbacks the context lists as
/// active can be superseded (other ids are ignored: they are not the workflow's to take over);
/// a decision that contradicts the context (replaying a rollback that does not exist, inserting
/// over an existing id) is refused rather than half-applied.
pub(crate) fn resolve(
    ctx: &CreateContext,
    new_id: &str,
    decision: CreateDecision,
) -> Result<Resolution, StoreError> {
    match decision {
        CreateDecision::Insert { supersede } => {
            if ctx.existing.is_some() {
                return Err(StoreError::Invalid(format!(
                    "rollback {new_id} exists; it cannot be inserted again"
                )));
            }
            let wanted: BTreeSet<String> = supersede.into_iter().collect();
            let supersede = ctx
                .active
                .iter()
                .map(|a| &a.record.rollback_id)
                .filter(|id| wanted.contains(*id) && *id != new_id)
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            Ok(Resolution::Insert { supersede })
        }
        CreateDecision::Replay => match &ctx.existing {
            Some(existing) => Ok(Resolution::Answer(Box::new(CreateOutcome::Replayed(
                existing.clone(),
            )))),
            None => Err(StoreError::Invalid(format!(
                "replay of rollback {new_id}, which does not exist"
            ))),
        },
        CreateDecision::IdempotencyMismatch => match &ctx.existing {
            Some(existing) => Ok(Resolution::Answer(Box::new(
                CreateOutcome::IdempotencyMismatch(existing.clone()),
            ))),
            None => Err(StoreError::Invalid(format!(
                "idempotency mismatch on rollback {new_id}, which does not exist"
            ))),
        },
        CreateDecision::Conflict {
            conflicting_rollback_id,
        } => Ok(Resolution::Answer(Box::new(CreateOutcome::Conflict {
            conflicting_rollback_id,
        }))),
    }
}

/// `result` with `members` merged in (a member of the same name is replaced). A stored `null`
/// counts as an empty object; any other non-object cannot be merged into.
pub(crate) fn merge_result(
    rollback_id: &str,
    current: Value,
    members: Map<String, Value>,
) -> Result<Value, StoreError> {
    let mut merged = match current {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => {
            return Err(StoreError::Corrupt(format!(
                "result of {rollback_id} is not a JSON object"
            )));
        }
    };
    merged.extend(members);
    Ok(Value::Object(merged))
}

/// A writer under a lease must write for the rollback the lease is on.
/// The steps of one [`Store::update_steps`](super::Store::update_steps) call, encoded, after
/// checking that each belongs to the leased rollback; `None` when there is nothing to write.
pub(crate) fn encode_steps<'a>(
    lease: &Lease,
    steps: &'a [StepRecord],
) -> Result<Option<Vec<EncodedStep<'a>>>, StoreError> {
    if steps.is_empty() {
        return Ok(None);
    }
    steps
        .iter()
        .map(|step| {
            check_lease_target(lease, &step.rollback_id)?;
            encode_step(step)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(crate) fn no_such_step(lease: &Lease, step: &EncodedStep<'_>) -> StoreError {
    StoreError::NoSuchStep {
        rollback_id: lease.rollback_id.clone(),
        checkpoint_id: step.step.checkpoint_id.clone(),
    }
}

pub(crate) fn check_lease_target(lease: &Lease, rollback_id: &str) -> Result<(), StoreError> {
    if lease.rollback_id == rollback_id {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "lease on {} used to write {rollback_id}",
            lease.rollback_id
        )))
    }
}

/// The fields of a claim as returned by the claiming statement.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub rollback_id: String,
    pub lease_owner: String,
    pub fence: i64,
    pub lease_until: DateTime<Utc>,
}

impl From<LeaseRow> for Lease {
    fn from(r: LeaseRow) -> Self {
        Lease {
            rollback_id: r.rollback_id,
            owner: r.lease_owner,
            fence: r.fence,
            until: r.lease_until,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        for seq in [0, 1, 42, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(seq)).ok(), Some(seq));
        }
    }

    #[test]
    fn status_lists_follow_the_model() {
        assert_eq!(
            *ACTIVE_SQL,
            "'accepted', 'preparing', 'executing', 'awaiting_decision'"
        );
        assert_eq!(*WORKABLE_SQL, "'accepted', 'preparing', 'executing'");
    }

    #[test]
    fn result_merge() {
        let members: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"b": 2, "c": 3})).unwrap_or_default();
        let merged = merge_result("r", serde_json::json!({"a": 1, "b": 1}), members.clone());
        assert_eq!(
            merged.ok(),
            Some(serde_json::json!({"a": 1, "b": 2, "c": 3}))
        );
        let from_null = merge_result("r", Value::Null, members.clone());
        assert_eq!(from_null.ok(), Some(Value::Object(members.clone())));
        assert!(matches!(
            merge_result("r", serde_json::json!([1]), members),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn nul_is_refused_anywhere_in_json() {
        for bad in [
            serde_json::json!("a\u{0}"),
            serde_json::json!({"k": ["x", "\u{0}"]}),
            serde_json::json!({"\u{0}": 1}),
        ] {
            assert!(matches!(
                json_column("c", &bad),
                Err(StoreError::Invalid(_))
            ));
        }
        // An escaped backslash followed by "u0000" is ordinary text.
        let fine = serde_json::json!({"k": "\\u0000"});
        assert!(json_column("c", &fine).is_ok());
    }

    #[test]
    fn bad_cursors() {
        for bad in [
            "",
            "!!",
            "LTE",
            "YWJj",
            "MTIz=",
            "OTIyMzM3MjAzNjg1NDc3NTgwOA",
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
    }
}

// ---- Hash chain (crate::ledger::chain) ----

/// Rows the chain step reads and writes per statement when it chains rows stored before the
/// chain existed.
pub(crate) const BACKFILL_PAGE: i64 = 10_000;

/// Selects chain entries with the hash before each: `c` is the entry, `p` the one before it.
pub(crate) const CHAIN_COLUMNS: &str = "c.seq, c.jti, c.chain_hash, p.chain_hash AS prev_hash \
     FROM ledger_chain c LEFT JOIN ledger_chain p ON p.seq = c.seq - 1";

/// [`crate::store::Store::chain_range`] with the dialect's two placeholders (after, limit).
pub(crate) fn chain_range_sql(after: &str, limit: &str) -> String {
    format!(
        "SELECT c.seq, c.jti, c.chain_hash, p.chain_hash AS prev_hash, e.token \
         FROM ledger_chain c LEFT JOIN ledger_chain p ON p.seq = c.seq - 1 \
         LEFT JOIN ects e ON e.jti = c.jti \
         WHERE c.seq > {after} ORDER BY c.seq LIMIT {limit}"
    )
}

/// The statements of [`crate::store::Store::ledger_tables`] (both dialects), after `ects`.
pub(crate) const TABLES_EDGES_SQL: &str = "SELECT parent, child, wid FROM ect_edges";
pub(crate) const TABLES_CHAIN_SQL: &str =
    "SELECT seq, jti, chain_hash FROM ledger_chain ORDER BY seq";
pub(crate) const TABLES_HEAD_SQL: &str =
    "SELECT seq, chain_hash, backfill FROM ledger_head WHERE id = 1";
pub(crate) const TABLES_WORKFLOWS_SQL: &str = "SELECT wid, nodes, checkpoints FROM workflows";
pub(crate) const TABLES_AGENTS_SQL: &str = "SELECT wid, iss FROM workflow_agents";

impl From<EctRow> for super::StoredEctRow {
    fn from(r: EctRow) -> Self {
        Self {
            seq: r.seq,
            jti: r.jti,
            wid: r.wid,
            iss: r.iss,
            sub: r.sub,
            exec_act: r.exec_act,
            parents: r.parents,
            iat: r.iat,
            exp: r.exp,
            out_hash: r.out_hash,
            ext: r.ext,
            token: r.token,
            kid: r.kid,
            content_hash: r.content_hash,
        }
    }
}

/// A `ledger_chain` row joined with its predecessor.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ChainRow {
    pub seq: i64,
    pub jti: String,
    pub chain_hash: String,
    pub prev_hash: Option<String>,
}

impl ChainRow {
    pub(crate) fn into_entry(self) -> Result<ChainEntry, StoreError> {
        let prev_hash = match (self.prev_hash, self.seq) {
            (Some(prev), _) => prev,
            (None, 1) => chain::GENESIS.to_string(),
            (None, seq) => {
                return Err(StoreError::Corrupt(format!(
                    "chain entry {seq} ({}) has no predecessor",
                    self.jti
                )));
            }
        };
        Ok(ChainEntry {
            seq: self.seq,
            jti: self.jti,
            prev_hash,
            chain_hash: self.chain_hash,
        })
    }
}

/// A [`ChainRow`] with its token.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ChainRowWithToken {
    #[sqlx(flatten)]
    pub entry: ChainRow,
    pub token: Option<String>,
}

impl ChainRowWithToken {
    pub(crate) fn into_pair(self) -> Result<(ChainEntry, Option<String>), StoreError> {
        Ok((self.entry.into_entry()?, self.token))
    }
}

/// The `ledger_head` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct HeadRow {
    pub seq: i64,
    pub chain_hash: String,
    pub backfill: bool,
}

impl HeadRow {
    pub(crate) fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            chain_hash: self.chain_hash.clone(),
        }
    }
}

/// Whether the one-time backfill may run: only while the flag set by the migration is up and
/// the chain is still empty. Once the chain has an entry the flag is ignored: set again by
/// hand, it would chain forged rows as if they had been stored before the chain.
pub(crate) fn backfill_allowed(row: &HeadRow, chain_has_entries: bool) -> bool {
    if row.backfill && chain_has_entries {
        tracing::warn!(
            head = row.seq,
            "ledger_head asks for a backfill but the chain exists; ignored (rows outside the \
             chain stay outside it: `unwind verify --live --database-url` lists them)"
        );
    }
    row.backfill && !chain_has_entries
}

/// Whether `ledger_chain` has a row (both dialects).
pub(crate) const CHAIN_HAS_ENTRIES_SQL: &str = "SELECT EXISTS (SELECT 1 FROM ledger_chain)";

/// Chains `items` (jti, SHA-256 of the token) after `head`, which moves to the last of them.
pub(crate) fn extend_chain(
    head: &mut ChainHead,
    items: &[(&str, &str)],
) -> Result<Vec<ChainEntry>, StoreError> {
    head.extend(items.iter().copied())
        .map_err(|e| StoreError::Corrupt(format!("chain: {e}")))
}

/// The tokens of a batch that were inserted, each once, in batch order (= ledger order): what
/// the chain step appends.
pub(crate) fn chain_items<'a>(
    batch: &'a [NewEct],
    created: &HashSet<String>,
) -> Vec<(&'a str, &'a str)> {
    let mut seen = HashSet::with_capacity(created.len());
    batch
        .iter()
        .filter(|e| created.contains(&e.jti) && seen.insert(e.jti.as_str()))
        .map(|e| (e.jti.as_str(), e.content_hash.as_str()))
        .collect()
}

/// Pairs each outcome with its token's chain entry (the original entry for a duplicate).
pub(crate) fn with_entries(
    batch: &[NewEct],
    outcomes: Vec<InsertOutcome>,
    entries: Vec<ChainEntry>,
) -> Result<Vec<(InsertOutcome, ChainEntry)>, StoreError> {
    let by_jti: HashMap<&str, &ChainEntry> = entries.iter().map(|e| (e.jti.as_str(), e)).collect();
    batch
        .iter()
        .zip(outcomes)
        .map(|(ect, outcome)| match by_jti.get(ect.jti.as_str()) {
            Some(entry) => Ok((outcome, (*entry).clone())),
            None => Err(StoreError::Corrupt(format!(
                "jti {} is stored but not chained",
                ect.jti
            ))),
        })
        .collect()
}

/// The body of `Store::ledger_tables` on a pooled connection `$conn`: the same queries on both
/// back ends (`ECT_COLUMNS`, `EctRow` and `HeadRow` are the calling back end's).
macro_rules! ledger_tables_on {
    ($conn:ident) => {{
        let ects: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects ORDER BY seq"
        )))
        .fetch_all(&mut *$conn)
        .await?;
        let head: HeadRow = sqlx::query_as(common::TABLES_HEAD_SQL)
            .fetch_one(&mut *$conn)
            .await?;
        Ok(LedgerTables {
            ects: ects.into_iter().map(Into::into).collect(),
            edges: sqlx::query_as(common::TABLES_EDGES_SQL)
                .fetch_all(&mut *$conn)
                .await?,
            chain: sqlx::query_as(common::TABLES_CHAIN_SQL)
                .fetch_all(&mut *$conn)
                .await?,
            head: (head.seq, head.chain_hash, head.backfill),
            workflows: sqlx::query_as(common::TABLES_WORKFLOWS_SQL)
                .fetch_all(&mut *$conn)
                .await?,
            agents: sqlx::query_as(common::TABLES_AGENTS_SQL)
                .fetch_all(&mut *$conn)
                .await?,
        })
    }};
}
pub(crate) use ledger_tables_on;
