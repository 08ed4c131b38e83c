//! The checks of `unwind verify`, one function each, run in the order of [`CHECKS`]. A check
//! reads the decoded [`Audit`] and returns its findings; adding a check is adding a function
//! and a line to the list.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;

use super::{Audit, AuditToken, KeySource, Reported};
use crate::ect::{CheckpointInfo, VerifiedEct};
use crate::rollback::model::RollbackStatus;

/// Something a check found wrong with one token (or a rollback, named by its id when no token
/// can be named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub jti: String,
    pub detail: String,
}

impl Finding {
    fn new(jti: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            jti: jti.into(),
            detail: detail.into(),
        }
    }
}

/// A named check.
pub struct Check {
    /// The name printed in front of each of its findings.
    pub name: &'static str,
    pub run: fn(&Audit) -> Vec<Finding>,
}

/// Every check, in the order they run and report.
pub const CHECKS: &[Check] = &[
    Check {
        name: "signature",
        run: signatures,
    },
    Check {
        name: "claims",
        run: claims,
    },
    Check {
        name: "unique_jti",
        run: unique_jti,
    },
    Check {
        name: "parents",
        run: parents,
    },
    Check {
        name: "acyclic",
        run: acyclic,
    },
    Check {
        name: "parent_order",
        run: parent_order,
    },
    Check {
        name: "evidence",
        run: evidence,
    },
    Check {
        name: "coordinator",
        run: coordinator,
    },
    Check {
        name: "chain",
        run: chain,
    },
];

/// Runs every check; findings in check order.
pub fn run(audit: &Audit) -> Vec<Reported> {
    CHECKS
        .iter()
        .flat_map(|check| {
            (check.run)(audit).into_iter().map(|f| Reported {
                check: check.name,
                jti: f.jti,
                detail: f.detail,
            })
        })
        .collect()
}

/// Every token is a compact JWS whose signature verifies with the key its `kid` names.
pub fn signatures(audit: &Audit) -> Vec<Finding> {
    let source = match audit.key_source {
        KeySource::File => "the file's keys",
        KeySource::Jwks => "the --jwks keys",
    };
    let mut out = Vec::new();
    for t in &audit.tokens {
        let (parsed, header) = match &t.parsed {
            Ok(p) => p,
            Err(r) => {
                out.push(Finding::new(t.jti(), format!("unusable token: {r}")));
                continue;
            }
        };
        let key = match audit.keys.get(&header.kid) {
            None => {
                out.push(Finding::new(
                    t.jti(),
                    format!("kid `{}` is not among {source}", header.kid),
                ));
                continue;
            }
            Some(Err(e)) => {
                out.push(Finding::new(
                    t.jti(),
                    format!("key `{}` cannot be used: {e}", header.kid),
                ));
                continue;
            }
            Some(Ok(key)) => key,
        };
        match jsonwebtoken::crypto::verify(
            &parsed.signature_b64,
            parsed.signing_input.as_bytes(),
            key,
            header.alg,
        ) {
            Ok(true) => {}
            Ok(false) => out.push(Finding::new(
                t.jti(),
                format!("signature does not verify with key `{}`", header.kid),
            )),
            Err(e) => out.push(Finding::new(
                t.jti(),
                format!(
                    "signature cannot be checked with key `{}` ({}): {e}",
                    header.kid, header.alg_name
                ),
            )),
        }
    }
    out
}

/// Claims are well-formed (the ledger's rules without a clock), name the export's workflow, and
/// match the `jti` listed beside them; checkpoints carry valid checkpoint fields.
pub fn claims(audit: &Audit) -> Vec<Finding> {
    let mut out = Vec::new();
    for t in &audit.tokens {
        let ect = match &t.ect {
            None => continue, // not decodable: the signature check reports it
            Some(Err(r)) => {
                out.push(Finding::new(t.jti(), r.to_string()));
                continue;
            }
            Some(Ok(ect)) => ect,
        };
        if ect.jti != t.listed_jti {
            out.push(Finding::new(
                &ect.jti,
                format!("listed in the file as `{}`", t.listed_jti),
            ));
        }
        if ect.wid.as_deref() != Some(audit.wid.as_str()) {
            out.push(Finding::new(
                &ect.jti,
                format!(
                    "wid is {}, not the export's {}",
                    ect.wid.as_deref().unwrap_or("absent"),
                    audit.wid
                ),
            ));
        }
        if ect.exec_act == crate::ect::claims::EXEC_ACT_CHECKPOINT
            && let Err(r) = CheckpointInfo::from_ext(&ect.ext)
        {
            out.push(Finding::new(&ect.jti, r.to_string()));
        }
    }
    out
}

