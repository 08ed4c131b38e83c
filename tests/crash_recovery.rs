//! Crash recovery with real processes: `unwind serve` is killed with SIGKILL while a rollback is
//! executing, and a restarted process (or a second replica) finishes it. The agents are real
//! HTTP servers built from the `unwind-agent` crate, in this test process, so their restore
//! hooks can be counted: design.md §6 promises that no checkpoint is restored twice.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::DbKind;
use serde_json::{Map, Value, json};
use unwind::ect::{KeyAlg, SigningKey};
use unwind_agent::{
    Agent, CheckpointCtx, CheckpointStore, CoordinatorKeys, HandlerError, RestoreOutcome,
    RollbackHandler, SnapshotKey, StoreOptions,
};

const COORDINATOR_ID: &str = "spiffe://unwind.local/coordinator";
const AGENT_PREFIX: &str = "spiffe://example.com/agent/";
const OPERATOR_TOKEN: &str = "operator-token-0123456789";
/// Long enough for the test to kill the coordinator while a restore is running.
const RESTORE_DELAY: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------------
// The coordinator as a child process.

/// A running `unwind serve`; killed when dropped.
struct Coordinator {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    /// Starts `unwind serve --config <config>` on a free port and waits for its "listening" line.
    /// Its log goes to `log` (appended, so a restart keeps the first process's lines).
    async fn start(config: &Path, log: &Path) -> Coordinator {
        let (config, log) = (config.to_path_buf(), log.to_path_buf());
        tokio::task::spawn_blocking(move || Self::start_blocking(&config, &log))
            .await
            .unwrap()
    }

