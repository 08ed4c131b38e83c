//! Idempotency and conflict precedence between rollbacks (design.md §7). Pure: the store calls
//! [`decide`] inside its per-workflow lock with what it read, and applies the answer.
//!
//! - The same `rollback_id` with the same request replays the stored rollback; with another
//!   request it is an idempotency mismatch.
//! - Two active rollbacks conflict when their step sets share a checkpoint. The broader scope
//!   wins (`full_workflow` > `sub_dag` > `single`); with equal scope the earlier request wins. A
//!   new request that loses is refused, naming the earliest rollback it loses to; one that beats
//!   every rollback it overlaps supersedes them all.
//! - A rollback already marked `superseded_by` another no longer holds its steps: the one that
//!   supersedes it does, and is itself in the active set.

use std::collections::HashSet;

use super::model::{ActiveRollback, CreateContext, CreateDecision, NewRollback};

/// The decision on `new` given what the store read under the workflow's lock.
pub fn decide(new: &NewRollback, ctx: &CreateContext) -> CreateDecision {
    if let Some(existing) = &ctx.existing {
        return if existing.request_hash == new.record.request_hash {
            CreateDecision::Replay
        } else {
            CreateDecision::IdempotencyMismatch
        };
    }
    let wanted: HashSet<&str> = new.steps.iter().map(|s| s.checkpoint_id.as_str()).collect();
    let mut overlapping: Vec<&ActiveRollback> = ctx
        .active
        .iter()
        .filter(|a| a.record.superseded_by.is_none() && !a.record.status.is_terminal())
        .filter(|a| {
            a.steps
                .iter()
                .any(|s| wanted.contains(s.checkpoint_id.as_str()))
        })
        .collect();
    // Earliest first, so a refusal names the rollback that has held the steps longest.
    overlapping.sort_by(|a, b| {
        (a.record.created_at, &a.record.rollback_id)
            .cmp(&(b.record.created_at, &b.record.rollback_id))
    });
    if let Some(winner) = overlapping
        .iter()
        .find(|a| a.record.scope >= new.record.scope)
    {
        return CreateDecision::Conflict {
            conflicting_rollback_id: winner.record.rollback_id.clone(),
        };
    }
    CreateDecision::Insert {
        supersede: overlapping
            .iter()
            .map(|a| a.record.rollback_id.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::rollback::model::*;
    use crate::rollback::planner::{Plan, Scope};

    fn step(id: &str, cp: &str) -> StepRecord {
        StepRecord {
            rollback_id: id.into(),
            checkpoint_id: cp.into(),
            agent: "spiffe://x/a".into(),
            rollback_uri: Some("https://a/rb".into()),
            rank: 0,
            critical: false,
            reversible: true,
            expired: false,
            waits_for: vec![],
            prepare_status: PrepareStatus::Pending,
            execute_status: ExecuteStatus::Pending,
            attempts: 0,
            next_attempt_at: None,
            error: None,
            response: None,
            reused_from: None,
            updated_at: Utc::now(),
        }
    }

    fn rollback(
        id: &str,
        scope: Scope,
        age_s: i64,
        hash: &str,
        cps: &[&str],
    ) -> (RollbackRecord, Vec<StepRecord>) {
        let created = Utc
            .timestamp_opt(1_800_000_000 - age_s, 0)
            .single()
            .unwrap_or_else(Utc::now);
        let record = RollbackRecord {
            rollback_id: id.into(),
            wid: "w".into(),
            checkpoint_id: cps[0].into(),
            trigger_ect: None,
            scope,
            status: RollbackStatus::Executing,
            requested_by: "operator:ops".into(),
            reason: None,
            on_cannot_prepare: OnCannotPrepare::Auto,
            request_hash: hash.into(),
            plan: Plan {
                wid: "w".into(),
                checkpoint_id: cps[0].into(),
                trigger_ect: None,
                scope,
                steps: vec![],
                critical_path: vec![],
            },
            failed_agents: vec![],
            superseded_by: None,
            evidence_start: None,
            evidence_complete: None,
            result: json!({}),
            created_at: created,
            updated_at: created + Duration::seconds(1),
            version: 1,
        };
        let steps = cps.iter().map(|c| step(id, c)).collect();
        (record, steps)
    }

    fn new(id: &str, scope: Scope, hash: &str, cps: &[&str]) -> NewRollback {
        let (record, steps) = rollback(id, scope, 0, hash, cps);
        NewRollback { record, steps }
    }

    fn active(list: &[(RollbackRecord, Vec<StepRecord>)]) -> CreateContext {
        CreateContext {
            existing: None,
            active: list
                .iter()
                .map(|(record, steps)| ActiveRollback {
                    record: record.clone(),
                    steps: steps.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn same_id_replays_or_mismatches() {
        let n = new("r1", Scope::SubDag, "h1", &["A"]);
        let (stored, _) = rollback("r1", Scope::SubDag, 10, "h1", &["A"]);
        let ctx = CreateContext {
            existing: Some(stored.clone()),
            active: vec![],
        };
        assert_eq!(decide(&n, &ctx), CreateDecision::Replay);
        let other = new("r1", Scope::Single, "h2", &["A"]);
        assert_eq!(decide(&other, &ctx), CreateDecision::IdempotencyMismatch);
    }

    #[test]
    fn disjoint_rollbacks_do_not_conflict() {
        let ctx = active(&[rollback("old", Scope::FullWorkflow, 10, "x", &["A", "B"])]);
        assert_eq!(
            decide(&new("n", Scope::Single, "y", &["C"]), &ctx),
            CreateDecision::Insert { supersede: vec![] }
        );
    }

    #[test]
    fn broader_scope_wins_either_way() {
        // Narrower newcomer loses to a broader active one.
        let ctx = active(&[rollback("broad", Scope::SubDag, 10, "x", &["A", "B"])]);
        assert_eq!(
            decide(&new("n", Scope::Single, "y", &["B"]), &ctx),
            CreateDecision::Conflict {
                conflicting_rollback_id: "broad".into()
            }
        );
        // Broader newcomer supersedes a narrower active one.
        let ctx = active(&[rollback("narrow", Scope::Single, 10, "x", &["B"])]);
        assert_eq!(
            decide(&new("n", Scope::FullWorkflow, "y", &["A", "B"]), &ctx),
            CreateDecision::Insert {
                supersede: vec!["narrow".into()]
            }
        );
    }

    #[test]
    fn equal_scope_the_earlier_wins() {
        let ctx = active(&[rollback("first", Scope::SubDag, 10, "x", &["B", "C"])]);
        assert_eq!(
            decide(&new("second", Scope::SubDag, "y", &["A", "B"]), &ctx),
            CreateDecision::Conflict {
                conflicting_rollback_id: "first".into()
            }
        );
    }

    #[test]
    fn a_newcomer_must_beat_every_overlapping_rollback() {
        let ctx = active(&[
            rollback("single-1", Scope::Single, 30, "x", &["B"]),
            rollback("sub", Scope::SubDag, 20, "x", &["C", "D"]),
            rollback("single-2", Scope::Single, 10, "x", &["E"]),
        ]);
        // sub_dag beats both singles but not the equal-scope sub_dag: refused, naming it.
        assert_eq!(
            decide(&new("n", Scope::SubDag, "y", &["B", "C", "E"]), &ctx),
            CreateDecision::Conflict {
                conflicting_rollback_id: "sub".into()
            }
        );
        // full_workflow beats all three, which it supersedes, earliest first.
        assert_eq!(
            decide(&new("n", Scope::FullWorkflow, "y", &["B", "C", "E"]), &ctx),
            CreateDecision::Insert {
                supersede: vec!["single-1".into(), "sub".into(), "single-2".into()]
            }
        );
    }

    #[test]
    fn refusals_name_the_earliest_winner() {
        let ctx = active(&[
            rollback("later", Scope::FullWorkflow, 5, "x", &["A"]),
            rollback("earlier", Scope::SubDag, 50, "x", &["A"]),
        ]);
        assert_eq!(
            decide(&new("n", Scope::Single, "y", &["A"]), &ctx),
            CreateDecision::Conflict {
                conflicting_rollback_id: "earlier".into()
            }
        );
    }

    #[test]
    fn superseded_and_terminal_rollbacks_hold_no_steps() {
        let (mut marked, steps) = rollback("marked", Scope::SubDag, 20, "x", &["A"]);
        marked.superseded_by = Some("full".into());
        let (mut done, done_steps) = rollback("done", Scope::FullWorkflow, 30, "x", &["A"]);
        done.status = RollbackStatus::Completed;
        let ctx = active(&[(marked, steps), (done, done_steps)]);
        assert_eq!(
            decide(&new("n", Scope::Single, "y", &["A"]), &ctx),
            CreateDecision::Insert { supersede: vec![] }
        );
    }
}
