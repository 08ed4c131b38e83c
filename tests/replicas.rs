//! Several `unwind serve` replicas on one PostgreSQL database, SIGKILLed while they work (issue
//! 6: replicas coordinate through the database alone).
//!
//! Three real processes, reference agents as real HTTP servers (some slow, one failing its first
//! calls, one failing every call so its breaker opens) and a webhook receiver. A mixed load runs
//! through random live replicas: ingest (single tokens and batches, retried with the same tokens
//! after a connection error), rollback requests that overlap (each workflow gets four requests on
//! shared checkpoints with different scopes, in random order) and error chains for the cascade
//! detectors. Meanwhile a random replica is SIGKILLed every few seconds and started again.
//!
//! Afterwards: every rollback is terminal; precedence held; no agent executed a checkpoint twice
//! for one `rollback_id`; every acknowledged ECT is stored once and the hash chain verifies;
//! every webhook event the store recorded was delivered; each rollback has exactly one
//! `rollback_complete`; one cascade alert per (wid, pattern, root cause), and every error chain
//! and fan raised its pattern's alert; the open breaker is seen by every replica; no replica
//! answered a 5xx (a dying replica drops its connections, it does not answer 5xx); at least one
//! rollback was taken over by another replica. PostgreSQL only (skipped without it, never on
//! CI).
//!
//! The seed is printed; `REPLICAS_SEED=<n>` replays the same choices.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::DbKind;
use common::agents::{TestAgent, agent_id, sign_figure};
use common::process::{ServeOptions, ServeProcess, ServeSetup};
use common::receiver::{Receiver, SECRET};
use common::server::{OPERATOR_TOKEN, claims};
use serde_json::{Value, json};
use unwind::ect::Profile;

