//! `unwind verify --live --database-url URL`: the ledger's tables read directly and checked
//! against the chain. The chain covers only each token's bytes and position; everything else
//! the tables hold is derived from the tokens and must agree with them: the columns of `ects`,
//! the edges (`par`), the workflow summaries. A row outside the chain is a finding, whatever
//! its content.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::Reported;
use crate::ledger::chain;
use crate::store::{LedgerTables, StoredEctRow};

const CHECK: &str = "tables";

fn finding(out: &mut Vec<Reported>, jti: &str, detail: String) {
    out.push(Reported {
        check: CHECK,
        jti: jti.to_string(),
        detail,
    });
}

/// Every finding of the tables, in a fixed order: chain and head, rows, columns, edges,
/// workflows.
pub fn check(t: &LedgerTables) -> Vec<Reported> {
    let mut out = Vec::new();
    let rows: HashMap<&str, &StoredEctRow> = t.ects.iter().map(|r| (r.jti.as_str(), r)).collect();

    // The chain as stored, recomputed from the rows' tokens.
    let mut prev = chain::GENESIS.to_string();
    for (i, (seq, jti, hash)) in t.chain.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        if *seq != expected_seq {
            finding(
                &mut out,
                jti,
                format!("ledger_chain position {expected_seq} holds entry {seq}"),
            );
        }
        match rows.get(jti.as_str()) {
            None => finding(
                &mut out,
                jti,
                format!("chain entry {seq} has no row in ects"),
            ),
            Some(row) => match chain::next(&prev, &chain::token_hash(&row.token)) {
                Ok(h) if h == *hash => {}
                _ => finding(
                    &mut out,
                    jti,
                    format!("chain entry {seq} does not recompute from the stored token"),
                ),
            },
        }
        prev = hash.clone();
    }
    let (head_seq, head_hash, backfill) = &t.head;
    let last = t.chain.last();
    let empty = t.chain.is_empty() && *head_seq == 0 && head_hash == chain::GENESIS;
    let head_matches =
        *head_seq == t.chain.len() as i64 && last.map(|(_, _, h)| h) == Some(head_hash);
    if !head_matches && !empty {
        finding(
            &mut out,
            "-",
            format!(
                "ledger_head says entry {head_seq} with hash {head_hash}; ledger_chain has {} \
                 entries ending in {}",
                t.chain.len(),
                last.map(|(_, _, h)| h.as_str()).unwrap_or(chain::GENESIS)
            ),
        );
    }
    if *backfill && !t.chain.is_empty() {
        finding(
            &mut out,
            "-",
            "ledger_head asks for the one-time backfill although the chain exists".into(),
        );
    }

    // Rows: counted and placed by the chain, columns derived from the token.
    let chained: BTreeSet<&str> = t.chain.iter().map(|(_, j, _)| j.as_str()).collect();
    if t.ects.len() != t.chain.len() {
        finding(
            &mut out,
            "-",
            format!(
                "ects has {} rows, the chain {} entries",
                t.ects.len(),
                t.chain.len()
            ),
        );
    }
    let mut expected = Derived::default();
    for row in &t.ects {
        if !chained.contains(row.jti.as_str()) {
            finding(
                &mut out,
                &row.jti,
                format!("ects row {} is not in the chain", row.seq),
            );
            continue;
        }
        match chain::token_ect(&row.token) {
            Ok(ect) => {
                for detail in column_mismatches(row, &ect) {
                    finding(&mut out, &row.jti, detail);
                }
                expected.add(&ect);
            }
            Err(e) => finding(
                &mut out,
                &row.jti,
                format!("the stored token does not decode: {e}"),
            ),
        }
    }

    // Edges against `par`.
    let actual: BTreeSet<(String, String, Option<String>)> = t.edges.iter().cloned().collect();
    for (parent, child, wid) in actual.difference(&expected.edges) {
        finding(
            &mut out,
            child,
            format!(
                "edge {parent} -> {child} (wid {}) is not in any chained token's par",
                wid.as_deref().unwrap_or("none")
            ),
        );
    }
    for (parent, child, _) in expected.edges.difference(&actual) {
        finding(
            &mut out,
            child,
            format!("par names {parent}, but ect_edges has no edge {parent} -> {child}"),
        );
    }

    // Workflow summaries against the chained tokens.
    let stored: BTreeMap<&str, (i64, i64)> = t
        .workflows
        .iter()
        .map(|(w, n, c)| (w.as_str(), (*n, *c)))
        .collect();
    let wids: BTreeSet<&str> = stored
        .keys()
        .copied()
        .chain(expected.workflows.keys().map(String::as_str))
        .collect();
    for wid in wids {
        let have = stored.get(wid).copied();
        let want = expected.workflows.get(wid).copied();
        if have != want {
            finding(
                &mut out,
                "-",
                format!(
                    "workflow {wid}: stored (nodes, checkpoints) {}, the chained tokens give {}",
                    pair(have),
                    pair(want)
                ),
            );
        }
    }
    let agents: BTreeSet<(String, String)> = t.agents.iter().cloned().collect();
    for (wid, iss) in agents.symmetric_difference(&expected.agents) {
        let side = if agents.contains(&(wid.clone(), iss.clone())) {
            "is in workflow_agents but issued no chained token there"
        } else {
            "issued a chained token but is missing from workflow_agents"
        };
        finding(&mut out, "-", format!("workflow {wid}: agent {iss} {side}"));
    }
    out
}