/// No two tokens share a `jti`.
pub fn unique_jti(audit: &Audit) -> Vec<Finding> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in &audit.tokens {
        *count.entry(t.jti()).or_default() += 1;
    }
    let mut reported = HashSet::new();
    audit
        .tokens
        .iter()
        .filter(|t| count[t.jti()] > 1 && reported.insert(t.jti()))
        .map(|t| Finding::new(t.jti(), format!("appears {} times", count[t.jti()])))
        .collect()
}

/// The well-formed tokens by `jti` (the first of a repeated `jti`).
fn by_jti(audit: &Audit) -> HashMap<&str, &VerifiedEct> {
    let mut map = HashMap::new();
    for ect in audit.tokens.iter().filter_map(AuditToken::verified) {
        map.entry(ect.jti.as_str()).or_insert(ect);
    }
    map
}

/// Every parent is in the file, in the same workflow as its child.
pub fn parents(audit: &Audit) -> Vec<Finding> {
    let present: HashSet<&str> = audit.tokens.iter().map(AuditToken::jti).collect();
    let known = by_jti(audit);
    let mut out = Vec::new();
    for ect in audit.tokens.iter().filter_map(AuditToken::verified) {
        for p in &ect.parents {
            match known.get(p.as_str()) {
                Some(parent) if parent.wid != ect.wid => out.push(Finding::new(
                    &ect.jti,
                    format!(
                        "parent `{p}` is in workflow {}, the child in {}",
                        parent.wid.as_deref().unwrap_or("none"),
                        ect.wid.as_deref().unwrap_or("none")
                    ),
                )),
                Some(_) => {}
                None if present.contains(p.as_str()) => {} // present but unreadable: reported
                None => out.push(Finding::new(
                    &ect.jti,
                    format!("parent `{p}` is not in the export"),
                )),
            }
        }
    }
    out
}

/// No token is its own ancestor. Nodes left after peeling sources (Kahn) from both ends lie on
/// a cycle (or between two).
pub fn acyclic(audit: &Audit) -> Vec<Finding> {
    let nodes = by_jti(audit);
    let edges: Vec<(&str, &str)> = nodes
        .values()
        .flat_map(|ect| {
            ect.parents
                .iter()
                .filter(|p| nodes.contains_key(p.as_str()))
                .map(|p| (p.as_str(), ect.jti.as_str()))
        })
        .collect();
    let forward = peel(nodes.keys().copied().collect(), &edges);
    let reversed: Vec<(&str, &str)> = edges.iter().map(|&(a, b)| (b, a)).collect();
    let on_cycle = peel(forward, &reversed);
    // In file order, so the output is stable.
    let mut reported = HashSet::new();
    audit
        .tokens
        .iter()
        .map(AuditToken::jti)
        .filter(|j| on_cycle.contains(j) && reported.insert(*j))
        .map(|j| Finding::new(j, "is on a cycle of par links"))
        .collect()
}

/// Removes, repeatedly, the nodes with no incoming edge from another remaining node; returns
/// what is left.
fn peel<'a>(mut left: HashSet<&'a str>, edges: &[(&'a str, &'a str)]) -> HashSet<&'a str> {
    let mut indegree: HashMap<&str, usize> = left.iter().map(|n| (*n, 0)).collect();
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    for &(from, to) in edges {
        if left.contains(from) && left.contains(to) {
            *indegree.entry(to).or_default() += 1;
            out.entry(from).or_default().push(to);
        }
    }
    let mut queue: VecDeque<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    while let Some(n) = queue.pop_front() {
        left.remove(n);
        for &child in out.get(n).into_iter().flatten() {
            if let Some(d) = indegree.get_mut(child) {
                *d -= 1;
                if *d == 0 {
                    queue.push_back(child);
                }
            }
        }
    }
    left
}