/// Replicas running at once.
const REPLICAS: usize = 3;
/// Workflows with rollbacks; each gets [`REQUESTS_PER_WORKFLOW`] overlapping requests.
const WORKFLOWS: usize = 50;
const REQUESTS_PER_WORKFLOW: usize = 4;
/// A random replica is SIGKILLed (and started again) this often while the load runs, and at
/// least this many times per run.
const KILL_EVERY: Duration = Duration::from_secs(2);
const MIN_KILLS: usize = 12;
/// Workflows start this far apart, so the load (and the kills) last about 40 s.
const WORKFLOW_STAGGER: Duration = Duration::from_millis(800);
/// Pause between two ingest rounds of one loop.
const INGEST_PAUSE: Duration = Duration::from_millis(400);
/// Requests of one workflow are spread over this much time, so they overlap.
const REQUEST_SPREAD_MS: u64 = 600;
/// Concurrent ingest loops, and the rounds each runs (one five-token workflow per round).
const INGESTERS: usize = 3;
const INGEST_ROUNDS: usize = 40;
/// Depth-first error chains (four agents each) and breadth-first fans for the detectors.
const DEPTH_CHAINS: usize = 6;
const BREADTH_FANS: usize = 4;
/// Workflows whose second agent fails every call (its breaker opens).
const BROKEN_WORKFLOWS: usize = 3;
/// Longest wait for one request to find a live replica.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait, after the kills stop, for every rollback to end and every webhook to arrive.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Scopes by precedence (design.md §7: broader wins).
fn rank(scope: &str) -> u8 {
    match scope {
        "single" => 0,
        "sub_dag" => 1,
        "full_workflow" => 2,
        other => panic!("scope {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A small seeded generator (splitmix64): the seed is printed, so a failing run's choices replay.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

// ---------------------------------------------------------------------------------------------
// The replicas, as clients see them: whichever are up, at their current ports.

struct Cluster {
    bases: Mutex<Vec<Option<String>>>,
    client: reqwest::Client,
    /// Requests that failed (connection refused or reset, 5xx) and were sent again.
    retries: AtomicU64,
    /// 5xx answers: (request, status, body).
    server_errors: Mutex<Vec<String>>,
}

impl Cluster {
    fn pick(&self, rng: &mut Rng) -> Option<String> {
        let bases = self.bases.lock().unwrap();
        let live: Vec<&String> = bases.iter().flatten().collect();
        (!live.is_empty()).then(|| live[rng.below(live.len())].clone())
    }

    /// Sends the request to random live replicas until one answers with something other than a
    /// connection error or a 5xx (a replica dying mid-request); returns status and JSON body.
    async fn send(
        &self,
        rng: &mut Rng,
        what: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let deadline = Instant::now() + REQUEST_LIMIT;
        loop {
            if let Some(base) = self.pick(rng) {
                match build(&self.client, &base).send().await {
                    Ok(r) if r.status().is_server_error() => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        eprintln!("{what}: {status} from {base}: {body}");
                        self.server_errors
                            .lock()
                            .unwrap()
                            .push(format!("{what}: {status} from {base}: {body}"));
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        // An error here: the replica died while answering. The request may have
                        // been applied; sending it again must be safe.
                        if let Ok(text) = r.text().await {
                            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                            return (status, body);
                        }
                    }
                    // Refused or reset: the replica is down or died mid-request.
                    Err(_) => {}
                }
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            assert!(Instant::now() < deadline, "{what}: no replica answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, rng: &mut Rng, path: &str) -> Value {
        let (status, body) = self
            .send(rng, path, |c, base| {
                c.get(format!("{base}{path}")).bearer_auth(OPERATOR_TOKEN)
            })
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Ingests tokens as one batch, or one by one in order, until every one is acknowledged
    /// (`created` or `duplicate`: the same tokens sent again after a lost answer).
    async fn ingest(&self, rng: &mut Rng, tokens: &[(String, String)], batch: bool, acked: &Acked) {
        if batch {
            let body = json!({ "tokens": tokens.iter().map(|(_, t)| t).collect::<Vec<_>>() });
            let (status, answer) = self
                .send(rng, "batch ingest", |c, base| {
                    c.post(format!("{base}/v1/ects"))
                        .bearer_auth(OPERATOR_TOKEN)
                        .json(&body)
                })
                .await;
            assert_eq!(status, 200, "batch ingest: {answer}");
            for item in answer["results"].as_array().unwrap() {
                let s = item["status"].as_str().unwrap();
                assert!(s == "created" || s == "duplicate", "batch ingest: {item}");
            }
        } else {
            for (jti, token) in tokens {
                let (status, answer) = self
                    .send(rng, "ingest", |c, base| {
                        c.post(format!("{base}/v1/ects"))
                            .bearer_auth(OPERATOR_TOKEN)
                            .header("content-type", "application/jwt")
                            .body(token.clone())
                    })
                    .await;
                assert!(status == 201 || status == 200, "ingest {jti}: {answer}");
                assert_eq!(answer["jti"], jti.as_str(), "{answer}");
            }
        }
        acked
            .lock()
            .unwrap()
            .extend(tokens.iter().map(|(jti, _)| jti.clone()));
    }
}

type Acked = Mutex<Vec<String>>;

/// jti and token of a signed ECT.
fn pair(token: String) -> (String, String) {
    let (_, claims) = unwind::ect::jws::decode_unverified(&token).unwrap();
    (claims["jti"].as_str().unwrap().to_string(), token)
}

// ---------------------------------------------------------------------------------------------
// The load.

/// One rollback request and what the replicas answered.
#[derive(Debug, Clone)]
struct Request {
    rollback_id: String,
    wid: String,
    scope: &'static str,
    /// The checkpoints its steps cover (the figure: B below A).
    covers: Vec<String>,
    /// `None`: accepted; `Some(id)`: refused with `rollback_conflict` naming `id`.
    refused_for: Option<String>,
}

/// A figure in a new workflow, then its four overlapping rollback requests in random order.
async fn rollbacks_of_one_workflow(
    cluster: Arc<Cluster>,
    mut rng: Rng,
    a: Arc<TestAgent>,
    b: Arc<TestAgent>,
    acked: Arc<Acked>,
    start_after: Duration,
) -> Vec<Request> {
    tokio::time::sleep(start_after).await;
    let wid = uuid::Uuid::new_v4().to_string();
    let figure = sign_figure(&*a, &*b, &wid).await;
    let tokens: Vec<(String, String)> = figure.tokens.iter().cloned().map(pair).collect();
    cluster.ingest(&mut rng, &tokens, true, &acked).await;
    let (cp_a, cp_b) = (figure.cp_a.clone(), figure.cp_b.clone());
    let mut plans = vec![
        ("single", cp_b.clone(), vec![cp_b.clone()]),
        ("single", cp_a.clone(), vec![cp_a.clone()]),
        ("sub_dag", cp_a.clone(), vec![cp_a.clone(), cp_b.clone()]),
        (
            "full_workflow",
            cp_a.clone(),
            vec![cp_a.clone(), cp_b.clone()],
        ),
    ];
    assert_eq!(plans.len(), REQUESTS_PER_WORKFLOW);
    rng.shuffle(&mut plans);
    let mut tasks = Vec::new();
    for (scope, checkpoint, covers) in plans {
        let cluster = cluster.clone();
        let mut rng = rng.fork();
        let wid = wid.clone();
        let delay = Duration::from_millis(rng.next() % REQUEST_SPREAD_MS);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let rollback_id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
            let body = json!({
                "rollback_id": rollback_id,
                "checkpoint_id": checkpoint,
                "scope": scope,
                "reason": "replica kill test",
            });
            loop {
                let (status, answer) = cluster
                    .send(&mut rng, "rollback request", |c, base| {
                        c.post(format!("{base}/v1/rollbacks"))
                            .bearer_auth(OPERATOR_TOKEN)
                            .json(&body)
                    })
                    .await;
                let refused_for = match (status, answer["code"].as_str()) {
                    (202 | 200, _) => {
                        assert_eq!(answer["rollback_id"], rollback_id.as_str(), "{answer}");
                        None
                    }
                    (409, Some("rollback_conflict")) => Some(
                        answer["conflicting_rollback_id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("no conflicting id: {answer}"))
                            .to_string(),
                    ),
                    (429, _) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    _ => panic!("rollback request {body}: {status} {answer}"),
                };
                return Request {
                    rollback_id,
                    wid,
                    scope,
                    covers,
                    refused_for,
                };
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Workflows of plain actions, five tokens each, ingested as a batch or one by one.
async fn ingest_load(
    cluster: Arc<Cluster>,
    mut rng: Rng,
    agents: Vec<Arc<TestAgent>>,
    acked: Arc<Acked>,
) {
    for _ in 0..INGEST_ROUNDS {
        let wid = uuid::Uuid::new_v4().to_string();
        let mut tokens = Vec::new();
        let mut parents: Vec<String> = Vec::new();
        for step in 0..5 {
            let agent = &agents[rng.below(agents.len())];
            let (jti, token) = agent.action(&wid, &format!("step_{step}"), &parents);
            parents = vec![jti.clone()];
            tokens.push((jti, token));
        }
        let batch = rng.below(2) == 0;
        cluster.ingest(&mut rng, &tokens, batch, &acked).await;
        tokio::time::sleep(INGEST_PAUSE).await;
    }
}

/// Error chains and fans whose tokens arrive one at a time on random replicas, so the node that
/// completes a pattern and the ones after it are seen by different detectors.
async fn cascade_load(
    cluster: Arc<Cluster>,
    mut rng: Rng,
    key: unwind::ect::SigningKey,
    acked: Arc<Acked>,
) -> Vec<String> {
    let sign = |agent: &str, jti: &str, wid: &str, act: &str, parents: &[&str], error: bool| {
        let mut c = claims(agent, jti, wid, act, parents);
        if error {
            c.insert("ext".into(), json!({"cascade.error": true}));
        }
        (jti.to_string(), key.sign_ect(&c, Profile::Draft00).unwrap())
    };
    let id = |p: &str| format!("{p}-{}", uuid::Uuid::new_v4());
    let mut wids = Vec::new();
    for n in 0..DEPTH_CHAINS {
        let wid = uuid::Uuid::new_v4().to_string();
        let root = id("root");
        let mut tokens = vec![sign("planner", &root, &wid, "plan", &[], false)];
        let mut parent = root;
        // Four agents in a row: the third completes the pattern, the fourth is the same cascade.
        for hop in 0..4 {
            let jti = id("err");
            let agent = format!("chain-{n}-{hop}");
            tokens.push(sign(&agent, &jti, &wid, "fetch_failed", &[&parent], true));
            parent = jti;
        }
        for t in tokens {
            cluster.ingest(&mut rng, &[t], false, &acked).await;
        }
        wids.push(wid);
    }
    for n in 0..BREADTH_FANS {
        let wid = uuid::Uuid::new_v4().to_string();
        let fan = id("fan");
        cluster
            .ingest(
                &mut rng,
                &[sign("dispatcher", &fan, &wid, "dispatch", &[], false)],
                false,
                &acked,
            )
            .await;
        for sibling in 0..4 {
            let t = sign(
                &format!("fan-{n}-{sibling}"),
                &id("err"),
                &wid,
                "error",
                &[&fan],
                true,
            );
            cluster.ingest(&mut rng, &[t], false, &acked).await;
        }
        wids.push(wid);
    }
    wids
}

/// SIGKILLs a random replica every [`KILL_EVERY`] and starts it again, until `stop`.
async fn killer(
    setup: Arc<ServeSetup>,
    cluster: Arc<Cluster>,
    processes: Arc<tokio::sync::Mutex<Vec<ServeProcess>>>,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> usize {
    let mut kills = 0;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(KILL_EVERY).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let i = rng.below(REPLICAS);
        let mut processes = processes.lock().await;
        cluster.bases.lock().unwrap()[i] = None;
        processes[i].sigkill();
        kills += 1;
        count.store(kills, Ordering::SeqCst);
        let restarted = setup.start(&name(i)).await;
        cluster.bases.lock().unwrap()[i] = Some(restarted.base().to_string());
        processes[i] = restarted;
    }
    kills
}

fn name(i: usize) -> String {
    format!("r{i}")
}

// ---------------------------------------------------------------------------------------------
// Reading the outcome.

/// Every item of a paginated list.
async fn all_items(cluster: &Cluster, rng: &mut Rng, path: &str) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
            None => format!("{path}{sep}limit=1000"),
        };
        let page = cluster.get(rng, &page_path).await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
}

const TERMINAL: &[&str] = &["completed", "partial", "failed", "aborted", "superseded"];

/// Waits until every rollback is terminal and `also()` holds, deciding `abort` for those awaiting
/// a decision (an operator's answer); returns them by id.
async fn settle_rollbacks(
    cluster: &Cluster,
    rng: &mut Rng,
    expected: usize,
    also: impl Fn() -> bool,
) -> HashMap<String, Value> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let items = all_items(cluster, rng, "/v1/rollbacks").await;
        let mut open = Vec::new();
        for item in &items {
            let status = item["status"].as_str().unwrap();
            if status == "awaiting_decision" {
                let id = item["rollback_id"].as_str().unwrap().to_string();
                let path = format!("/v1/rollbacks/{id}/decision");
                let (code, body) = cluster
                    .send(rng, "decision", |c, base| {
                        c.post(format!("{base}{path}"))
                            .bearer_auth(OPERATOR_TOKEN)
                            .json(&json!({"decision": "abort", "comment": "kill test"}))
                    })
                    .await;
                assert!(
                    code == 200 || (code == 409 && body["code"] == "not_awaiting_decision"),
                    "decision on {id}: {code} {body}"
                );
            }
            if !TERMINAL.contains(&status) {
                open.push(format!("{} {status}", item["rollback_id"]));
            }
        }
        if open.is_empty() && items.len() >= expected && also() {
            return items
                .into_iter()
                .map(|r| (r["rollback_id"].as_str().unwrap().to_string(), r))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "rollbacks not terminal after {SETTLE_LIMIT:?}: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn db(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(url).await.unwrap()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sigkilled_under_load_lose_nothing() {
    if common::postgres_admin_url().is_none() {
        eprintln!(
            "replicas_sigkilled_under_load_lose_nothing: skipped, replicas share a PostgreSQL \
             database (set {})",
            common::POSTGRES_ENV
        );
        return;
    }
    let started = Instant::now();
    let seed = std::env::var("REPLICAS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("replicas: seed {seed} (REPLICAS_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let receiver = Receiver::start().await;
    // No key file: the replicas share the key kept in the store.
    let extra: &'static str = Box::leak(
        format!(
            r#"
[rollback]
lease_s = 3
poll_ms = 200
agent_timeout_ms = 10000
step_deadline_s = 20
requests_per_s = 1000
requests_burst = 1000
max_active = 64

[circuit]
min_calls = 5
cooldown_s = 600
max_cooldown_s = 600

[hitl]
retry_initial_ms = 100
retry_max_s = 1
timeout_ms = 1000
poll_ms = 200

[[hitl.webhooks]]
url = "{url}"
secret = "{SECRET}"
"#,
            url = receiver.url
        )
        .into_boxed_str(),
    );
    let setup = Arc::new(
        ServeSetup::new(ServeOptions {
            database: Some(DbKind::Postgres),
            shared_key: false,
            extra,
        })
        .await,
    );
    let db_url = setup.database_url.clone().unwrap();
    let mut processes = Vec::new();
    for i in 0..REPLICAS {
        processes.push(setup.start(&name(i)).await);
    }
    let cluster = Arc::new(Cluster {
        bases: Mutex::new(
            processes
                .iter()
                .map(|p| Some(p.base().to_string()))
                .collect(),
        ),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap(),
        retries: AtomicU64::new(0),
        server_errors: Mutex::default(),
    });

    // Agents: two fast, two slow, one failing its first two calls (retried, too few to open its
    // breaker), one failing every call (its breaker opens).
    let behaviours = [
        ("fast-1", ""),
        ("fast-2", ""),
        ("slow-1", "slow:1200"),
        ("slow-2", "slow:600"),
        ("flaky", "fail:2"),
        ("broken", "fail:1000000"),
    ];
    let mut agents: HashMap<&str, Arc<TestAgent>> = HashMap::new();
    for (n, behaviour) in behaviours {
        let agent = setup
            .start_reference_agent(&processes[0], n, behaviour)
            .await;
        agents.insert(n, Arc::new(agent));
    }
    let processes = Arc::new(tokio::sync::Mutex::new(processes));
    let acked: Arc<Acked> = Arc::default();

    let stop = Arc::new(AtomicBool::new(false));
    let kill_count = Arc::new(AtomicUsize::new(0));
    let kills = tokio::spawn(killer(
        setup.clone(),
        cluster.clone(),
        processes.clone(),
        rng.fork(),
        stop.clone(),
        kill_count.clone(),
    ));

    let healthy = ["fast-1", "fast-2", "slow-1", "slow-2", "flaky"];
    let mut workflow_tasks = Vec::new();
    for i in 0..WORKFLOWS {
        let a = agents[healthy[rng.below(healthy.len())]].clone();
        let b = if i < BROKEN_WORKFLOWS {
            agents["broken"].clone()
        } else {
            agents[healthy[rng.below(healthy.len())]].clone()
        };
        workflow_tasks.push(tokio::spawn(rollbacks_of_one_workflow(
            cluster.clone(),
            rng.fork(),
            a,
            b,
            acked.clone(),
            WORKFLOW_STAGGER * i as u32,
        )));
    }
    let mut ingest_tasks = Vec::new();
    for _ in 0..INGESTERS {
        let plain: Vec<Arc<TestAgent>> = ["fast-1", "fast-2", "slow-1"]
            .iter()
            .map(|n| agents[n].clone())
            .collect();
        ingest_tasks.push(tokio::spawn(ingest_load(
            cluster.clone(),
            rng.fork(),
            plain,
            acked.clone(),
        )));
    }
    let cascade_task = tokio::spawn(cascade_load(
        cluster.clone(),
        rng.fork(),
        setup.agent_key.clone(),
        acked.clone(),
    ));

    let mut requests: Vec<Request> = Vec::new();
    for t in workflow_tasks {
        requests.extend(t.await.unwrap());
    }
    for t in ingest_tasks {
        t.await.unwrap();
    }
    let cascade_wids = cascade_task.await.unwrap();
    eprintln!(
        "replicas: load sent after {:?}: {} rollback requests",
        started.elapsed(),
        requests.len()
    );

    // Keep killing while the rollbacks run, then let the replicas finish.
    let accepted: Vec<&Request> = requests
        .iter()
        .filter(|r| r.refused_for.is_none())
        .collect();
    settle_rollbacks(&cluster, &mut rng, accepted.len(), || {
        kill_count.load(Ordering::SeqCst) >= MIN_KILLS
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let kills = kills.await.unwrap();
    eprintln!("replicas: {kills} SIGKILLs after {:?}", started.elapsed());

    let rollbacks = settle_rollbacks(&cluster, &mut rng, accepted.len(), || true).await;
    let mut full = HashMap::new();
    for id in rollbacks.keys() {
        let body = cluster.get(&mut rng, &format!("/v1/rollbacks/{id}")).await;
        full.insert(id.clone(), body);
    }
    eprintln!(
        "replicas: every rollback terminal after {:?}",
        started.elapsed()
    );

    for body in full.values() {
        if matches!(
            body["status"].as_str(),
            Some("partial" | "failed" | "aborted")
        ) {
            let steps: Vec<String> = body["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|st| {
                    format!(
                        "{} {}/{} {}",
                        st["agent"], st["prepare_status"], st["execute_status"], st["error"]
                    )
                })
                .collect();
            eprintln!(
                "replicas: {} {} {}: {steps:?}",
                body["status"], body["scope"], body["rollback_id"]
            );
        }
    }

    // -- Every accepted request is a stored rollback, and nothing else is.
    let accepted_ids: HashSet<&str> = accepted.iter().map(|r| r.rollback_id.as_str()).collect();
    let stored_ids: HashSet<&str> = full.keys().map(String::as_str).collect();
    assert_eq!(
        accepted_ids, stored_ids,
        "accepted requests = stored rollbacks"
    );
    for r in requests.iter().filter(|r| r.refused_for.is_some()) {
        assert!(
            !stored_ids.contains(r.rollback_id.as_str()),
            "refused {r:?} is stored"
        );
    }
    let by_id: HashMap<&str, &Request> = requests
        .iter()
        .map(|r| (r.rollback_id.as_str(), r))
        .collect();

    // -- Precedence (design.md §7). A refused request names an active rollback of its workflow
    // that shares a checkpoint with it and has at least its scope (broader, or equal and
    // earlier). A superseded rollback names a rollback of its workflow with a strictly broader
    // scope that shares a checkpoint with it. Steps a superseding rollback reused were not
    // executed again for it.
    let shares = |x: &Request, y: &Request| x.covers.iter().any(|c| y.covers.contains(c));
    let mut refused = 0;
    for r in &requests {
        let Some(winner) = &r.refused_for else {
            continue;
        };
        refused += 1;
        let w = by_id
            .get(winner.as_str())
            .unwrap_or_else(|| panic!("{r:?} refused for an unknown rollback"));
        assert_eq!(w.wid, r.wid, "{r:?} refused for another workflow's {w:?}");
        assert!(w.refused_for.is_none(), "{r:?} refused for refused {w:?}");
        assert!(
            shares(r, w),
            "{r:?} refused for {w:?}, which shares no checkpoint"
        );
        assert!(
            rank(w.scope) >= rank(r.scope),
            "{r:?} refused for narrower {w:?}"
        );
    }
    let mut superseded = 0;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for (id, body) in &full {
        let status = body["status"].as_str().unwrap();
        *statuses.entry(status.to_string()).or_default() += 1;
        let me = by_id[id.as_str()];
        assert_eq!(body["scope"], me.scope, "{body}");
        if status == "superseded" {
            superseded += 1;
            let by = body["superseded_by"]
                .as_str()
                .unwrap_or_else(|| panic!("superseded without superseded_by: {body}"));
            let winner = by_id[by];
            assert_eq!(winner.wid, me.wid, "{body}");
            assert!(winner.refused_for.is_none(), "{body}");
            assert!(shares(me, winner), "{body}");
            assert!(
                rank(winner.scope) > rank(me.scope),
                "{me:?} superseded by {winner:?}, not broader"
            );
        }
    }

    // -- No agent executed a checkpoint twice for one rollback_id; reused steps not at all.
    let mut executed: HashMap<(String, String), usize> = HashMap::new();
    for agent in agents.values() {
        for pair in agent.controls.calls()["executed"].as_array().unwrap() {
            let key = (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            );
            *executed.entry(key).or_default() += 1;
        }
    }
    let twice: Vec<_> = executed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
    for (id, body) in &full {
        for step in body["steps"].as_array().unwrap() {
            if step["reused_from"].is_string() {
                let cp = step["checkpoint_id"].as_str().unwrap().to_string();
                assert!(
                    !executed.contains_key(&(id.clone(), cp)),
                    "reused step executed again: {body}"
                );
            }
        }
    }

    // -- Exactly one rollback_complete per rollback, naming its final status.
    let completes = all_items(
        &cluster,
        &mut rng,
        "/v1/ects?exec_act=rollback_complete&iss=spiffe://unwind.local/coordinator",
    )
    .await;
    let mut complete_of: HashMap<String, Vec<&Value>> = HashMap::new();
    for ect in &completes {
        let id = ect["ext"]["cascade.rollback_id"]
            .as_str()
            .unwrap()
            .to_string();
        complete_of.entry(id).or_default().push(ect);
    }
    for (id, body) in &full {
        let mine = complete_of.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(mine.len(), 1, "rollback_complete of {id}: {mine:?}");
        assert_eq!(mine[0]["ext"]["cascade.status"], body["status"], "{body}");
        assert_eq!(
            body["evidence"]["rollback_complete"], mine[0]["jti"],
            "{body}"
        );
    }
    assert_eq!(
        complete_of.len(),
        full.len(),
        "rollback_complete of unknown rollbacks"
    );

    // -- Every acknowledged ECT is stored exactly once, in one gapless chain that verifies.
    let store = unwind::store::connect(&db_url).await.unwrap();
    let chain = common::walk_chain(store.as_ref()).await;
    let mut in_chain: HashMap<&str, usize> = HashMap::new();
    for jti in &chain {
        *in_chain.entry(jti.as_str()).or_default() += 1;
    }
    assert!(in_chain.values().all(|n| *n == 1), "a jti chained twice");
    assert_eq!(chain.len() as i64, store.count_ects().await.unwrap());
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|j| !in_chain.contains_key(j.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let head = cluster.get(&mut rng, "/v1/ledger/head").await;
    assert_eq!(head["seq"], chain.len(), "{head}");

    // -- One cascade alert per (wid, pattern, root cause), one cascade_detected ECT each.
    let alerts = all_items(&cluster, &mut rng, "/v1/cascades").await;
    let mut seen = HashSet::new();
    for alert in &alerts {
        let key = (
            alert["wid"].to_string(),
            alert["pattern"].to_string(),
            alert["root_cause_ect"].to_string(),
        );
        assert!(seen.insert(key), "alert raised twice: {alert}");
    }
    let detected = all_items(&cluster, &mut rng, "/v1/ects?exec_act=cascade_detected").await;
    assert_eq!(
        detected.len(),
        alerts.len(),
        "cascade_detected ECTs vs alerts"
    );
    let alerted: HashSet<&str> = alerts.iter().filter_map(|a| a["wid"].as_str()).collect();
    let missed: Vec<&String> = cascade_wids
        .iter()
        .filter(|w| !alerted.contains(w.as_str()))
        .collect();
    assert!(missed.is_empty(), "cascades without an alert: {missed:?}");
    // The chains come first, then the fans: each raised its own pattern.
    let (chains, fans) = cascade_wids.split_at(DEPTH_CHAINS);
    for (wids, pattern) in [(chains, "depth_first"), (fans, "breadth_first")] {
        for w in wids {
            assert!(
                alerts
                    .iter()
                    .any(|a| a["wid"] == w.as_str() && a["pattern"] == pattern),
                "{w}: no {pattern} alert: {alerts:?}"
            );
        }
    }

    // -- The broken agent's breaker, opened by one replica, is open on all of them.
    let broken = agent_id("broken");
    let processes = processes.lock().await;
    for p in processes.iter() {
        let body = p.get("/.well-known/cascade/circuits").await;
        let circuit = body["circuits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["downstream_agent"] == broken.as_str())
            .unwrap_or_else(|| panic!("{}: no breaker for {broken}: {body}", p.base()));
        assert_eq!(circuit["state"], "open", "{}: {circuit}", p.base());
    }

    // Rollbacks claimed more than once: taken over after a kill (or handed on at a step).
    let (reclaimed,): (i64,) = sqlx::query_as("SELECT count(*) FROM rollbacks WHERE fence > 1")
        .fetch_one(&mut db(&db_url).await)
        .await
        .unwrap();

    // -- No replica panicked (their logs are kept across restarts).
    for p in processes.iter() {
        assert!(
            !p.logs().contains("panicked at"),
            "{}:\n{}",
            p.base(),
            p.logs()
        );
    }

    // -- Every webhook event the store recorded was delivered at least once.
    let deadline = Instant::now() + SETTLE_LIMIT;
    let events: Vec<(String, String)> = loop {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT event_id, event_type, state FROM webhook_outbox")
                .fetch_all(&mut db(&db_url).await)
                .await
                .unwrap();
        if rows.iter().all(|r| r.2 == "delivered") || Instant::now() > deadline {
            break rows.into_iter().map(|r| (r.0, r.1)).collect();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let received: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["id"].as_str().unwrap().to_string()
        })
        .collect();
    let undelivered: Vec<&(String, String)> = events
        .iter()
        .filter(|(id, _)| !received.contains(id))
        .collect();
    assert!(
        undelivered.is_empty(),
        "webhook events never delivered: {undelivered:?}"
    );
    assert!(
        !events.is_empty(),
        "no webhook events: the test proves nothing"
    );

    eprintln!(
        "replicas: seed {seed}, {kills} SIGKILLs, {} rollback requests ({} accepted, {refused} \
         refused for a conflict, {superseded} superseded; {statuses:?}), {} executions, {} ECTs \
         acknowledged ({} in the chain), {} webhook events, {} cascade alerts ({} of {} \
         workflows without one), {} requests sent again, {} 5xx answers, {reclaimed} rollbacks claimed more than once; {:?}",
        requests.len(),
        accepted.len(),
        executed.len(),
        acked.len(),
        chain.len(),
        events.len(),
        alerts.len(),
        missed.len(),
        cascade_wids.len(),
        cluster.retries.load(Ordering::Relaxed),
        cluster.server_errors.lock().unwrap().len(),
        started.elapsed()
    );
    assert!(
        kills >= MIN_KILLS,
        "too few kills ({kills}) to prove anything"
    );
    assert!(refused + superseded > 0, "no conflict was exercised");
    let server_errors = cluster.server_errors.lock().unwrap().clone();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:#?}");
    assert!(
        reclaimed >= 1,
        "{kills} SIGKILLs while rollbacks ran, yet no rollback was taken over"
    );
}