fn pair(v: Option<(i64, i64)>) -> String {
    match v {
        Some((n, c)) => format!("({n}, {c})"),
        None => "none".into(),
    }
}

/// What the chained tokens say the derived tables hold.
#[derive(Default)]
struct Derived {
    edges: BTreeSet<(String, String, Option<String>)>,
    workflows: BTreeMap<String, (i64, i64)>,
    agents: BTreeSet<(String, String)>,
}

impl Derived {
    fn add(&mut self, ect: &crate::ect::VerifiedEct) {
        for p in &ect.parents {
            self.edges
                .insert((p.clone(), ect.jti.clone(), ect.wid.clone()));
        }
        if let Some(wid) = &ect.wid {
            let w = self.workflows.entry(wid.clone()).or_default();
            w.0 += 1;
            if ect.exec_act == crate::ect::claims::EXEC_ACT_CHECKPOINT {
                w.1 += 1;
            }
            self.agents.insert((wid.clone(), ect.iss.clone()));
        }
    }
}

/// The columns of `row` that differ from what its token states.
fn column_mismatches(row: &StoredEctRow, ect: &crate::ect::VerifiedEct) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |column: &str, stored: String, token: String| {
        if stored != token {
            out.push(format!(
                "column {column} is {stored}, the token says {token}"
            ));
        }
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".into());
    differ("jti", row.jti.clone(), ect.jti.clone());
    differ("wid", opt(&row.wid), opt(&ect.wid));
    differ("iss", row.iss.clone(), ect.iss.clone());
    differ("sub", opt(&row.sub), opt(&ect.sub));
    differ("exec_act", row.exec_act.clone(), ect.exec_act.clone());
    differ("iat", row.iat.to_string(), ect.iat.to_string());
    differ("exp", row.exp.to_string(), ect.exp.to_string());
    differ("out_hash", opt(&row.out_hash), opt(&ect.out_hash));
    differ("kid", row.kid.clone(), ect.header.kid.clone());
    differ(
        "content_hash",
        row.content_hash.clone(),
        chain::token_hash(&row.token),
    );
    let parents = serde_json::from_str::<Vec<String>>(&row.parents).ok();
    if parents.as_ref() != Some(&ect.parents) {
        out.push(format!(
            "column parents is {}, the token says {:?}",
            row.parents, ect.parents
        ));
    }
    let ext = serde_json::from_str::<Map<String, Value>>(&row.ext).ok();
    if ext.as_ref() != Some(&ect.ext) {
        out.push(format!(
            "column ext is {}, the token says {}",
            row.ext,
            Value::Object(ect.ext.clone())
        ));
    }
    out
}