/// No parent is issued after its child (beyond the tolerated clock skew).
pub fn parent_order(audit: &Audit) -> Vec<Finding> {
    let known = by_jti(audit);
    let mut out = Vec::new();
    for ect in audit.tokens.iter().filter_map(AuditToken::verified) {
        for p in &ect.parents {
            if let Some(parent) = known.get(p.as_str())
                && parent.iat > ect.iat.saturating_add(audit.clock_skew_s)
            {
                out.push(Finding::new(
                    &ect.jti,
                    format!(
                        "parent `{p}` was issued at {}, after its child (iat {}, skew {} s)",
                        parent.iat, ect.iat, audit.clock_skew_s
                    ),
                ));
            }
        }
    }
    out
}

fn ext_str<'a>(ect: &'a VerifiedEct, key: &str) -> Option<&'a str> {
    ect.ext.get(key).and_then(Value::as_str)
}

/// Every rollback that started has its `rollback_start` in the file, and every rollback in a
/// terminal state exactly one `rollback_complete` of the coordinator whose `cascade.status` is
/// that state (agents sign `rollback_complete` records of their own steps too; those do not
/// count).
pub fn evidence(audit: &Audit) -> Vec<Finding> {
    let known = by_jti(audit);
    let mut completes: HashMap<&str, Vec<&VerifiedEct>> = HashMap::new();
    for ect in audit.tokens.iter().filter_map(AuditToken::verified) {
        if ect.exec_act == "rollback_complete"
            && ect.iss == audit.coordinator_id
            && let Some(id) = ext_str(ect, "cascade.rollback_id")
        {
            completes.entry(id).or_default().push(ect);
        }
    }
    let mut out = Vec::new();
    for r in &audit.rollbacks {
        let id = r.rollback_id.as_str();
        let status = RollbackStatus::parse(&r.status);
        match &r.evidence.rollback_start {
            // A rollback not yet picked up by a worker has signed nothing yet.
            None if status == Some(RollbackStatus::Accepted) => {}
            None => out.push(Finding::new(
                id,
                format!("rollback {id} is {} but names no rollback_start", r.status),
            )),
            Some(start) => match known.get(start.as_str()) {
                None => out.push(Finding::new(
                    start,
                    format!("rollback_start of rollback {id} is missing from the export"),
                )),
                Some(ect)
                    if ect.exec_act != "rollback_start"
                        || ext_str(ect, "cascade.rollback_id") != Some(id) =>
                {
                    out.push(Finding::new(
                        start,
                        format!("is named as rollback {id}'s rollback_start but is not one"),
                    ));
                }
                Some(_) => {}
            },
        }
        if !status.is_some_and(RollbackStatus::is_terminal) {
            continue;
        }
        let found = completes.get(id).map(Vec::as_slice).unwrap_or_default();
        match found {
            [] => out.push(Finding::new(
                r.evidence.rollback_complete.as_deref().unwrap_or(id),
                format!(
                    "rollback {id} ended {} but its rollback_complete is missing from the export",
                    r.status
                ),
            )),
            [one] => {
                let signed = ext_str(one, "cascade.status");
                if signed != Some(r.status.as_str()) {
                    out.push(Finding::new(
                        &one.jti,
                        format!(
                            "cascade.status is {}, but rollback {id} is {}",
                            signed.unwrap_or("absent"),
                            r.status
                        ),
                    ));
                }
                if let Some(named) = &r.evidence.rollback_complete
                    && named != &one.jti
                {
                    out.push(Finding::new(
                        &one.jti,
                        format!("rollback {id} names {named} as its rollback_complete"),
                    ));
                }
            }
            many => {
                for ect in many {
                    out.push(Finding::new(
                        &ect.jti,
                        format!("rollback {id} has {} rollback_complete ECTs", many.len()),
                    ));
                }
            }
        }
    }
    out
}

