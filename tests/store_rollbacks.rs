//! The rollback part of the store's contract (design.md §6, §7), checked against every configured
//! back end (SQLite always, PostgreSQL when `UNWIND_TEST_POSTGRES_URL` is set). Records are built
//! directly; the conflict rule is one written here, as the store only applies decisions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{DbKind, TestStore, test_stores};
use serde_json::{Map, Value, json};
use sqlx::Connection as _;
use unwind::rollback::model::{
    CreateContext, CreateDecision, CreateOutcome, NewRollback, RollbackFilter,
};
use unwind::rollback::{
    ExecuteStatus, Lease, OnCannotPrepare, Plan, PlannedStep, PrepareStatus, RollbackRecord,
    RollbackStatus, Scope, StepError, StepRecord,
};
use unwind::store::{Store, StoreError};

const LONG: Duration = Duration::from_secs(30);

// ---- builders ----

fn t(secs: i64, micros: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, micros * 1000)
        .single()
        .unwrap()
}

fn id(name: &str) -> String {
    format!("urn:uuid:{name}")
}

fn planned(cp: &str, rank: u32) -> PlannedStep {
    PlannedStep {
        checkpoint_id: cp.into(),
        agent: format!("spiffe://example.com/agent/{cp}"),
        rollback_uri: Some(format!("https://{cp}.example/.well-known/cascade/rollback")),
        rank,
        reversible: true,
        expired: false,
        critical: rank == 0,
        waits_for: Vec::new(),
    }
}

fn step_of(rollback_id: &str, p: &PlannedStep) -> StepRecord {
    StepRecord {
        rollback_id: rollback_id.into(),
        checkpoint_id: p.checkpoint_id.clone(),
        agent: p.agent.clone(),
        rollback_uri: p.rollback_uri.clone(),
        rank: p.rank,
        critical: p.critical,
        reversible: p.reversible,
        expired: p.expired,
        waits_for: p.waits_for.clone(),
        prepare_status: PrepareStatus::Pending,
        execute_status: ExecuteStatus::Pending,
        attempts: 0,
        next_attempt_at: None,
        error: None,
        response: None,
        reused_from: None,
        updated_at: t(0, 0),
    }
}

/// A new rollback of `wid` over the checkpoints `cps` (the first one is the one requested).
fn new_rb(name: &str, wid: &str, scope: Scope, cps: &[&str], hash: &str) -> NewRollback {
    let rollback_id = id(name);
    let steps: Vec<PlannedStep> = cps
        .iter()
        .enumerate()
        .map(|(i, cp)| planned(cp, i as u32))
        .collect();
    let plan = Plan {
        wid: wid.into(),
        checkpoint_id: cps.first().map(|c| c.to_string()).unwrap_or_default(),
        trigger_ect: None,
        scope,
        critical_path: cps.iter().take(1).map(|c| c.to_string()).collect(),
        steps: steps.clone(),
    };
    NewRollback {
        record: RollbackRecord {
            rollback_id: rollback_id.clone(),
            wid: wid.into(),
            checkpoint_id: plan.checkpoint_id.clone(),
            trigger_ect: None,
            scope,
            status: RollbackStatus::Accepted,
            requested_by: "operator:alice".into(),
            reason: None,
            on_cannot_prepare: OnCannotPrepare::Auto,
            request_hash: hash.into(),
            plan,
            failed_agents: Vec::new(),
            superseded_by: None,
            evidence_start: None,
            evidence_complete: None,
            result: json!({}),
            created_at: t(0, 0),
            updated_at: t(0, 0),
            version: 0,
        },
        steps: steps.iter().map(|p| step_of(&rollback_id, p)).collect(),
    }
}

/// Inserts unconditionally (no conflict rule) and returns the stored record.
async fn insert(store: &dyn Store, new: &NewRollback) -> RollbackRecord {
    let decide = |_: &CreateContext| CreateDecision::Insert {
        supersede: Vec::new(),
    };
    match store.create_rollback(new, &decide).await.unwrap() {
        CreateOutcome::Created(r) => r,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn get(store: &dyn Store, rollback_id: &str) -> (RollbackRecord, Vec<StepRecord>) {
    store
        .get_rollback(rollback_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{rollback_id} stored"))
}

/// A second store on the same database: another replica (PostgreSQL) or another process's
/// connections (SQLite).
async fn replica(ts: &TestStore) -> Arc<dyn Store> {
    unwind::store::connect(&ts.url).await.unwrap()
}

async fn raw_execute(ts: &TestStore, sql: &'static str) -> u64 {
    match ts.kind {
        DbKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&ts.url).await.unwrap();
            let r = sqlx::query(sql).execute(&mut c).await.unwrap();
            let _ = c.close().await;
            r.rows_affected()
        }
        DbKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(&ts.url).await.unwrap();
            let r = sqlx::query(sql).execute(&mut c).await.unwrap();
            let _ = c.close().await;
            r.rows_affected()
        }
    }
}

