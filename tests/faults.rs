//! Fault injection with real parts: agents behind a TCP proxy that resets connections, cuts
//! answers, answers garbage, 5xx or never; agents that answer slowly; PostgreSQL stopped and
//! started again under a running `unwind serve`; agents whose clocks run ahead of or behind the
//! coordinator's. Faults other tests already inject are listed, with their test names, in
//! docs/reliability.md ("Faults").

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agents::*;
use common::pg_cluster::PgCluster;
use common::process::{ServeOptions, ServeSetup};
use common::server::*;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use unwind::config::Config;
use unwind_agent::reference::{Controls, ReferenceHandler};

// ---------------------------------------------------------------------------------------------
// A proxy in front of a real agent that injects one fault into its protocol calls.

/// What the proxy does to a request instead of passing it to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Reads the request, then resets the connection (RST, `SO_LINGER` 0) without answering.
    Reset,
    /// Passes the request to the agent, which acts on it, relays half of its answer, then
    /// resets the connection.
    CutAnswer,
    /// 200 with an HTML body.
    Garbage,
    /// 200 with JSON of the wrong shape (no `status`).
    WrongShape,
    /// 503 with a problem body.
    Unavailable,
    /// Reads the request and never answers.
    Hang,
}

/// Which protocol call a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prepare,
    Execute,
}

/// The fault, the call it hits and how many more times (`None`: every time).
struct Plan {
    fault: Fault,
    phase: Phase,
    remaining: Option<u32>,
    injected: u32,
}

impl Plan {
    fn take(&mut self, phase: Phase) -> Option<Fault> {
        if phase != self.phase || self.remaining == Some(0) {
            return None;
        }
        if let Some(n) = self.remaining.as_mut() {
            *n -= 1;
        }
        self.injected += 1;
        Some(self.fault)
    }
}

/// Listens on 127.0.0.1 and serves each connection one request: faulted as planned, or passed
/// to the agent with `connection: close`, so that every call opens its own connection and
/// meets the plan.
struct FaultProxy {
    uri: String,
    plan: Arc<Mutex<Plan>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    async fn start(agent_uri: &str, fault: Fault, phase: Phase, times: Option<u32>) -> Self {
        let upstream: std::net::SocketAddr = agent_uri
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!(
            "http://{}/.well-known/cascade/rollback",
            listener.local_addr().unwrap()
        );
        let plan = Arc::new(Mutex::new(Plan {
            fault,
            phase,
            remaining: times,
            injected: 0,
        }));
        let shared = plan.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_one(conn, upstream, shared.clone()));
            }
        });
        FaultProxy { uri, plan, task }
    }

    fn injected(&self) -> u32 {
        self.plan.lock().unwrap().injected
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head and `content-length` body); `None` when the peer went away first.
async fn read_request(conn: &mut TcpStream) -> Option<(Vec<u8>, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    Some((buf, path))
}

/// Sends `request` to the agent with `connection: close` and reads its whole answer.
async fn forward(request: &[u8], upstream: std::net::SocketAddr) -> Option<Vec<u8>> {
    let line_end = find(request, b"\r\n")? + 2;
    let mut out = request[..line_end].to_vec();
    out.extend_from_slice(b"connection: close\r\n");
    out.extend_from_slice(&request[line_end..]);
    let mut agent = TcpStream::connect(upstream).await.ok()?;
    agent.write_all(&out).await.ok()?;
    let mut answer = Vec::new();
    agent.read_to_end(&mut answer).await.ok()?;
    Some(answer)
}

/// Closes with RST instead of FIN.
fn reset(conn: TcpStream) {
    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    drop(conn);
}

async fn answer(conn: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(text.as_bytes()).await;
    let _ = conn.shutdown().await;
}

