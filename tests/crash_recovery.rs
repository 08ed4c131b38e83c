//! Crash recovery with real processes: `unwind serve` is killed with SIGKILL while a rollback is
//! executing, and a restarted process (or a second replica) finishes it. The agents are real
//! HTTP servers built from the `unwind-agent` crate, in this test process, so their restore
//! hooks can be counted: design.md §6 promises that no checkpoint is restored twice.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::DbKind;
use common::agents::{Figure, TestAgent};
use common::process::{COORDINATOR_ID, ServeOptions, ServeProcess, ServeSetup};
use serde_json::{Value, json};
use unwind_agent::{CheckpointCtx, HandlerError, RestoreOutcome, RollbackHandler};

/// Long enough for the test to kill the coordinator while a restore is running.
const RESTORE_DELAY: Duration = Duration::from_millis(1500);

/// Everything one test's coordinators share: the database, a signing key made up front (so
/// replicas can share it), agents' trust; short leases so a dead worker's rollback is taken
/// over quickly.
async fn crash_setup(kind: DbKind) -> ServeSetup {
    ServeSetup::new(ServeOptions {
        database: Some(kind),
        shared_key: true,
        extra: "\n[rollback]\nlease_s = 3\npoll_ms = 200\nagent_timeout_ms = 5000\n",
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Agents, in this process, counting their restore hooks.

/// Restore hook runs per (rollback_id, checkpoint_id), and the order they started and ended.
#[derive(Default)]
struct Hooks {
    runs: HashMap<(String, String), u32>,
    order: Vec<(&'static str, String)>,
}

struct SlowRestore {
    hooks: Arc<Mutex<Hooks>>,
    started: Arc<tokio::sync::Notify>,
}

#[unwind_agent::async_trait]
impl RollbackHandler for SlowRestore {
    async fn restore(
        &self,
        ctx: &CheckpointCtx,
        _snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError> {
        {
            let mut h = self.hooks.lock().unwrap();
            *h.runs
                .entry((ctx.rollback_id.clone(), ctx.checkpoint.jti.clone()))
                .or_default() += 1;
            h.order.push(("start", ctx.checkpoint.jti.clone()));
        }
        self.started.notify_one();
        tokio::time::sleep(RESTORE_DELAY).await;
        self.hooks
            .lock()
            .unwrap()
            .order
            .push(("end", ctx.checkpoint.jti.clone()));
        Ok(RestoreOutcome::completed())
    }
}

/// An agent whose `controls` is notified when a restore starts.
type Agent = TestAgent<Arc<tokio::sync::Notify>>;

async fn start_agent(
    setup: &ServeSetup,
    c: &ServeProcess,
    name: &str,
    hooks: &Arc<Mutex<Hooks>>,
) -> Agent {
    let started = Arc::new(tokio::sync::Notify::new());
    let handler = Arc::new(SlowRestore {
        hooks: hooks.clone(),
        started: started.clone(),
    });
    setup.start_agent(c, name, handler, started).await
}

/// Requests a sub_dag rollback from checkpoint A; returns its id.
async fn request_rollback(c: &ServeProcess, cp_a: &str) -> String {
    let (status, body) = c
        .post(
            "/v1/rollbacks",
            json!({"checkpoint_id": cp_a, "scope": "sub_dag", "reason": "crash test"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["rollback_id"].as_str().unwrap().to_string()
}

async fn wait_started(agent: &Agent, c: &ServeProcess) {
    if tokio::time::timeout(Duration::from_secs(20), agent.controls.notified())
        .await
        .is_err()
    {
        panic!("the restore never started; coordinator log:\n{}", c.logs());
    }
}

/// Polls until the rollback is terminal (or awaits a decision); gives up after `limit`.
async fn wait_terminal(c: &ServeProcess, id: &str, limit: Duration) -> Value {
    let states = [
        "completed",
        "partial",
        "failed",
        "aborted",
        "awaiting_decision",
    ];
    c.wait_for(id, &states, limit).await
}

/// The promises of design.md §6 after a crash: the rollback completed B then A, every
/// checkpoint's restore hook ran exactly once for it, and Unwind recorded exactly one
/// `rollback_complete` for it.
async fn assert_finished_once(
    c: &ServeProcess,
    done: &Value,
    hooks: &Arc<Mutex<Hooks>>,
    wid: &str,
    (cp_a, cp_b): (&str, &str),
) {
    let id = done["rollback_id"].as_str().unwrap();
    assert_eq!(done["status"], "completed", "{done}\n{}", c.logs());
    let steps = done["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{done}");
    assert_eq!(steps[0]["checkpoint_id"], cp_b);
    assert_eq!(steps[1]["checkpoint_id"], cp_a);
    for step in steps {
        assert_eq!(step["execute_status"], "completed", "{done}");
    }

    {
        let hooks = hooks.lock().unwrap();
        for cp in [cp_a, cp_b] {
            let n = hooks
                .runs
                .get(&(id.to_string(), cp.to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(n, 1, "{cp} restored {n} times: {:?}", hooks.runs);
        }
        assert_eq!(
            hooks.runs.len(),
            2,
            "hooks of other rollbacks: {:?}",
            hooks.runs
        );
        let pos = |phase: &str, cp: &str| {
            hooks
                .order
                .iter()
                .position(|(p, c)| *p == phase && c == cp)
                .unwrap()
        };
        assert!(
            pos("end", cp_b) < pos("start", cp_a),
            "a restored before b finished: {:?}",
            hooks.order
        );
    }

    let page = c
        .get(&format!("/v1/ects?wid={wid}&exec_act=rollback_complete"))
        .await;
    let mine: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["iss"] == COORDINATOR_ID)
        .collect();
    assert_eq!(mine.len(), 1, "coordinator's rollback_complete: {page}");
    let jti = mine[0]["jti"].as_str().unwrap();
    assert_eq!(done["evidence"]["rollback_complete"], jti, "{done}");
    let ect = c.get(&format!("/v1/ects/{jti}")).await;
    assert_eq!(ect["ext"]["cascade.rollback_id"], id, "{ect}");
    assert_eq!(ect["ext"]["cascade.status"], "completed", "{ect}");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_execute_then_restart_finishes_without_repeating() {
    for kind in common::test_kinds() {
        let setup = crash_setup(kind).await;
        let mut first = setup.start("one").await;
        let hooks: Arc<Mutex<Hooks>> = Arc::default();
        let a = start_agent(&setup, &first, "a", &hooks).await;
        let b = start_agent(&setup, &first, "b", &hooks).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let Figure { cp_a, cp_b, .. } = first.seed_figure(&a, &b, &wid).await;
        let id = request_rollback(&first, &cp_a).await;

        // Killed while b's restore runs: the execute call is in flight, its result unsaved.
        wait_started(&b, &first).await;
        first.sigkill();
        assert!(
            hooks
                .lock()
                .unwrap()
                .order
                .iter()
                .all(|(p, _)| *p == "start"),
            "b's restore ended before the kill; the test proves nothing"
        );

        // Same database, same data directory: the restarted process takes the rollback over
        // once the dead one's lease has expired.
        let second = setup.start("one").await;
        let done = wait_terminal(&second, &id, Duration::from_secs(25)).await;
        assert_finished_once(&second, &done, &hooks, &wid, (&cp_a, &cp_b)).await;
        drop(second);
        eprintln!(
            "{}: restart after SIGKILL finished the rollback",
            kind.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_replica_takes_over() {
    if common::postgres_admin_url().is_none() {
        eprintln!(
            "second_replica_takes_over: skipped, replicas share a PostgreSQL database \
             (set {})",
            common::POSTGRES_ENV
        );
        return;
    }
    let setup = crash_setup(DbKind::Postgres).await;
    let mut replicas = vec![setup.start("one").await, setup.start("two").await];
    let hooks: Arc<Mutex<Hooks>> = Arc::default();
    let a = start_agent(&setup, &replicas[0], "a", &hooks).await;
    let b = start_agent(&setup, &replicas[0], "b", &hooks).await;
    let wid = uuid::Uuid::new_v4().to_string();
    let Figure { cp_a, cp_b, .. } = replicas[0].seed_figure(&a, &b, &wid).await;
    let id = request_rollback(&replicas[0], &cp_a).await;
    wait_started(&b, &replicas[0]).await;

    // The replica that took the request usually drives it, but the other one polls too: the
    // lease names the driver (owner = "<pid>/<uuid>"), and that one dies.
    let db_url = setup
        .database_url
        .as_deref()
        .expect("a PostgreSQL database");
    let owner = lease_owner(db_url, &id).await;
    let pid = owner.split('/').next().unwrap_or_default().to_string();
    let holder = replicas
        .iter()
        .position(|r| r.pid().to_string() == pid)
        .unwrap_or_else(|| panic!("lease owner {owner} is neither replica"));
    let mut dead = replicas.remove(holder);
    dead.sigkill();
    assert!(
        hooks
            .lock()
            .unwrap()
            .order
            .iter()
            .all(|(p, _)| *p == "start"),
        "b's restore ended before the kill; the test proves nothing"
    );
    let survivor = replicas.remove(0);
    let done = wait_terminal(&survivor, &id, Duration::from_secs(25)).await;
    assert_finished_once(&survivor, &done, &hooks, &wid, (&cp_a, &cp_b)).await;
    assert!(
        survivor.logs().contains("rollback finished"),
        "the survivor did not finish it:\n{}",
        survivor.logs()
    );
    eprintln!(
        "replica {} died; the other one finished the rollback",
        holder + 1
    );
    drop(survivor);
    drop(dead);
}

/// The rollback's current lease holder, read from the shared database.
async fn lease_owner(db_url: &str, id: &str) -> String {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    let owner: Option<String> =
        sqlx::query_scalar("SELECT lease_owner FROM rollbacks WHERE rollback_id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    owner.unwrap_or_else(|| panic!("rollback {id} holds no lease while executing"))
}