fn members(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

// ---- round trip ----

#[tokio::test]
async fn create_and_get_round_trip_every_field() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let mut new = new_rb("rt", "w1", Scope::SubDag, &["cp-b", "cp-a"], "h-rt");
        let r = &mut new.record;
        r.trigger_ect = Some("act-b1".into());
        r.reason = Some("agent b failed: «timeout» \"quoted\" \\ back".into());
        r.requested_by = "spiffe://example.com/agent/b".into();
        r.on_cannot_prepare = OnCannotPrepare::Escalate;
        r.plan.trigger_ect = Some("act-b1".into());
        r.plan.steps[1].waits_for = vec!["cp-b".into()];
        r.plan.steps[1].expired = true;
        r.plan.steps[1].rollback_uri = None;
        r.plan.critical_path = vec!["cp-a".into(), "cp-b".into()];
        r.failed_agents = vec!["spiffe://example.com/agent/x".into(), "é".into()];
        r.superseded_by = Some(id("later"));
        r.evidence_start = Some("ev-start".into());
        r.evidence_complete = Some("ev-complete".into());
        r.result = json!({
            "decision": "proceed_partial",
            "big": u64::MAX,
            "neg": i64::MIN,
            "floats": [0.1, 2.5, 1.0e300, -1.0e-7],
            "nested": {"z": null, "a": [true, false, "ünï"]},
        });
        new.steps[0].prepare_status = PrepareStatus::Prepared;
        new.steps[0].attempts = 3;
        new.steps[0].next_attempt_at = Some(t(60, 123_456));
        new.steps[0].error = Some(StepError {
            code: "agent_unreachable".into(),
            detail: "connect: refused".into(),
        });
        new.steps[0].response = Some(json!({"status": "prepared", "n": [1, 2.5]}));
        new.steps[0].reused_from = Some(id("older"));
        new.steps[1].execute_status = ExecuteStatus::Escalated;
        new.steps[1].reversible = false;
        new.steps[1].expired = true;
        new.steps[1].critical = true;
        new.steps[1].waits_for = vec!["cp-b".into()];
        new.steps[1].rollback_uri = None;
        new.steps[1].response = Some(Value::Null);

        let before = Utc::now() - chrono::Duration::seconds(5);
        let created = insert(s, &new).await;
        let after = Utc::now() + chrono::Duration::seconds(5);

        // The store owns status, version and the timestamps; everything else is as given.
        assert_eq!(created.status, RollbackStatus::Accepted, "{}", ts.name);
        assert_eq!(created.version, 1);
        assert_eq!(created.created_at, created.updated_at);
        assert!(created.created_at > before && created.created_at < after);
        let expected = RollbackRecord {
            created_at: created.created_at,
            updated_at: created.updated_at,
            version: 1,
            ..new.record.clone()
        };
        assert_eq!(created, expected, "{}", ts.name);

        let (stored, steps) = get(s, &new.record.rollback_id).await;
        assert_eq!(stored, created, "{}", ts.name);
        let mut expected_steps: Vec<StepRecord> = new
            .steps
            .iter()
            .map(|st| StepRecord {
                updated_at: created.created_at,
                ..st.clone()
            })
            .collect();
        expected_steps.sort_by_key(|st| (st.rank, st.checkpoint_id.clone()));
        assert_eq!(steps, expected_steps, "{}", ts.name);

        assert!(s.get_rollback(&id("absent")).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn leased_writes_round_trip_and_bump_version() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let new = new_rb("lw", "w1", Scope::SubDag, &["c1", "c2"], "h");
        let created = insert(s, &new).await;
        let lease = s
            .claim_rollback(&created.rollback_id, "worker-1", LONG)
            .await;
        let lease = lease.unwrap().expect("claimable");
        assert_eq!(lease.owner, "worker-1");
        assert_eq!(lease.fence, 1);
        let (after_claim, _) = get(s, &created.rollback_id).await;
        assert_eq!(after_claim.version, 2, "{}: a claim is a write", ts.name);

        let mut step = new.steps[1].clone();
        step.prepare_status = PrepareStatus::CannotPrepare;
        step.execute_status = ExecuteStatus::Skipped;
        step.attempts = 7;
        step.next_attempt_at = Some(t(3600, 999_999));
        step.error = Some(StepError {
            code: "cannot_prepare".into(),
            detail: "locked".into(),
        });
        step.response = Some(json!({"status": "cannot_prepare", "reason": "locked"}));
        step.reused_from = Some(id("other"));
        s.update_step(&lease, &step).await.unwrap();
        let (rec, steps) = get(s, &created.rollback_id).await;
        assert_eq!(rec.version, 3, "{}", ts.name);
        assert!(rec.updated_at >= after_claim.updated_at);
        let stored = steps.iter().find(|x| x.checkpoint_id == "c2").unwrap();
        assert!(stored.updated_at >= created.created_at);
        assert_eq!(
            *stored,
            StepRecord {
                updated_at: stored.updated_at,
                ..step.clone()
            },
            "{}",
            ts.name
        );
        // The other step is untouched.
        assert_eq!(
            steps
                .iter()
                .find(|x| x.checkpoint_id == "c1")
                .unwrap()
                .attempts,
            0
        );

        // Clearing fields works too.
        step.error = None;
        step.response = None;
        step.next_attempt_at = None;
        step.reused_from = None;
        s.update_step(&lease, &step).await.unwrap();
        let (_, steps) = get(s, &created.rollback_id).await;
        let stored = steps.iter().find(|x| x.checkpoint_id == "c2").unwrap();
        assert_eq!(
            (stored.error.clone(), stored.response.clone()),
            (None, None)
        );
        assert_eq!(
            (stored.next_attempt_at, stored.reused_from.clone()),
            (None, None)
        );

        let mut missing = step.clone();
        missing.checkpoint_id = "c9".into();
        assert!(matches!(
            s.update_step(&lease, &missing).await,
            Err(StoreError::NoSuchStep { .. })
        ));
        assert_eq!(
            get(s, &created.rollback_id).await.0.version,
            rec.version + 1
        );

        // Several steps in one write: all of them, one version bump; with one unknown
        // checkpoint among them, none.
        let version = get(s, &created.rollback_id).await.0.version;
        let (mut first, mut second) = (new.steps[0].clone(), new.steps[1].clone());
        first.attempts = 11;
        second.attempts = 12;
        s.update_steps(&lease, &[first.clone(), second.clone()])
            .await
            .unwrap();
        let (after_batch, steps) = get(s, &created.rollback_id).await;
        assert_eq!(after_batch.version, version + 1, "{}", ts.name);
        let attempts: Vec<u32> = steps.iter().map(|x| x.attempts).collect();
        assert_eq!(attempts, vec![11, 12], "{}", ts.name);
        first.attempts = 21;
        assert!(matches!(
            s.update_steps(&lease, &[first.clone(), missing.clone()])
                .await,
            Err(StoreError::NoSuchStep { .. })
        ));
        let (after_refusal, steps) = get(s, &created.rollback_id).await;
        assert_eq!(after_refusal.version, after_batch.version, "{}", ts.name);
        assert_eq!(
            steps[0].attempts, 11,
            "{}: half a batch was written",
            ts.name
        );
        s.update_steps(&lease, &[]).await.unwrap();
        let rec = get(s, &created.rollback_id).await.0;
        assert_eq!(rec.version, after_batch.version, "{}", ts.name);

        let mut changed = rec.clone();
        changed.status = RollbackStatus::Executing;
        changed.failed_agents = vec!["agent-x".into()];
        changed.evidence_start = Some("ev-1".into());
        changed.result = json!({"note": "executing"});
        let updated = s.update_rollback(&lease, &changed).await.unwrap();
        let (stored, _) = get(s, &created.rollback_id).await;
        assert_eq!(updated, stored);
        assert_eq!(stored.status, RollbackStatus::Executing);
        assert_eq!(stored.failed_agents, vec!["agent-x".to_string()]);
        assert_eq!(stored.evidence_start.as_deref(), Some("ev-1"));
        assert_eq!(stored.result, json!({"note": "executing"}));
        assert_eq!(stored.version, rec.version + 1, "{}", ts.name);

        // Values the database cannot hold are refused alike on both back ends.
        let mut nul = changed.clone();
        nul.result = json!({"x": "a\u{0}b"});
        assert!(matches!(
            s.update_rollback(&lease, &nul).await,
            Err(StoreError::Invalid(_))
        ));
        let mut other = changed.clone();
        other.rollback_id = id("not-leased");
        assert!(matches!(
            s.update_rollback(&lease, &other).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(get(s, &created.rollback_id).await.0, stored);
    }
}

// ---- lists ----

/// Every id of a listing, walking the pages and checking their shape.
async fn all_ids(store: &dyn Store, filter: &RollbackFilter, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_rollbacks(filter, cursor.as_deref(), limit)
            .await
            .unwrap();
        let size = limit.clamp(1, 1000) as usize;
        assert!(page.items.len() <= size);
        out.extend(page.items.iter().map(|r| r.rollback_id.clone()));
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.items.len(), size, "short page with a cursor");
                cursor = Some(c);
            }
            None => return out,
        }
    }
}

