//! What both back ends share: row shapes and their conversion to the public types, the
//! preparation of an append batch, cursors and the migration check. Only the SQL dialect differs
//! between `postgres.rs` and `sqlite.rs`; everything that can be decided in Rust is decided here,
//! once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use sqlx::migrate::Migrator;

use super::{EctMeta, EctRecord, InsertOutcome, NewEct, StoreError, WorkflowSummary};
use crate::dag::DagNode;

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
    pub iat: i64,
    pub content_hash: String,
}

impl From<MetaRow> for EctMeta {
    fn from(r: MetaRow) -> Self {
        EctMeta {
            jti: r.jti,
            wid: r.wid,
            iat: r.iat,
            content_hash: r.content_hash,
        }
    }
}

/// One node of a workflow; `ext` is selected only for checkpoints.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DagNodeRow {
    pub jti: String,
    pub iss: String,
    pub exec_act: String,
    pub iat: i64,
    pub parents: String,
    pub ext: Option<String>,
}

impl DagNodeRow {
    pub(crate) fn into_node(self) -> Result<DagNode, StoreError> {
        let parents = parse_parents(&self.jti, &self.parents)?;
        let ext = match &self.ext {
            Some(text) => Some(parse_object("ext", &self.jti, text)?),
            None => None,
        };
        Ok(DagNode {
            jti: self.jti,
            iss: self.iss,
            exec_act: self.exec_act,
            iat: self.iat,
            parents,
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