async fn serve_one(mut conn: TcpStream, upstream: std::net::SocketAddr, plan: Arc<Mutex<Plan>>) {
    let Some((request, path)) = read_request(&mut conn).await else {
        return;
    };
    let phase = if path.ends_with("/prepare") {
        Phase::Prepare
    } else {
        Phase::Execute
    };
    let fault = plan.lock().unwrap().take(phase);
    match fault {
        None => {
            if let Some(reply) = forward(&request, upstream).await {
                let _ = conn.write_all(&reply).await;
            }
            let _ = conn.shutdown().await;
        }
        Some(Fault::Reset) => reset(conn),
        Some(Fault::CutAnswer) => {
            if let Some(reply) = forward(&request, upstream).await {
                let _ = conn.write_all(&reply[..reply.len() / 2]).await;
            }
            reset(conn);
        }
        Some(Fault::Garbage) => {
            let body = "<html><body>502 Bad Gateway</body></html>";
            answer(&mut conn, "200 OK", "text/html", body).await;
        }
        Some(Fault::WrongShape) => {
            let body = r#"{"state":"done","result":{"ok":true}}"#;
            answer(&mut conn, "200 OK", "application/json", body).await;
        }
        Some(Fault::Unavailable) => {
            let body = r#"{"status":503,"code":"unavailable","title":"try later"}"#;
            answer(
                &mut conn,
                "503 Service Unavailable",
                "application/problem+json",
                body,
            )
            .await;
        }
        Some(Fault::Hang) => {
            let _held = conn;
            std::future::pending::<()>().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Agent faults, table-driven: each row is its own agent, workflow and rollback, all at once.

/// Calls time out after 1 s, steps give up after 5 s; a breaker opens once three calls in its
/// window fail at half or more, and stays open for the rest of the test.
fn fault_config(c: &mut Config) {
    short(c);
    c.rollback.agent_timeout_ms = 1000;
    c.rollback.step_deadline_s = 5;
    c.circuit.window_s = 60;
    c.circuit.min_calls = 3;
    c.circuit.error_threshold = 0.5;
    c.circuit.cooldown_s = 120;
    c.circuit.max_cooldown_s = 240;
}

const FAULTS: [Fault; 6] = [
    Fault::Reset,
    Fault::CutAnswer,
    Fault::Garbage,
    Fault::WrongShape,
    Fault::Unavailable,
    Fault::Hang,
];

struct Row {
    name: String,
    /// A fault injected by a proxy: (fault, call, times; `None` = every call).
    proxy: Option<(Fault, Phase, Option<u32>)>,
    /// The reference agent's behaviour (`slow:<ms>`).
    behaviour: &'static str,
    /// The fault ends before the step's deadline: the rollback completes.
    heals: bool,
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for fault in FAULTS {
        for phase in [Phase::Prepare, Phase::Execute] {
            rows.push(Row {
                name: format!("{fault:?}-{phase:?}-once").to_lowercase(),
                proxy: Some((fault, phase, Some(1))),
                behaviour: "",
                heals: true,
            });
        }
        rows.push(Row {
            name: format!("{fault:?}-always").to_lowercase(),
            proxy: Some((fault, Phase::Prepare, None)),
            behaviour: "",
            heals: false,
        });
    }
    rows.push(Row {
        name: "slow-under-timeout".into(),
        proxy: None,
        behaviour: "slow:400",
        heals: true,
    });
    rows.push(Row {
        name: "slow-over-timeout".into(),
        proxy: None,
        behaviour: "slow:2500",
        heals: false,
    });
    rows
}

/// The `circuit_breaker_open` ECTs naming `agent`.
async fn breaker_opens(s: &TestServer, agent: &str) -> Vec<Value> {
    let (status, body) = s
        .get_json("/v1/ects?exec_act=circuit_breaker_open&limit=1000")
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["claims"]["ext"]["cascade.downstream_agent"] == agent)
        .cloned()
        .collect()
}

/// The circuits endpoint's state for `agent` (`None` when it has no breaker yet).
async fn breaker_state(s: &TestServer, agent: &str) -> Option<String> {
    let (status, body) = s.get_json("/.well-known/cascade/circuits").await;
    assert_eq!(status, 200, "{body}");
    body["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["downstream_agent"] == agent)
        .map(|c| c["state"].as_str().unwrap().to_string())
}

/// Restores the agent ran, as (rollback_id, checkpoint_id).
fn executed(a: &TestAgent) -> Vec<Value> {
    a.controls.calls()["executed"].as_array().unwrap().clone()
}

async fn run_row(s: &TestServer, row: &Row) {
    let ctx = format!("{}: {}", s.name, row.name);
    let log = Log::default();
    let a = start_agent(s, &row.name, row.behaviour, 0, &log).await;
    let proxy = match row.proxy {
        Some((fault, phase, times)) => Some(FaultProxy::start(&a.uri, fault, phase, times).await),
        None => None,
    };
    let uri = proxy.as_ref().map_or(a.uri.clone(), |p| p.uri.clone());
    let wid = wid();
    let (cp, token) = a
        .agent
        .checkpoint(
            b"state v1",
            3600,
            Some("router-1"),
            true,
            &wid,
            &[],
            Some(&uri),
        )
        .await
        .unwrap();
    s.ingest_ok(&[token]).await;
    let id = accepted(s, json!({"checkpoint_id": cp.jti, "scope": "single"})).await;
    let agent = agent_id(&row.name);

    let states = ["awaiting_decision", "completed", "partial", "failed"];
    let reached = wait_for(s, &id, &states).await;
    let st = step(&reached, &cp.jti);
    let start = reached["evidence"]["rollback_start"].as_str().unwrap();
    let (status, _) = s.get_json(&format!("/v1/ects/{start}")).await;
    assert_eq!(status, 200, "{ctx}: rollback_start recorded");
    if let Some(p) = &proxy {
        assert!(p.injected() >= 1, "{ctx}: the fault was never injected");
    }

    if row.heals {
        assert_eq!(reached["status"], "completed", "{ctx}: {reached}");
        assert_eq!(st["prepare_status"], "prepared", "{ctx}: {st}");
        assert_eq!(st["execute_status"], "completed", "{ctx}: {st}");
        // Every call counts, the failed one too.
        let expected = if row.proxy.is_some() { 3 } else { 2 };
        assert_eq!(st["attempts"], json!(expected), "{ctx}: {st}");
        assert_eq!(
            executed(&a),
            vec![json!([id, cp.jti])],
            "{ctx}: restored exactly once"
        );
        assert_eq!(complete_status(s, &reached).await, "completed", "{ctx}");
        assert!(breaker_opens(s, &agent).await.is_empty(), "{ctx}");
        let state = breaker_state(s, &agent).await;
        assert!(
            matches!(state.as_deref(), None | Some("closed")),
            "{ctx}: {state:?}"
        );
        return;
    }

    // The fault outlasts the step's deadline: the critical step is unreachable and a person
    // decides; the breaker opened on the way, with its evidence.
    assert_eq!(reached["status"], "awaiting_decision", "{ctx}: {reached}");
    assert_eq!(st["prepare_status"], "unreachable", "{ctx}: {st}");
    assert_eq!(st["execute_status"], "pending", "{ctx}: {st}");
    assert!(st["error"]["code"].is_string(), "{ctx}: {st}");
    assert!(st["attempts"].as_u64().unwrap() >= 3, "{ctx}: {st}");
    let opens = breaker_opens(s, &agent).await;
    assert_eq!(opens.len(), 1, "{ctx}: {opens:?}");
    assert_eq!(opens[0]["par"], json!([start]), "{ctx}");
    assert_eq!(
        breaker_state(s, &agent).await.as_deref(),
        Some("open"),
        "{ctx}"
    );
    assert!(executed(&a).is_empty(), "{ctx}: nothing restored");

    assert_eq!(decide(s, &id, "abort").await.status(), 200, "{ctx}");
    let done = wait_for(s, &id, TERMINAL).await;
    assert_eq!(done["status"], "aborted", "{ctx}: {done}");
    assert_eq!(complete_status(s, &done).await, "aborted", "{ctx}");
    assert!(executed(&a).is_empty(), "{ctx}: nothing restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_faults_end_in_their_documented_outcomes() {
    let rows = rows();
    for s in servers_with(fault_config).await {
        futures::future::join_all(rows.iter().map(|row| run_row(&s, row))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL stopped (immediate: as if it crashed) and started again under `unwind serve`.

/// How long an API call may take while the database is down: the pool's acquire timeout
/// (10 s) with room for a loaded machine.
const PROMPT: Duration = Duration::from_secs(15);

/// A restore long enough to stop the database while it runs.
const RESTORE: Duration = Duration::from_millis(1500);

/// Batches of two tokens (a parent and its child) posted one after another until `stop`;
/// returns each batch's jtis, tokens and answer status.
type Sent = Vec<(Vec<(String, String)>, u16, Value)>;

async fn ingest_until(
    client: reqwest::Client,
    url: String,
    agent: unwind_agent::Agent,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Sent {
    let wid = wid();
    let mut sent = Sent::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let sign = |parents: &[String]| {
            let token = agent
                .action_ect("step", Some(&wid), parents, Map::new())
                .unwrap();
            let (_, claims) = unwind::ect::jws::decode_unverified(&token).unwrap();
            (claims["jti"].as_str().unwrap().to_string(), token)
        };
        let parent = sign(&[]);
        let child = sign(std::slice::from_ref(&parent.0));
        let started = Instant::now();
        let r = client
            .post(&url)
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"tokens": [parent.1, child.1]}))
            .send()
            .await
            .unwrap();
        assert!(
            started.elapsed() < PROMPT,
            "ingest took {:?}",
            started.elapsed()
        );
        let status = r.status().as_u16();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        sent.push((vec![parent, child], status, body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sent
}

/// GET without credentials or with the operator token; status, problem `code` and how long it
/// took. Panics when no answer comes within [`PROMPT`].
async fn timed_get(client: &reqwest::Client, url: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(PROMPT, client.get(url).bearer_auth(OPERATOR_TOKEN).send())
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within {PROMPT:?}"))
        .unwrap();
    let status = r.status().as_u16();
    let problem = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert!(problem, "GET {url}: {status} is not problem+json: {body}");
    }
    (status, body, started.elapsed())
}

/// Polls `url` until it answers `want`; panics after `limit`.
async fn until_status(client: &reqwest::Client, url: &str, want: u16, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body, _) = timed_get(client, url).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url}: still {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the restore log holds `n` entries of `kind` ("start" | "end").
async fn until_logged(log: &Log, kind: &str, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while log.lock().unwrap().iter().filter(|e| e.1 == kind).count() < n {
        assert!(
            Instant::now() < deadline,
            "no restore {kind} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_rollback_loses_nothing() {
    let Some(pg) = PgCluster::start().await else {
        return;
    };
    let setup = ServeSetup::on_url(
        &pg.url(),
        ServeOptions {
            extra: "\n[rollback]\nlease_s = 3\npoll_ms = 200\nagent_timeout_ms = 5000\n",
            ..ServeOptions::default()
        },
    )
    .await;
    let c = setup.start("one").await;
    let log = Log::default();
    let mut agents = Vec::new();
    for name in ["a", "b"] {
        let controls = Controls::new(Default::default());
        let handler = Arc::new(Timed {
            name: name.to_string(),
            inner: ReferenceHandler::new(controls.clone()),
            log: log.clone(),
            delay: RESTORE,
        });
        agents.push(setup.start_agent(&c, name, handler, controls).await);
    }
    let (a, b) = (&agents[0], &agents[1]);
    let wid = wid();
    let figure = c.seed_figure(a, b, &wid).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ingest = tokio::spawn(ingest_until(
        client.clone(),
        c.url("/v1/ects"),
        a.agent.clone(),
        stop.clone(),
    ));

    let (status, body) = c
        .post(
            "/v1/rollbacks",
            json!({"checkpoint_id": figure.cp_a, "scope": "sub_dag", "reason": "pg restart"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["rollback_id"].as_str().unwrap().to_string();

    // B's restore is running: the database goes away.
    until_logged(&log, "start", 1, Duration::from_secs(30)).await;
    pg.stop_immediate().await;
    let down = Instant::now();

    let (status, _, took) = timed_get(&client, &c.url("/healthz")).await;
    assert_eq!(status, 200, "/healthz while the database is down");
    assert!(took < Duration::from_secs(2), "/healthz took {took:?}");
    let not_ready = until_status(&client, &c.url("/readyz"), 503, Duration::from_secs(10)).await;
    assert_eq!(not_ready["code"], "not_ready", "{not_ready}");
    let red_after = down.elapsed();
    assert!(red_after < Duration::from_secs(10), "{red_after:?}");
    let mut slowest = Duration::ZERO;
    for path in [
        format!("/v1/rollbacks/{id}"),
        "/v1/ects?limit=5".to_string(),
    ] {
        let (status, body, took) = timed_get(&client, &c.url(&path)).await;
        assert_eq!(
            (status, body["code"].clone()),
            (503, json!("unavailable")),
            "{path}: {body}"
        );
        assert!(took < PROMPT, "{path} took {took:?}");
        slowest = slowest.max(took);
    }
    // Down long enough that B's restore ends (its result cannot be written) and the
    // rollback's lease runs out.
    until_logged(&log, "end", 1, Duration::from_secs(30)).await;
    let outage = Duration::from_secs(5);
    if let Some(rest) = outage.checked_sub(down.elapsed()) {
        tokio::time::sleep(rest).await;
    }

    pg.start_again().await;
    let up = Instant::now();
    until_status(&client, &c.url("/readyz"), 200, Duration::from_secs(30)).await;
    let green_after = up.elapsed();
    let done = c.wait_for(&id, TERMINAL, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", c.logs());
    let completed_after = up.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = ingest.await.unwrap();

    // Each restore ran exactly once: the retried execute got the agent's stored answer.
    for agent in [a, b] {
        let runs = agent.controls.calls()["executed"].as_array().unwrap().len();
        assert_eq!(
            runs,
            1,
            "{}: restores {:?}",
            agent.uri,
            agent.controls.calls()
        );
    }
    // One rollback_complete, signed once.
    let completes = c
        .get(&format!(
            "/v1/ects?wid={wid}&exec_act=rollback_complete&limit=100"
        ))
        .await;
    let coordinator = completes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["iss"] == common::process::COORDINATOR_ID)
        .count();
    assert_eq!(coordinator, 1, "{completes}");

    // Every acknowledged batch is stored whole; a refused one is stored whole or not at all;
    // refusals were 503 `unavailable`, nothing else.
    let (mut acked, mut refused) = (0, 0);
    for (batch, status, body) in &sent {
        let mut stored = 0;
        for (jti, token) in batch {
            let r = client
                .get(c.url(&format!("/v1/ects/{jti}")))
                .bearer_auth(OPERATOR_TOKEN)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                let ect: Value = r.json().await.unwrap();
                assert_eq!(ect["token"], json!(token), "{jti}");
                stored += 1;
            }
        }
        if *status == 200 {
            acked += 1;
            assert_eq!(stored, batch.len(), "acknowledged but not stored: {body}");
        } else {
            refused += 1;
            assert_eq!(
                (*status, body["code"].clone()),
                (503, json!("unavailable")),
                "{body}"
            );
            assert!(stored == 0 || stored == batch.len(), "half a batch stored");
        }
    }
    assert!(
        acked >= 2 && refused >= 1,
        "acked {acked}, refused {refused}"
    );
    eprintln!(
        "database down {outage:?}: /readyz 503 after {red_after:?}, API answers within \
         {slowest:?}; /readyz 200 {green_after:?} after the restart; rollback completed \
         {:?} after it; ingest batches: {acked} acknowledged, {refused} refused",
        completed_after
    );

    // The ledger's hash chain holds across the restart.
    let export = setup.dir.path().join("after-restart.json");
    let out = c
        .cli(
            setup.dir.path(),
            &["export", "--wid", &wid, "--out", export.to_str().unwrap()],
        )
        .await
        .ok();
    drop(out);
    let mut verify = common::process::unwind();
    verify.arg("verify").arg(&export);
    let audit = common::process::run_cli(verify).await;
    assert_eq!(audit.code, Some(0), "{}\n{}", audit.stdout, audit.stderr);
}

/// PostgreSQL ends the connection of a request in flight (`pg_terminate_backend`, as a fast
/// shutdown or an administrator does): the request answers 503 `unavailable`, not 500, stores
/// nothing, and the same token is accepted once the database is back.
#[tokio::test]
async fn connections_cut_by_postgresql_answer_unavailable() {
    use sqlx::Connection as _;
    for s in servers().await {
        if s.name != "postgres" {
            continue;
        }
        // Hold the ledger table, so that an ingest waits in the database.
        let mut locker = sqlx::PgConnection::connect(s.database_url()).await.unwrap();
        sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
        sqlx::query("LOCK TABLE ects IN ACCESS EXCLUSIVE MODE")
            .execute(&mut locker)
            .await
            .unwrap();
        let token = s.sign(&claims("a", "cut-1", &wid(), "act", &[]));
        let waiting = tokio::spawn({
            let (client, url, token) = (s.client.clone(), s.url("/v1/ects"), token.clone());
            async move {
                client
                    .post(url)
                    .bearer_auth(OPERATOR_TOKEN)
                    .header("content-type", "application/jwt")
                    .body(token)
                    .send()
                    .await
                    .unwrap()
            }
        });
        // Once it waits on the lock, end every connection of the service.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiters: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut locker)
            .await
            .unwrap();
            if waiters > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the ingest never waited on the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut locker)
        .await
        .unwrap();
        let r = tokio::time::timeout(PROMPT, waiting)
            .await
            .unwrap()
            .unwrap();
        assert_problem(r, 503, "unavailable", "connection cut").await;
        sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
        let _ = locker.close().await;

        let (status, _) = s.get_json("/v1/ects/cut-1").await;
        assert_eq!(status, 404, "nothing stored");
        assert_eq!(s.post_token(&token).await.status(), 201);
        let (status, _) = s.get_json("/readyz").await;
        assert_eq!(status, 200);
    }
}

// ---------------------------------------------------------------------------------------------
// Clock skew between agents and the coordinator.

/// The coordinator's tolerance (`ect.clock_skew_s`) and the agents' (`VerifyPolicy`), both 60 s.
const SKEW_S: i64 = 60;

/// An agent whose clock runs `offset_s` ahead (negative: behind) of the coordinator's; its
/// action ECTs live 60 s.
async fn skewed_agent(s: &TestServer, name: &str, offset_s: i64) -> TestAgent {
    start_agent_with(s, name, "", 0, &Log::default(), move |b| {
        b.clock_offset_s(offset_s).evidence_ttl_s(60)
    })
    .await
}

#[tokio::test]
async fn ingest_accepts_skew_within_the_tolerance_and_refuses_beyond() {
    assert_eq!(Config::default().ect.clock_skew_s, SKEW_S);
    // (agent clock offset, expected answer): tokens carry iat = the agent's now and
    // exp = iat + 60 s.
    let cases: [(i64, Result<(), &str>); 6] = [
        (45, Ok(())),
        (-45, Ok(())),
        (75, Err("not_yet_valid")),
        // exp = now - 40 s: past, but within the tolerance.
        (-100, Ok(())),
        // exp = now - 70 s: beyond it.
        (-130, Err("expired")),
        (-600, Err("expired")),
    ];
    for s in servers().await {
        for (offset, expected) in cases {
            let name = format!("skew{offset}");
            let a = skewed_agent(&s, &name, offset).await;
            let (jti, token) = a.action(&wid(), "act", &[]);
            let r = s.post_token(&token).await;
            let ctx = format!("{}: agent {offset:+} s", s.name);
            match expected {
                Ok(()) => {
                    assert_eq!(r.status(), 201, "{ctx}: {:?}", r.text().await);
                    let (status, _) = s.get_json(&format!("/v1/ects/{jti}")).await;
                    assert_eq!(status, 200, "{ctx}");
                }
                Err(code) => {
                    assert_problem(r, 422, code, &ctx).await;
                    let (status, _) = s.get_json(&format!("/v1/ects/{jti}")).await;
                    assert_eq!(status, 404, "{ctx}: a refused token is not stored");
                }
            }
        }
    }
}

/// Ingests a checkpoint of `a` (its clock, `ttl_s`) and asks a `single` rollback of it.
async fn rollback_of(s: &TestServer, a: &TestAgent, ttl_s: u64) -> (String, String) {
    let (cp, token) = a.checkpoint_ttl(&wid(), &[], ttl_s).await;
    s.ingest_ok(&[token]).await;
    let id = accepted(s, json!({"checkpoint_id": cp, "scope": "single"})).await;
    (cp, id)
}

#[tokio::test]
async fn agents_verify_the_coordinators_context_with_their_own_clocks() {
    for s in servers_with(short).await {
        // Within the agents' tolerance, either way: the rollback completes.
        for offset in [-30, 45] {
            let ctx = format!("{}: agent {offset:+} s", s.name);
            let a = skewed_agent(&s, &format!("calls{offset}"), offset).await;
            let (cp, id) = rollback_of(&s, &a, 3600).await;
            let done = wait_for(&s, &id, TERMINAL).await;
            assert_eq!(done["status"], "completed", "{ctx}: {done}");
            assert_eq!(step(&done, &cp)["execute_status"], "completed", "{ctx}");
            assert_eq!(a.calls(), (1, 1), "{ctx}");
        }

        // 120 s behind: the rollback_start's iat is beyond the agent's tolerance in its future.
        // The agent refuses the context (401), which is final: cannot_prepare, a person decides.
        let ctx = format!("{}: agent -120 s", s.name);
        let a = skewed_agent(&s, "calls-120", -120).await;
        let (cp, id) = rollback_of(&s, &a, 3600).await;
        let waiting = wait_for(&s, &id, &["awaiting_decision", "completed", "failed"]).await;
        assert_eq!(waiting["status"], "awaiting_decision", "{ctx}: {waiting}");
        let st = step(&waiting, &cp);
        assert_eq!(st["prepare_status"], "cannot_prepare", "{ctx}: {st}");
        let detail = st["error"]["detail"].as_str().unwrap_or("");
        assert!(detail.contains("401"), "{ctx}: {st}");
        assert_eq!(
            st["attempts"],
            json!(1),
            "{ctx}: a 4xx is not retried: {st}"
        );
        assert_eq!(a.calls(), (1, 0), "{ctx}");
        assert!(
            a.controls.calls()["prepare_hooks"] == 0,
            "{ctx}: refused before the hook"
        );
        assert_eq!(decide(&s, &id, "abort").await.status(), 200);
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(complete_status(&s, &done).await, "aborted", "{ctx}");
    }
}

#[tokio::test]
async fn checkpoint_expiry_is_judged_by_the_coordinators_clock() {
    for s in servers_with(short).await {
        // 50 s behind, ttl 30 s: iat + ttl is 20 s past by the coordinator's clock, so the
        // checkpoint is expired and never called, though the agent's clock gives it 30 s more.
        let ctx = format!("{}: agent -50 s, ttl 30 s", s.name);
        let behind = skewed_agent(&s, "ttl-behind", -50).await;
        let (cp, id) = rollback_of(&s, &behind, 30).await;
        let waiting = wait_for(&s, &id, &["awaiting_decision", "completed", "failed"]).await;
        let st = step(&waiting, &cp);
        assert_eq!(st["prepare_status"], "cannot_prepare", "{ctx}: {st}");
        assert_eq!(st["error"]["code"], "checkpoint_expired", "{ctx}: {st}");
        assert_eq!(behind.calls(), (0, 0), "{ctx}: not called");

        // 50 s ahead, ttl 5 s: after 6 s the coordinator still gives it 49 s and calls; the
        // agent, by its clock, finds it expired and cannot prepare.
        let ctx = format!("{}: agent +50 s, ttl 5 s", s.name);
        let ahead = skewed_agent(&s, "ttl-ahead", 50).await;
        let (cp, token) = ahead.checkpoint_ttl(&wid(), &[], 5).await;
        s.ingest_ok(&[token]).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let id2 = accepted(&s, json!({"checkpoint_id": cp, "scope": "single"})).await;
        let waiting = wait_for(&s, &id2, &["awaiting_decision", "completed", "failed"]).await;
        let st = step(&waiting, &cp);
        assert_eq!(st["prepare_status"], "cannot_prepare", "{ctx}: {st}");
        assert_eq!(st["error"]["code"], "cannot_prepare", "{ctx}: {st}");
        assert!(
            st["error"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("checkpoint_expired")),
            "{ctx}: {st}"
        );
        assert_eq!(ahead.calls(), (1, 0), "{ctx}: prepared only");
        assert!(executed(&ahead).is_empty(), "{ctx}");
        for id in [id, id2] {
            assert_eq!(decide(&s, &id, "abort").await.status(), 200, "{ctx}");
            let done = wait_for(&s, &id, TERMINAL).await;
            assert_eq!(complete_status(&s, &done).await, "aborted", "{ctx}");
        }
    }
}