/// The evidence each rollback names is the coordinator's (its `iss`), and whatever carries the
/// coordinator's `iss` is signed with a key the file names as the coordinator's.
pub fn coordinator(audit: &Audit) -> Vec<Finding> {
    let known = by_jti(audit);
    let mut out = Vec::new();
    for r in &audit.rollbacks {
        let named = [&r.evidence.rollback_start, &r.evidence.rollback_complete];
        for jti in named.into_iter().flatten() {
            if let Some(ect) = known.get(jti.as_str())
                && ect.iss != audit.coordinator_id
            {
                out.push(Finding::new(
                    jti,
                    format!(
                        "{} of rollback {} is issued by {}, not the coordinator {}",
                        ect.exec_act, r.rollback_id, ect.iss, audit.coordinator_id
                    ),
                ));
            }
        }
    }
    for ect in audit.tokens.iter().filter_map(AuditToken::verified) {
        if ect.iss == audit.coordinator_id && !audit.coordinator_kids.contains(&ect.header.kid) {
            out.push(Finding::new(
                &ect.jti,
                format!(
                    "signed with kid `{}`, which is not a key of the coordinator",
                    ect.header.kid
                ),
            ));
        }
    }
    out
}

/// Every token's hash-chain entry recomputes from the token and the previous hash
/// (`chain_hash = SHA-256(prev_hash || SHA-256(token))`), and where the export holds two
/// consecutive entries they link. Findings in chain order, so the first names the first broken
/// entry. Tokens are named by the jti listed beside them (the ledger row, whatever its token
/// now says). An export without any chain entry predates the chain: nothing to check.
pub fn chain(audit: &Audit) -> Vec<Finding> {
    if audit.tokens.iter().all(|t| t.chain.is_none()) {
        return Vec::new();
    }
    let mut out: Vec<(i64, Finding)> = Vec::new();
    let mut by_seq: HashMap<i64, &str> = HashMap::new();
    for t in &audit.tokens {
        let Some(entry) = &t.chain else {
            out.push((
                i64::MAX,
                Finding::new(t.listed_jti.as_str(), "no hash-chain entry"),
            ));
            continue;
        };
        if by_seq.insert(entry.seq, &entry.chain_hash).is_some() {
            out.push((
                entry.seq,
                Finding::new(
                    t.listed_jti.as_str(),
                    format!("chain entry {} is listed twice", entry.seq),
                ),
            ));
        }
        let token_hash = crate::ledger::chain::token_hash(&t.token);
        match crate::ledger::chain::next(&entry.prev_hash, &token_hash) {
            Ok(hash) if hash == entry.chain_hash => {}
            Ok(hash) => out.push((
                entry.seq,
                Finding::new(
                    t.listed_jti.as_str(),
                    format!(
                        "chain entry {} is broken: SHA-256(prev_hash || SHA-256(token)) is {hash}, \
                         the ledger says {}",
                        entry.seq, entry.chain_hash
                    ),
                ),
            )),
            Err(e) => out.push((
                entry.seq,
                Finding::new(
                    t.listed_jti.as_str(),
                    format!("chain entry {} is unusable: {e}", entry.seq),
                ),
            )),
        }
    }
    for t in &audit.tokens {
        let Some(entry) = &t.chain else { continue };
        let expected = match entry.seq {
            1 => Some(crate::ledger::chain::GENESIS),
            seq => by_seq.get(&(seq - 1)).copied(),
        };
        if let Some(expected) = expected.filter(|e| *e != entry.prev_hash) {
            out.push((
                entry.seq,
                Finding::new(
                    t.listed_jti.as_str(),
                    format!(
                        "chain entry {} does not follow entry {}: prev_hash {} is not {expected}",
                        entry.seq,
                        entry.seq - 1,
                        entry.prev_hash
                    ),
                ),
            ));
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    out.into_iter().map(|(_, f)| f).collect()
}