    fn start_blocking(config: &Path, log: &Path) -> Coordinator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_unwind"));
        // The tests' own environment must not configure the child.
        for (k, _) in std::env::vars() {
            if k.starts_with("UNWIND_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "unwind=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            assert!(n > 0, "unwind serve exited early; printed:\n{printed}");
            printed.push_str(&line);
            if line.contains("listening on") {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = reader.read_to_string(&mut sink);
        });
        Coordinator {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no lease released, an agent call left in flight.
    fn sigkill(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Everything one test's coordinators share: the database, a signing key, agents' trust.
struct Setup {
    kind: DbKind,
    db_url: String,
    dir: tempfile::TempDir,
    _db_dir: Option<tempfile::TempDir>,
    agent_key: SigningKey,
    coordinator_jwks: jsonwebtoken::jwk::JwkSet,
    key_file: PathBuf,
    client: reqwest::Client,
}

impl Setup {
    async fn new(kind: DbKind) -> Setup {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (db_url, db_dir) = common::fresh_database_url(kind).await;
        let dir = tempfile::tempdir().unwrap();
        // The coordinator's key is made up front, so replicas can share it and the agents can
        // trust it before any coordinator runs.
        let key_file = dir.path().join("coordinator.jwk");
        let jwks_file = dir.path().join("coordinator.jwks.json");
        let out = Command::new(env!("CARGO_BIN_EXE_unwind"))
            .args(["keys", "generate", "--alg", "es256", "--out"])
            .arg(&key_file)
            .arg("--jwks")
            .arg(&jwks_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let coordinator_jwks =
            serde_json::from_str(&std::fs::read_to_string(&jwks_file).unwrap()).unwrap();
        let agent_key = SigningKey::generate(KeyAlg::ES256).unwrap();
        std::fs::write(
            dir.path().join("agents.jwks.json"),
            serde_json::to_string(&agent_key.public_jwks()).unwrap(),
        )
        .unwrap();
        Setup {
            kind,
            db_url,
            dir,
            _db_dir: db_dir,
            agent_key,
            coordinator_jwks,
            key_file,
            client: reqwest::Client::new(),
        }
    }

    /// Writes the configuration of replica `name`: its own data directory, a copy of the
    /// shared signing key, short leases so a dead worker's rollback is taken over quickly.
    fn config(&self, name: &str) -> PathBuf {
        let d = self.dir.path();
        let data = d.join(format!("data-{name}"));
        std::fs::create_dir_all(&data).unwrap();
        let key = data.join("coordinator.jwk");
        if !key.exists() {
            std::fs::copy(&self.key_file, &key).unwrap();
        }
        let toml = format!(
            r#"coordinator_id = "{COORDINATOR_ID}"
database_url = {db:?}
data_dir = {data:?}
signing_key_file = {key:?}

[rollback]
lease_s = 3
poll_ms = 200
agent_timeout_ms = 5000

[[trust.issuers]]
id = "{AGENT_PREFIX}*"
jwks_file = {jwks:?}
rollback_hosts = ["127.0.0.1"]
allow_http = true

[[auth.tokens]]
name = "ops"
role = "operator"
sha256 = "{sha}"
"#,
            db = self.db_url,
            data = data.display().to_string(),
            key = key.display().to_string(),
            jwks = d.join("agents.jwks.json").display().to_string(),
            sha = unwind::ect::sha256_hex(OPERATOR_TOKEN.as_bytes()),
        );
        let path = d.join(format!("unwind-{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("unwind-{name}.log"))
    }

    async fn finish(self) {
        if self.kind == DbKind::Postgres {
            common::drop_database(&self.db_url).await;
        }
    }

    async fn get(&self, c: &Coordinator, path: &str) -> Value {
        let r = self
            .client
            .get(c.url(path))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    async fn post(&self, c: &Coordinator, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(c.url(path))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
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

struct TestAgent {
    agent: Agent,
    uri: String,
    started: Arc<tokio::sync::Notify>,
    _task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_agent(setup: &Setup, name: &str, hooks: &Arc<Mutex<Hooks>>) -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let id = format!("{AGENT_PREFIX}{name}");
    let store = CheckpointStore::open(StoreOptions::in_dir(
        dir.path(),
        id.clone(),
        SnapshotKey::generate().unwrap(),
    ))
    .await
    .unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let agent = Agent::builder()
        .id(&id)
        .signing_key(setup.agent_key.clone())
        .coordinator(
            COORDINATOR_ID,
            CoordinatorKeys::Static(setup.coordinator_jwks.clone()),
        )
        .store(store)
        .handler(Arc::new(SlowRestore {
            hooks: hooks.clone(),
            started: started.clone(),
        }))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!(
        "http://{}/.well-known/cascade/rollback",
        listener.local_addr().unwrap()
    );
    let router = agent.router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    TestAgent {
        agent,
        uri,
        started,
        _task: task,
        _dir: dir,
    }
}

impl TestAgent {
    async fn checkpoint(&self, wid: &str, parents: &[String]) -> (String, String) {
        let (cp, token) = self
            .agent
            .checkpoint(
                b"router config v1",
                3600,
                Some("router-1"),
                true,
                wid,
                parents,
                Some(&self.uri),
            )
            .await
            .unwrap();
        (cp.jti, token)
    }

    fn action(&self, wid: &str, exec_act: &str, parents: &[String]) -> (String, String) {
        let token = self
            .agent
            .action_ect(exec_act, Some(wid), parents, Map::new())
            .unwrap();
        let (_, claims) = unwind::ect::jws::decode_unverified(&token).unwrap();
        (claims["jti"].as_str().unwrap().to_string(), token)
    }
}

/// The seed figure: Checkpoint A -> A1 -> Checkpoint B -> B1, B2; agent a owns A and A1,
/// agent b owns B, B1 and B2. Returns the jtis of checkpoints A and B.
async fn seed_figure(
    setup: &Setup,
    c: &Coordinator,
    a: &TestAgent,
    b: &TestAgent,
    wid: &str,
) -> (String, String) {
    let (cp_a, t_a) = a.checkpoint(wid, &[]).await;
    let (a1, t_a1) = a.action(wid, "reconfigure_router", std::slice::from_ref(&cp_a));
    let (cp_b, t_b) = b.checkpoint(wid, std::slice::from_ref(&a1)).await;
    let (_, t_b1) = b.action(wid, "update_dns", std::slice::from_ref(&cp_b));
    let (_, t_b2) = b.action(wid, "notify", std::slice::from_ref(&cp_b));
    let (status, body) = setup
        .post(
            c,
            "/v1/ects",
            json!({ "tokens": [t_a, t_a1, t_b, t_b1, t_b2] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for item in body["results"].as_array().unwrap() {
        assert_eq!(item["status"], "created", "{item}");
    }
    (cp_a, cp_b)
}

/// Requests a sub_dag rollback from checkpoint A; returns its id.
async fn request_rollback(setup: &Setup, c: &Coordinator, cp_a: &str) -> String {
    let (status, body) = setup
        .post(
            c,
            "/v1/rollbacks",
            json!({"checkpoint_id": cp_a, "scope": "sub_dag", "reason": "crash test"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["rollback_id"].as_str().unwrap().to_string()
}

async fn wait_started(agent: &TestAgent, c: &Coordinator) {
    if tokio::time::timeout(Duration::from_secs(20), agent.started.notified())
        .await
        .is_err()
    {
        panic!("the restore never started; coordinator log:\n{}", c.logs());
    }
}

/// Polls until the rollback is terminal (or awaits a decision); gives up after `limit`.
async fn wait_terminal(setup: &Setup, c: &Coordinator, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let body = setup.get(c, &format!("/v1/rollbacks/{id}")).await;
        let status = body["status"].as_str().unwrap_or("").to_string();
        if [
            "completed",
            "partial",
            "failed",
            "aborted",
            "awaiting_decision",
        ]
        .contains(&status.as_str())
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "stuck in {status}: {body}\ncoordinator log:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The promises of design.md §6 after a crash: the rollback completed B then A, every
/// checkpoint's restore hook ran exactly once for it, and Unwind recorded exactly one
/// `rollback_complete` for it.
async fn assert_finished_once(
    setup: &Setup,
    c: &Coordinator,
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

    let page = setup
        .get(c, &format!("/v1/ects?wid={wid}&exec_act=rollback_complete"))
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
    let ect = setup.get(c, &format!("/v1/ects/{jti}")).await;
    assert_eq!(ect["ext"]["cascade.rollback_id"], id, "{ect}");
    assert_eq!(ect["ext"]["cascade.status"], "completed", "{ect}");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_execute_then_restart_finishes_without_repeating() {
    for kind in common::test_kinds() {
        let setup = Setup::new(kind).await;
        let config = setup.config("one");
        let log = setup.log("one");
        let mut first = Coordinator::start(&config, &log).await;
        let hooks: Arc<Mutex<Hooks>> = Arc::default();
        let a = start_agent(&setup, "a", &hooks).await;
        let b = start_agent(&setup, "b", &hooks).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, cp_b) = seed_figure(&setup, &first, &a, &b, &wid).await;
        let id = request_rollback(&setup, &first, &cp_a).await;

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
        let second = Coordinator::start(&config, &log).await;
        let done = wait_terminal(&setup, &second, &id, Duration::from_secs(25)).await;
        assert_finished_once(&setup, &second, &done, &hooks, &wid, (&cp_a, &cp_b)).await;
        drop(second);
        setup.finish().await;
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
    let setup = Setup::new(DbKind::Postgres).await;
    let mut replicas = vec![
        Coordinator::start(&setup.config("one"), &setup.log("one")).await,
        Coordinator::start(&setup.config("two"), &setup.log("two")).await,
    ];
    let hooks: Arc<Mutex<Hooks>> = Arc::default();
    let a = start_agent(&setup, "a", &hooks).await;
    let b = start_agent(&setup, "b", &hooks).await;
    let wid = uuid::Uuid::new_v4().to_string();
    let (cp_a, cp_b) = seed_figure(&setup, &replicas[0], &a, &b, &wid).await;
    let id = request_rollback(&setup, &replicas[0], &cp_a).await;
    wait_started(&b, &replicas[0]).await;

    // The replica that took the request usually drives it, but the other one polls too: the
    // lease names the driver (owner = "<pid>/<uuid>"), and that one dies.
    let owner = lease_owner(&setup.db_url, &id).await;
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
    let done = wait_terminal(&setup, &survivor, &id, Duration::from_secs(25)).await;
    assert_finished_once(&setup, &survivor, &done, &hooks, &wid, (&cp_a, &cp_b)).await;
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
    setup.finish().await;
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