#[tokio::test]
async fn list_pages_oldest_first_with_filters() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let mut expected: Vec<(String, String, RollbackStatus)> = Vec::new();
        for i in 0..7 {
            let wid = if i % 3 == 2 { "w2" } else { "w1" };
            let name = format!("l{i}");
            // Ids not in insertion order, so that order by id would show.
            let name = format!("{}-{name}", 9 - i);
            let r = insert(s, &new_rb(&name, wid, Scope::Single, &["c"], "h")).await;
            let status = if i % 2 == 1 {
                s.transition_rollback(
                    &r.rollback_id,
                    RollbackStatus::Accepted,
                    RollbackStatus::Aborted,
                    Map::new(),
                )
                .await
                .unwrap()
                .unwrap()
                .status
            } else {
                RollbackStatus::Accepted
            };
            expected.push((r.rollback_id, wid.to_string(), status));
        }
        let filters = [
            RollbackFilter::default(),
            RollbackFilter {
                wid: Some("w1".into()),
                status: None,
            },
            RollbackFilter {
                wid: None,
                status: Some(RollbackStatus::Aborted),
            },
            RollbackFilter {
                wid: Some("w1".into()),
                status: Some(RollbackStatus::Accepted),
            },
            RollbackFilter {
                wid: Some("w3".into()),
                status: None,
            },
        ];
        for filter in &filters {
            let want: Vec<String> = expected
                .iter()
                .filter(|(_, w, st)| {
                    filter.wid.as_deref().is_none_or(|f| f == w)
                        && filter.status.is_none_or(|f| f == *st)
                })
                .map(|(id, _, _)| id.clone())
                .collect();
            for limit in [0, 1, 2, 3, 5, 7, 1000, u32::MAX] {
                assert_eq!(
                    all_ids(s, filter, limit).await,
                    want,
                    "{} {filter:?} limit {limit}",
                    ts.name
                );
            }
        }
        // Exactly one full page: no cursor.
        let page = s
            .list_rollbacks(&RollbackFilter::default(), None, 7)
            .await
            .unwrap();
        assert_eq!((page.items.len(), page.next_cursor), (7, None));
        for bad in ["", "!!", "YWJj"] {
            assert!(matches!(
                s.list_rollbacks(&RollbackFilter::default(), Some(bad), 10)
                    .await,
                Err(StoreError::BadCursor)
            ));
        }
    }
}

// ---- decisions ----

#[tokio::test]
async fn decisions_replay_mismatch_conflict_and_supersede() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let a = new_rb("a", "w1", Scope::Single, &["c1"], "h-a");
        let stored_a = insert(s, &a).await;
        let done = insert(s, &new_rb("done", "w1", Scope::Single, &["c1"], "h")).await;
        s.transition_rollback(
            &done.rollback_id,
            RollbackStatus::Accepted,
            RollbackStatus::Completed,
            Map::new(),
        )
        .await
        .unwrap()
        .unwrap();
        let elsewhere = insert(s, &new_rb("else", "w2", Scope::Single, &["c1"], "h")).await;

        // The context: the stored rollback of the same id (any workflow), and the workflow's
        // non-terminal rollbacks with their steps.
        let seen: Mutex<Vec<CreateContext>> = Mutex::new(Vec::new());
        let replay = |ctx: &CreateContext| {
            seen.lock().unwrap().push(ctx.clone());
            CreateDecision::Replay
        };
        let outcome = s.create_rollback(&a, &replay).await.unwrap();
        assert_eq!(
            outcome,
            CreateOutcome::Replayed(stored_a.clone()),
            "{}",
            ts.name
        );
        let ctx = seen.lock().unwrap().pop().unwrap();
        assert_eq!(ctx.existing.as_ref(), Some(&stored_a));
        assert_eq!(
            ctx.active.len(),
            1,
            "{}: terminal and other wids left out",
            ts.name
        );
        assert_eq!(ctx.active[0].record, stored_a);
        assert_eq!(ctx.active[0].steps, get(s, &stored_a.rollback_id).await.1);

        // Same id asked in another workflow: `existing` is found all the same.
        let mut a_other_wid = new_rb("a", "w2", Scope::Single, &["c9"], "h-other");
        a_other_wid.record.reason = Some("other".into());
        let mismatch = |ctx: &CreateContext| {
            seen.lock().unwrap().push(ctx.clone());
            CreateDecision::IdempotencyMismatch
        };
        let outcome = s.create_rollback(&a_other_wid, &mismatch).await.unwrap();
        assert_eq!(
            outcome,
            CreateOutcome::IdempotencyMismatch(stored_a.clone())
        );
        let ctx = seen.lock().unwrap().pop().unwrap();
        assert_eq!(ctx.existing.as_ref(), Some(&stored_a));
        assert_eq!(ctx.active.len(), 1);
        assert_eq!(ctx.active[0].record.rollback_id, elsewhere.rollback_id);

        // A conflict writes nothing.
        let b = new_rb("b", "w1", Scope::Single, &["c1"], "h-b");
        let conflict = |_: &CreateContext| CreateDecision::Conflict {
            conflicting_rollback_id: id("a"),
        };
        assert_eq!(
            s.create_rollback(&b, &conflict).await.unwrap(),
            CreateOutcome::Conflict {
                conflicting_rollback_id: id("a")
            }
        );
        assert!(s.get_rollback(&id("b")).await.unwrap().is_none());

        // Decisions that contradict the context are refused and write nothing.
        assert!(matches!(
            s.create_rollback(&b, &replay).await,
            Err(StoreError::Invalid(_))
        ));
        let insert_again = |_: &CreateContext| CreateDecision::Insert {
            supersede: Vec::new(),
        };
        assert!(matches!(
            s.create_rollback(&a, &insert_again).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(s.get_rollback(&id("b")).await.unwrap().is_none());
        assert_eq!(get(s, &id("a")).await.0, stored_a);

        // A broader request takes `a` over; ids that are not active rollbacks of the workflow
        // (terminal, another workflow's, unknown) are left alone.
        let wide = new_rb("wide", "w1", Scope::SubDag, &["c0", "c1"], "h-w");
        let take_over = |_: &CreateContext| CreateDecision::Insert {
            supersede: vec![
                id("a"),
                done.rollback_id.clone(),
                elsewhere.rollback_id.clone(),
                id("nobody"),
                id("a"),
            ],
        };
        let created = match s.create_rollback(&wide, &take_over).await.unwrap() {
            CreateOutcome::Created(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(created.rollback_id, id("wide"));
        let (a_now, _) = get(s, &id("a")).await;
        assert_eq!(a_now.superseded_by, Some(id("wide")), "{}", ts.name);
        assert_eq!(
            a_now.status,
            RollbackStatus::Accepted,
            "status changes later"
        );
        assert_eq!(a_now.version, stored_a.version + 1);
        assert!(a_now.updated_at >= stored_a.updated_at);
        assert_eq!(get(s, &done.rollback_id).await.0.superseded_by, None);
        assert_eq!(get(s, &elsewhere.rollback_id).await.0.superseded_by, None);

        // A worker's older copy of the record cannot clear `superseded_by`.
        let lease = s
            .claim_rollback(&id("a"), "w", LONG)
            .await
            .unwrap()
            .unwrap();
        let kept = s.update_rollback(&lease, &stored_a).await.unwrap();
        assert_eq!(kept.superseded_by, Some(id("wide")));
    }
}

// ---- concurrent decisions ----

/// What the test's conflict rule looks at: the stored request hash under the same id, and the
/// active rollbacks as (id, scope, steps, superseded_by), oldest first.
#[derive(Debug, Clone, PartialEq)]
struct View {
    existing_hash: Option<String>,
    active: Vec<(String, Scope, BTreeSet<String>, Option<String>)>,
}

fn view_of(ctx: &CreateContext) -> View {
    View {
        existing_hash: ctx.existing.as_ref().map(|r| r.request_hash.clone()),
        active: ctx
            .active
            .iter()
            .map(|a| {
                (
                    a.record.rollback_id.clone(),
                    a.record.scope,
                    a.steps.iter().map(|s| s.checkpoint_id.clone()).collect(),
                    a.record.superseded_by.clone(),
                )
            })
            .collect(),
    }
}

/// design.md §7: same id -> replay or mismatch; a rollback sharing a checkpoint with an active
/// one that is not already taken over loses unless it is broader, in which case it takes it over.
fn rule(new: &NewRollback, view: &View) -> CreateDecision {
    if let Some(hash) = &view.existing_hash {
        return if *hash == new.record.request_hash {
            CreateDecision::Replay
        } else {
            CreateDecision::IdempotencyMismatch
        };
    }
    let steps: BTreeSet<String> = new.steps.iter().map(|s| s.checkpoint_id.clone()).collect();
    let mut supersede = Vec::new();
    for (id, scope, active_steps, superseded_by) in &view.active {
        if superseded_by.is_some() || steps.is_disjoint(active_steps) {
            continue;
        }
        if new.record.scope > *scope {
            supersede.push(id.clone());
        } else {
            return CreateDecision::Conflict {
                conflicting_rollback_id: id.clone(),
            };
        }
    }
    CreateDecision::Insert { supersede }
}

/// Stored before the concurrent requests, so that replay and mismatch answers are certain.
fn seed() -> NewRollback {
    new_rb("seed", "w", Scope::Single, &["c9"], "h-seed")
}

/// Twenty overlapping requests: scopes and checkpoints that conflict, ids used twice (same
/// request: replay; another request: mismatch), two of them the seed's id.
fn requests() -> Vec<NewRollback> {
    let cps = ["c0", "c1", "c2", "c3", "c4", "c5"];
    let mut out = vec![seed()];
    let mut other = seed();
    other.record.request_hash = "h-seed-other".into();
    out.push(other);
    for i in 0..13usize {
        let (scope, picked): (Scope, Vec<&str>) = match i % 5 {
            0..=2 => (Scope::Single, vec![cps[i % 6]]),
            3 => (
                Scope::SubDag,
                vec![cps[i % 6], cps[(i + 1) % 6], cps[(i + 2) % 6]],
            ),
            _ => (Scope::FullWorkflow, cps.to_vec()),
        };
        out.push(new_rb(
            &format!("c{i:02}"),
            "w",
            scope,
            &picked,
            &format!("h{i}"),
        ));
    }
    for i in 0..5usize {
        let mut again = out[2 + i].clone();
        if i >= 3 {
            again.record.request_hash = format!("h{i}-other");
            again.record.reason = Some("another request".into());
        }
        out.push(again);
    }
    out
}

#[derive(Debug)]
struct Sim {
    /// (new rollback, superseded_by), in insertion order.
    rows: Vec<(NewRollback, Option<String>)>,
}

impl Sim {
    fn view(&self, new: &NewRollback) -> View {
        View {
            existing_hash: self
                .rows
                .iter()
                .find(|(r, _)| r.record.rollback_id == new.record.rollback_id)
                .map(|(r, _)| r.record.request_hash.clone()),
            active: self
                .rows
                .iter()
                .map(|(r, by)| {
                    (
                        r.record.rollback_id.clone(),
                        r.record.scope,
                        r.steps.iter().map(|s| s.checkpoint_id.clone()).collect(),
                        by.clone(),
                    )
                })
                .collect(),
        }
    }

    /// Applies the decision; returns the outcome a store must answer, as (kind, rollback id).
    fn apply(&mut self, new: &NewRollback, decision: CreateDecision) -> (&'static str, String) {
        let own = new.record.rollback_id.clone();
        match decision {
            CreateDecision::Insert { supersede } => {
                for (r, by) in &mut self.rows {
                    if supersede.contains(&r.record.rollback_id) {
                        *by = Some(own.clone());
                    }
                }
                self.rows.push((new.clone(), None));
                ("created", own)
            }
            CreateDecision::Replay => ("replayed", own),
            CreateDecision::IdempotencyMismatch => ("mismatch", own),
            CreateDecision::Conflict {
                conflicting_rollback_id,
            } => ("conflict", conflicting_rollback_id),
        }
    }
}

fn outcome_key(outcome: &CreateOutcome) -> (&'static str, String) {
    match outcome {
        CreateOutcome::Created(r) => ("created", r.rollback_id.clone()),
        CreateOutcome::Replayed(r) => ("replayed", r.rollback_id.clone()),
        CreateOutcome::IdempotencyMismatch(r) => ("mismatch", r.rollback_id.clone()),
        CreateOutcome::Conflict {
            conflicting_rollback_id,
        } => ("conflict", conflicting_rollback_id.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_match_a_serial_order() {
    for ts in test_stores().await {
        let stores = [ts.store.clone(), replica(&ts).await];
        insert(ts.store.as_ref(), &seed()).await;
        let requests = Arc::new(requests());
        assert_eq!(requests.len(), 20);
        // Every call of `decide`, in call order: (request index, what it saw).
        let log: Arc<Mutex<Vec<(usize, View)>>> = Arc::default();
        let mut tasks = Vec::new();
        for i in 0..requests.len() {
            let store = stores[i % 2].clone();
            let (requests, log) = (requests.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                let new = &requests[i];
                let decide = |ctx: &CreateContext| {
                    let view = view_of(ctx);
                    // Widen the window in which an unlocked store would let others in.
                    std::thread::sleep(Duration::from_millis(2));
                    let decision = rule(new, &view);
                    log.lock().unwrap().push((i, view));
                    decision
                };
                store.create_rollback(new, &decide).await.unwrap()
            }));
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }

        // Under the per-workflow lock, the last call of `decide` for each request (earlier ones
        // belong to retried attempts) happened in the order the decisions took effect. Replay
        // that order serially: every call must have seen exactly the serial state, and answered
        // the same.
        let log = log.lock().unwrap().clone();
        let mut last: BTreeMap<usize, usize> = BTreeMap::new();
        for (pos, (i, _)) in log.iter().enumerate() {
            last.insert(*i, pos);
        }
        assert_eq!(
            last.len(),
            requests.len(),
            "{}: decide called for every request",
            ts.name
        );
        let mut order: Vec<usize> = last.values().copied().collect();
        order.sort_unstable();
        let mut sim = Sim {
            rows: vec![(seed(), None)],
        };
        let mut kinds = BTreeMap::<&str, usize>::new();
        for pos in order {
            let (i, seen) = &log[pos];
            let new = &requests[*i];
            let serial = sim.view(new);
            assert_eq!(
                *seen, serial,
                "{}: request {i} saw a non-serial state",
                ts.name
            );
            let expected = sim.apply(new, rule(new, &serial));
            assert_eq!(
                outcome_key(&answers[*i]),
                expected,
                "{}: request {i}",
                ts.name
            );
            *kinds.entry(expected.0).or_default() += 1;
        }
        // The scenario exercises every kind of answer.
        for kind in ["created", "replayed", "mismatch", "conflict"] {
            assert!(
                kinds.contains_key(kind),
                "{}: no {kind} in {kinds:?}",
                ts.name
            );
        }

        // The stored set is the serial one.
        let stored: Vec<(String, Option<String>)> = ts
            .store
            .list_rollbacks(&RollbackFilter::default(), None, 1000)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|r| (r.rollback_id, r.superseded_by))
            .collect();
        let want: Vec<(String, Option<String>)> = sim
            .rows
            .iter()
            .map(|(r, by)| (r.record.rollback_id.clone(), by.clone()))
            .collect();
        assert_eq!(stored, want, "{}", ts.name);
        // No two active rollbacks that are not taken over share a checkpoint.
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        for (new, by) in &sim.rows {
            if by.is_none() {
                for st in &new.steps {
                    let prev =
                        held.insert(st.checkpoint_id.clone(), new.record.rollback_id.clone());
                    assert!(
                        prev.is_none(),
                        "{}: {} held twice",
                        ts.name,
                        st.checkpoint_id
                    );
                }
            }
        }
    }
}

// ---- leases ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_share_a_rollback() {
    for ts in test_stores().await {
        let stores = [ts.store.clone(), replica(&ts).await];
        let mut ids = BTreeSet::new();
        for i in 0..12 {
            let r = insert(
                ts.store.as_ref(),
                &new_rb(
                    &format!("q{i:02}"),
                    &format!("w{}", i % 3),
                    Scope::Single,
                    &["c"],
                    "h",
                ),
            )
            .await;
            ids.insert(r.rollback_id);
        }
        let mut tasks = Vec::new();
        for k in 0..4 {
            let store = stores[k % 2].clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(lease) = store
                    .claim_next_rollback(&format!("worker-{k}"), LONG)
                    .await
                    .unwrap()
                {
                    got.push(lease);
                }
                got
            }));
        }
        let mut leases: Vec<Lease> = Vec::new();
        for task in tasks {
            leases.extend(task.await.unwrap());
        }
        let claimed: BTreeSet<String> = leases.iter().map(|l| l.rollback_id.clone()).collect();
        assert_eq!(
            leases.len(),
            ids.len(),
            "{}: each claimed exactly once",
            ts.name
        );
        assert_eq!(claimed, ids);
        assert!(leases.iter().all(|l| l.fence == 1));

        // Many claimers of one rollback: exactly one wins.
        let r = insert(
            ts.store.as_ref(),
            &new_rb("one", "w", Scope::Single, &["c"], "h"),
        )
        .await;
        let mut tasks = Vec::new();
        for k in 0..8 {
            let store = stores[k % 2].clone();
            let rid = r.rollback_id.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .claim_rollback(&rid, &format!("worker-{k}"), LONG)
                    .await
                    .unwrap()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap().is_some());
        }
        assert_eq!(winners, 1, "{}", ts.name);
    }
}

#[tokio::test]
async fn expired_lease_is_taken_over_and_the_old_holder_is_fenced_off() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let new = new_rb("fence", "w", Scope::SubDag, &["c1", "c2"], "h");
        insert(s, &new).await;
        let rid = new.record.rollback_id.clone();

        let old = s
            .claim_next_rollback("worker-a", LONG)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((old.rollback_id.as_str(), old.fence), (rid.as_str(), 1));
        // Held: nobody else gets it.
        assert_eq!(s.claim_next_rollback("worker-b", LONG).await.unwrap(), None);
        assert_eq!(
            s.claim_rollback(&rid, "worker-b", LONG).await.unwrap(),
            None
        );
        let renewed = s.renew_lease(&old, LONG).await.unwrap();
        assert_eq!((renewed.fence, renewed.owner.as_str()), (1, "worker-a"));
        assert!(renewed.until >= old.until);

        // The holder stalls: its lease runs out (renewed to a moment), and b takes over.
        let old = s.renew_lease(&old, Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let new_lease = s
            .claim_next_rollback("worker-b", LONG)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new_lease.rollback_id, rid);
        assert_eq!(new_lease.fence, 2, "{}", ts.name);
        assert!(new_lease.until > old.until);
        let before = get(s, &rid).await;

        let mut step = new.steps[0].clone();
        step.execute_status = ExecuteStatus::Completed;
        assert!(matches!(
            s.update_step(&old, &step).await,
            Err(StoreError::LeaseLost(ref x)) if *x == rid
        ));
        let mut record = before.0.clone();
        record.status = RollbackStatus::Failed;
        assert!(matches!(
            s.update_rollback(&old, &record).await,
            Err(StoreError::LeaseLost(_))
        ));
        assert!(matches!(
            s.renew_lease(&old, LONG).await,
            Err(StoreError::LeaseLost(_))
        ));
        s.release_lease(&old).await.unwrap();
        assert_eq!(get(s, &rid).await, before, "{}: nothing changed", ts.name);

        // The new holder writes; releasing lets the next claim in with a higher fence.
        s.update_step(&new_lease, &step).await.unwrap();
        s.release_lease(&new_lease).await.unwrap();
        assert!(matches!(
            s.update_step(&new_lease, &step).await,
            Err(StoreError::LeaseLost(_))
        ));
        let third = s
            .claim_rollback(&rid, "worker-c", LONG)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.fence, 3);
        assert_eq!(get(s, &rid).await.0.version, before.0.version + 3);
    }
}

#[tokio::test]
async fn terminal_and_awaiting_decision_rollbacks_are_never_claimed() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let parked = [
            RollbackStatus::Completed,
            RollbackStatus::Partial,
            RollbackStatus::Failed,
            RollbackStatus::Aborted,
            RollbackStatus::Superseded,
            RollbackStatus::AwaitingDecision,
        ];
        for (i, to) in parked.iter().enumerate() {
            let r = insert(
                s,
                &new_rb(&format!("p{i}"), "w", Scope::Single, &["c"], "h"),
            )
            .await;
            s.transition_rollback(&r.rollback_id, RollbackStatus::Accepted, *to, Map::new())
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(
            s.claim_next_rollback("w", LONG).await.unwrap(),
            None,
            "{}",
            ts.name
        );
        for i in 0..parked.len() {
            assert_eq!(
                s.claim_rollback(&id(&format!("p{i}")), "w", LONG)
                    .await
                    .unwrap(),
                None
            );
        }
        // Every status that needs a worker is claimable.
        for (i, st) in [RollbackStatus::Preparing, RollbackStatus::Executing]
            .into_iter()
            .enumerate()
        {
            let r = insert(
                s,
                &new_rb(&format!("x{i}"), "w", Scope::Single, &["c"], "h"),
            )
            .await;
            s.transition_rollback(&r.rollback_id, RollbackStatus::Accepted, st, Map::new())
                .await
                .unwrap()
                .unwrap();
            let l = s.claim_next_rollback("w", LONG).await.unwrap().unwrap();
            assert_eq!(l.rollback_id, r.rollback_id);
        }
        // A decision sends the awaiting one back to work.
        s.transition_rollback(
            &id("p5"),
            RollbackStatus::AwaitingDecision,
            RollbackStatus::Executing,
            Map::new(),
        )
        .await
        .unwrap()
        .unwrap();
        let l = s.claim_next_rollback("w", LONG).await.unwrap().unwrap();
        assert_eq!(l.rollback_id, id("p5"));
        assert_eq!(s.claim_next_rollback("w", LONG).await.unwrap(), None);
    }
}

// ---- transitions ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transitions_are_compare_and_set() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let r = insert(s, &new_rb("tr", "w", Scope::Single, &["c"], "h")).await;
        let rid = r.rollback_id.clone();
        assert_eq!(
            s.transition_rollback(
                &rid,
                RollbackStatus::Preparing,
                RollbackStatus::Aborted,
                Map::new()
            )
            .await
            .unwrap(),
            None
        );
        assert_eq!(get(s, &rid).await.0, r, "{}: nothing written", ts.name);

        // A held lease ends with the decision.
        let lease = s
            .claim_rollback(&rid, "worker", LONG)
            .await
            .unwrap()
            .unwrap();
        let to = s
            .transition_rollback(
                &rid,
                RollbackStatus::Accepted,
                RollbackStatus::AwaitingDecision,
                members(json!({"escalation": "e1", "n": 1})),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(to.status, RollbackStatus::AwaitingDecision);
        assert_eq!(to.result, json!({"escalation": "e1", "n": 1}));
        assert_eq!(to.version, r.version + 2);
        assert_eq!(get(s, &rid).await.0, to);
        assert!(matches!(
            s.update_rollback(&lease, &to).await,
            Err(StoreError::LeaseLost(_))
        ));
        let merged = s
            .transition_rollback(
                &rid,
                RollbackStatus::AwaitingDecision,
                RollbackStatus::Executing,
                members(json!({"n": 2, "decision": "proceed_partial"})),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            merged.result,
            json!({"escalation": "e1", "n": 2, "decision": "proceed_partial"})
        );
        let relet = s
            .claim_rollback(&rid, "worker-2", LONG)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(relet.fence, 2);

        assert!(matches!(
            s.transition_rollback(
                &id("none"),
                RollbackStatus::Accepted,
                RollbackStatus::Aborted,
                Map::new()
            )
            .await,
            Err(StoreError::NoSuchRollback(_))
        ));

        // Two operators decide at once, through two replicas: exactly one wins.
        let stores = [ts.store.clone(), replica(&ts).await];
        for round in 0..10 {
            let r = insert(
                s,
                &new_rb(&format!("d{round}"), "w", Scope::Single, &["c"], "h"),
            )
            .await;
            s.transition_rollback(
                &r.rollback_id,
                RollbackStatus::Accepted,
                RollbackStatus::AwaitingDecision,
                Map::new(),
            )
            .await
            .unwrap()
            .unwrap();
            let mut tasks = Vec::new();
            for (k, (to, decision)) in [
                (RollbackStatus::Executing, "proceed_partial"),
                (RollbackStatus::Aborted, "abort"),
            ]
            .into_iter()
            .enumerate()
            {
                let store = stores[k].clone();
                let rid = r.rollback_id.clone();
                tasks.push(tokio::spawn(async move {
                    let won = store
                        .transition_rollback(
                            &rid,
                            RollbackStatus::AwaitingDecision,
                            to,
                            members(json!({ "decision": decision })),
                        )
                        .await
                        .unwrap();
                    (won, to, decision)
                }));
            }
            let mut winners = Vec::new();
            for task in tasks {
                let (won, to, decision) = task.await.unwrap();
                if let Some(rec) = won {
                    winners.push((rec, to, decision));
                }
            }
            assert_eq!(winners.len(), 1, "{} round {round}", ts.name);
            let (rec, to, decision) = &winners[0];
            let (stored, _) = get(s, &r.rollback_id).await;
            assert_eq!(stored, *rec);
            assert_eq!(stored.status, *to);
            assert_eq!(stored.result, json!({ "decision": decision }));
            assert_eq!(stored.version, r.version + 2);
        }
    }
}

// ---- corruption ----

#[tokio::test]
async fn corrupt_rows_are_reported_as_corrupt() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        for name in ["k-plan", "k-status", "k-waits", "k-agents", "k-text"] {
            insert(s, &new_rb(name, "w", Scope::Single, &["c"], "h")).await;
        }
        let statements: [&'static str; 4] = [
            "UPDATE rollbacks SET plan = '[1]' WHERE rollback_id = 'urn:uuid:k-plan'",
            "UPDATE rollbacks SET status = 'sleeping' WHERE rollback_id = 'urn:uuid:k-status'",
            "UPDATE rollback_steps SET waits_for = '{\"a\": 1}' \
             WHERE rollback_id = 'urn:uuid:k-waits'",
            "UPDATE rollbacks SET failed_agents = '\"x\"' WHERE rollback_id = 'urn:uuid:k-agents'",
        ];
        for sql in statements {
            assert_eq!(raw_execute(&ts, sql).await, 1, "{sql}");
        }
        for name in ["k-plan", "k-status", "k-waits", "k-agents"] {
            assert!(
                matches!(s.get_rollback(&id(name)).await, Err(StoreError::Corrupt(_))),
                "{} {name}",
                ts.name
            );
        }
        assert!(matches!(
            s.list_rollbacks(&RollbackFilter::default(), None, 10).await,
            Err(StoreError::Corrupt(_))
        ));
        // A decision is not taken on a workflow whose rollbacks cannot be read.
        let decide = |_: &CreateContext| CreateDecision::Insert {
            supersede: Vec::new(),
        };
        let new = new_rb("k-new", "w", Scope::Single, &["c"], "h");
        assert!(matches!(
            s.create_rollback(&new, &decide).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(s.get_rollback(&id("k-new")).await.unwrap().is_none());
        if ts.kind == DbKind::Sqlite {
            // Only SQLite can hold text that is not JSON at all.
            raw_execute(
                &ts,
                "UPDATE rollbacks SET result = '{not json' WHERE rollback_id = 'urn:uuid:k-text'",
            )
            .await;
            assert!(matches!(
                s.get_rollback(&id("k-text")).await,
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
