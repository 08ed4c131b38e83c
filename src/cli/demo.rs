//! `unwind demo`: a guided tour with nothing else installed. It starts the coordinator on the
//! embedded default (SQLite in a fresh data directory) and five reference agents on loopback,
//! records a network change as the agents' ECTs, makes it fail, and shows how Unwind contains
//! it: a circuit breaker, a cascade alert, a two-phase rollback with live progress and a human
//! escalation for the one step that cannot be undone.
//!
//! Every action goes through the public HTTP API (agents post their own tokens, the "operator"
//! uses the admin token), so the tour is also a working example of the protocol. `--script`
//! decides the escalation itself and checks every expected outcome (CI runs it).

pub(crate) mod agents;
mod checks;
mod coordinator;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use self::agents::{DemoAgent, Fleet, Identity, NAMES};
use self::checks::Checklist;
use super::CliError;
use super::client::{Client, ClientArgs, Output};
use crate::config::Config;

/// Options of `unwind demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run unattended: decide the escalation through the API, print a checklist of the
    /// expected outcomes and exit (0 only when every one happened).
    #[arg(long)]
    pub script: bool,
    /// Address of the coordinator (port 0: any free port; the real one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the demo's database, keys and agent stores; recreated at every start
    /// (refused when it holds anything the demo did not make).
    #[arg(long, default_value = "unwind-demo")]
    pub data_dir: PathBuf,
}

/// File that marks a directory as the demo's own, so that only such a directory is removed.
const MARKER: &str = ".unwind-demo";
/// How long any one expected outcome may take before the demo calls it missing.
const OUTCOME_WAIT: Duration = Duration::from_secs(30);
/// Circuit breaker settings that let the tour show a breaker open and close within seconds.
const BREAKER_MIN_CALLS: u64 = 3;
const BREAKER_COOLDOWN_S: u64 = 3;

/// What the tour recorded, for the summary and the checks.
#[derive(Debug, Default)]
struct Story {
    wid: String,
    error_jti: Option<String>,
    router_checkpoint: Option<String>,
    rollback_id: Option<String>,
    breaker_ect: Option<String>,
    cascade_ect: Option<String>,
    escalation_id: Option<String>,
}

/// Everything the phases share.
struct Demo {
    base: String,
    coordinator_id: String,
    data_dir: PathBuf,
    token_file: PathBuf,
    client: Client,
    /// The connection `client` was made from, for the CLI commands the demo reuses.
    client_args: ClientArgs,
    http: reqwest::Client,
    fleet: Fleet,
    ect_config: crate::ect::EctConfig,
    script: bool,
}

pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    // Registered now, so that Ctrl-C at any point stops the demo cleanly.
    let signal = crate::service::shutdown_signal();
    fresh_dir(&args.data_dir).await?;
    let agents_dir = args.data_dir.join("agents");
    let mut identities = Vec::new();
    for name in NAMES {
        identities.push(Identity::create(name, &agents_dir).await?);
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let config = demo_config(addr, &args.data_dir, &identities);
    let coordinator_id = config.coordinator_id.clone();
    let token_file = config.admin_token_path();
    let ect_config = config.ect.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let coordinator = coordinator::start(config, listener, &stop_rx).await?;
    let base = format!("http://{addr}");
    println!("Unwind demo: a network change goes wrong, and Unwind contains it.\n");
    phase(
        1,
        "coordinator",
        &format!(
            "Unwind is up at {base} (SQLite in {}): it keeps the agents' signed records (ECTs) and runs rollbacks",
            args.data_dir.display()
        ),
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| CliError::Failed(format!("HTTP client: {e}")))?;
    let client_args = ClientArgs {
        url: base.clone(),
        token: None,
        data_dir: args.data_dir.clone(),
        output: Output::Text,
    };
    let client = Client::new(&client_args)?;
    let jwks = coordinator::served_jwks(&http, &base).await?;
    let fleet = Fleet::start(identities, &coordinator_id, jwks, &stop_rx).await?;
    phase(
        2,
        "agents",
        &format!(
            "{} serve on 127.0.0.1, each signing with its own key; Unwind trusts exactly those keys, they obey only Unwind",
            NAMES.join(", ")
        ),
    );

    let demo = Demo {
        base,
        coordinator_id,
        data_dir: args.data_dir.clone(),
        token_file,
        client,
        client_args,
        http,
        fleet,
        ect_config,
        script: args.script,
    };
    let mut story = Story {
        wid: format!(
            "netchange-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        ..Story::default()
    };
    let result = tokio::select! {
        r = demo.tour(&mut story) => Some(r),
        _ = signal => None,
    };
    let outcome = match result {
        None if demo.script => Err(CliError::Failed(
            "demo: stopped by a signal before every outcome was checked".into(),
        )),
        None => {
            println!("\nstopped by a signal");
            Ok(())
        }
        Some(Err(e)) if !demo.script => Err(e),
        Some(tour) => {
            if let Err(e) = &tour {
                println!("\nthe tour stopped early: {e}");
            }
            if demo.script {
                let checklist = demo.check(&story).await;
                demo.where_to_look(&story).await;
                checklist.print();
                checklist.verdict()
            } else {
                demo.where_to_look(&story).await;
                demo.serve_until_stopped(&story).await;
                Ok(())
            }
        }
    };
    let _ = stop_tx.send(true);
    coordinator.stopped().await;
    demo.fleet.stopped().await;
    if !demo.script {
        println!(
            "demo stopped; its data stays in {} until the next `unwind demo`",
            demo.data_dir.display()
        );
    }
    outcome
}

/// One short line per phase, saying what happened and why.
fn phase(n: u32, title: &str, text: &str) {
    println!("[{n}/9] {title:<11} {text}");
}

/// The embedded default, trusting the five agents, with a quick breaker so the tour shows it
/// opening and closing.
fn demo_config(addr: SocketAddr, dir: &Path, identities: &[Identity]) -> Config {
    let mut config = Config {
        listen: addr,
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.trust.issuers = identities.iter().map(Identity::trust_entry).collect();
    config.circuit.window_s = 30;
    config.circuit.min_calls = BREAKER_MIN_CALLS;
    config.circuit.cooldown_s = BREAKER_COOLDOWN_S;
    config.circuit.max_cooldown_s = 10;
    config.rollback.agent_timeout_ms = 2000;
    config.rollback.poll_ms = 100;
    config
}

/// Recreates `dir`; a directory that is neither empty nor marked as the demo's is refused.
async fn fresh_dir(dir: &Path) -> Result<(), CliError> {
    let io =
        |what: &str, e: std::io::Error| CliError::Failed(format!("{what} {}: {e}", dir.display()));
    if tokio::fs::try_exists(dir).await.unwrap_or(false) {
        let marked = tokio::fs::try_exists(dir.join(MARKER))
            .await
            .unwrap_or(false);
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| io("reading", e))?;
        let empty = entries
            .next_entry()
            .await
            .map_err(|e| io("reading", e))?
            .is_none();
        if !marked && !empty {
            return Err(CliError::Usage(format!(
                "--data-dir {} holds files the demo did not make; choose another directory",
                dir.display()
            )));
        }
        tokio::fs::remove_dir_all(dir)
            .await
            .map_err(|e| io("removing", e))?;
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io("creating", e))?;
    tokio::fs::write(
        dir.join(MARKER),
        "made by `unwind demo`; removed and recreated at its next start\n",
    )
    .await
    .map_err(|e| io("writing in", e))
}

/// Polls `probe` every 100 ms until it answers `Some`, for at most [`OUTCOME_WAIT`].
async fn wait_for<T, F, Fut>(mut probe: F) -> Result<Option<T>, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, CliError>>,
{
    let deadline = Instant::now() + OUTCOME_WAIT;
    loop {
        if let Some(found) = probe().await? {
            return Ok(Some(found));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

impl Demo {
    fn agent(&self, name: &str) -> Result<&DemoAgent, CliError> {
        self.fleet.get(name)
    }

    /// An agent records its own ECT: the token in the body and in `Execution-Context`, which
    /// is how the coordinator knows who is posting.
    async fn record(&self, token: &str) -> Result<(), CliError> {
        let url = format!("{}/v1/ects", self.base);
        let response = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/jwt")
            .header("Execution-Context", token)
            .body(token.to_string())
            .send()
            .await
            .map_err(|e| CliError::Failed(format!("{url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(CliError::Failed(format!(
            "recording an ECT: HTTP {}: {body}",
            status.as_u16()
        )))
    }

    /// The ECTs Unwind signed in the workflow with this `exec_act`.
    async fn coordinator_ects(&self, wid: &str, exec_act: &str) -> Result<Vec<Value>, CliError> {
        let page = self
            .client
            .get(&["v1", "ects"], &[("wid", wid), ("exec_act", exec_act)])
            .await?;
        Ok(page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["iss"] == self.coordinator_id.as_str())
            .cloned()
            .collect())
    }

    async fn rollback(&self, id: &str) -> Result<Value, CliError> {
        self.client.get(&["v1", "rollbacks", id], &[]).await
    }

    /// The phases of the tour, each printing one line; stops at the first that cannot go on.
    async fn tour(&self, story: &mut Story) -> Result<(), CliError> {
        let wid = story.wid.clone();
        let (planner, approver) = (self.agent("planner")?, self.agent("approver")?);
        let (router, dns, notify) = (
            self.agent("router")?,
            self.agent("dns")?,
            self.agent("notify")?,
        );

        // 3. The workflow, as the agents record it: every consequential action is preceded
        //    by its agent's checkpoint, which names the endpoint that can undo it.
        let ext = |pairs: &[(&str, &str)]| -> Map<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect()
        };
        let (plan, t) = planner.action(
            "plan_change",
            &wid,
            &[],
            ext(&[("change", "move edge traffic to the new uplink")]),
        )?;
        self.record(&t).await?;
        let (approve, t) = approver.action(
            "approve_change",
            &wid,
            &[plan],
            ext(&[("approved_by", "change board")]),
        )?;
        self.record(&t).await?;
        let (cp_router, t) = router
            .checkpoint(
                b"edge-1: uplink a, bgp peers 10.0.0.1 10.0.0.2",
                "edge-1",
                true,
                &wid,
                &[approve],
            )
            .await?;
        self.record(&t).await?;
        let (reconfigure, t) = router.action(
            "reconfigure_router",
            &wid,
            std::slice::from_ref(&cp_router),
            Map::new(),
        )?;
        self.record(&t).await?;
        let (cp_dns, t) = dns
            .checkpoint(
                b"www.example.net A 192.0.2.10",
                "zone example.net",
                true,
                &wid,
                &[reconfigure],
            )
            .await?;
        self.record(&t).await?;
        let (update_dns, t) = dns.action(
            "update_dns",
            &wid,
            std::slice::from_ref(&cp_dns),
            Map::new(),
        )?;
        self.record(&t).await?;
        let (cp_notify, t) = notify
            .checkpoint(
                b"maintenance notice to 1200 customers",
                "customer mailing list",
                false,
                &wid,
                std::slice::from_ref(&update_dns),
            )
            .await?;
        self.record(&t).await?;
        let (sent, t) = notify.action(
            "send_notification",
            &wid,
            std::slice::from_ref(&cp_notify),
            Map::new(),
        )?;
        self.record(&t).await?;
        story.router_checkpoint = Some(cp_router);
        phase(
            3,
            "workflow",
            &format!(
                "{wid}: plan -> approve -> reconfigure router -> update DNS -> notify customers, each change checkpointed first (notify's irreversibly: a sent message stays sent)"
            ),
        );

        // 4. The failure: the router's own check fails, and its management API breaks.
        router
            .behave(&self.http, &format!("fail:{BREAKER_MIN_CALLS}"))
            .await?;
        let (error, t) = router.error(
            "route_check_failed",
            "bgp peer 10.0.0.2 down after the change",
            &wid,
            &[sent],
        )?;
        self.record(&t).await?;
        story.error_jti = Some(error.clone());
        phase(
            4,
            "failure",
            &format!(
                "the router's route check fails after the change (error ECT {error}); its management API answers 500 for a while"
            ),
        );

        // 5. The operator asks for the rollback; the progress is the `rollback watch` view.
        let resource = self
            .client
            .post(
                &["v1", "rollbacks"],
                &json!({
                    "trigger_ect": error,
                    "scope": "sub_dag",
                    "reason": "route check failed after the uplink change",
                }),
            )
            .await?;
        let id = resource["rollback_id"]
            .as_str()
            .ok_or_else(|| CliError::Failed(format!("answer without rollback_id: {resource}")))?
            .to_string();
        story.rollback_id = Some(id.clone());
        phase(
            5,
            "rollback",
            &format!(
                "an operator asks Unwind to undo everything from the router's checkpoint down (sub_dag, {} checkpoints): prepare at every agent, then execute, downstream first",
                resource["steps"].as_array().map_or(0, Vec::len)
            ),
        );
        self.watch(&id).await?;

        // 6. The breaker: the router's failed calls tripped it; Unwind held its calls back.
        let open = wait_for(|| async {
            let ects = self.coordinator_ects(&wid, "circuit_breaker_open").await?;
            Ok(ects
                .into_iter()
                .find(|e| e["ext"]["cascade.downstream_agent"] == router.id()))
        })
        .await?
        .ok_or_else(|| CliError::Failed("no circuit_breaker_open toward the router".into()))?;
        story.breaker_ect = Some(str_of(&open["jti"]));
        let circuits = self
            .client
            .get(&[".well-known", "cascade", "circuits"], &[])
            .await?;
        let now = circuits["circuits"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["downstream_agent"] == router.id())
            .map_or("-".to_string(), |c| str_of(&c["state"]));
        phase(
            6,
            "breaker",
            &format!(
                "{BREAKER_MIN_CALLS} calls to the router failed: Unwind opened its breaker (ECT {}) and held calls back {BREAKER_COOLDOWN_S} s instead of hammering it; then a probe got through (breaker now {now})",
                str_of(&open["jti"])
            ),
        );

        // 7. The cascade: a second, independent observer reports the same agent failing.
        let mut report = Map::new();
        report.insert("cascade.downstream_agent".into(), json!(router.id()));
        report.insert("cascade.error_rate".into(), json!(1.0));
        report.insert("cascade.window_s".into(), json!(30));
        report.insert("cascade.cooldown_s".into(), json!(30));
        // Its report hangs below its own DNS update, during which it saw the router fail.
        let (_, t) = dns.action(
            "circuit_breaker_open",
            &wid,
            std::slice::from_ref(&update_dns),
            report,
        )?;
        self.record(&t).await?;
        let cascade = wait_for(|| async {
            let page = self
                .client
                .get(&["v1", "cascades"], &[("wid", &wid)])
                .await?;
            Ok(page["items"].as_array().and_then(|a| a.first()).cloned())
        })
        .await?
        .ok_or_else(|| CliError::Failed("no cascade alert".into()))?;
        story.cascade_ect = cascade["ect"].as_str().map(str::to_string);
        phase(
            7,
            "cascade",
            &format!(
                "the dns agent reports its own breaker toward the router: two observers of one failing agent = a cascade, pattern {} (ECT {})",
                str_of(&cascade["pattern"]),
                str_of(&cascade["ect"])
            ),
        );

        // 8. The escalation: the irreversible checkpoint is never called; a person decides.
        let escalation = wait_for(|| async {
            let page = self
                .client
                .get(&["v1", "escalations"], &[("status", "open")])
                .await?;
            Ok(page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["rollback_id"] == id.as_str() && e["kind"] == "irreversible_checkpoint")
                .cloned())
        })
        .await?
        .ok_or_else(|| CliError::Failed("no irreversible_checkpoint escalation".into()))?;
        story.escalation_id = escalation["id"].as_str().map(str::to_string);
        let status = str_of(&self.rollback(&id).await?["status"]);
        phase(
            8,
            "escalation",
            &format!(
                "a sent notice cannot be unsent, so Unwind never calls notify: escalation {} is open and the rollback is {status}",
                str_of(&escalation["id"])
            ),
        );

        if !self.script {
            phase(
                9,
                "decision",
                "yours: proceed_partial restores router and DNS and leaves the notice sent; abort undoes nothing; retry asks the agents again",
            );
            return Ok(());
        }
        // 9. (script) The operator decides through the API, and the rollback finishes.
        self.client
            .post(
                &["v1", "rollbacks", &id, "decision"],
                &json!({
                    "decision": "proceed_partial",
                    "comment": "restore router and DNS; a correction notice goes out separately",
                }),
            )
            .await?;
        phase(
            9,
            "decision",
            "an operator (this script) decides proceed_partial: restore router and DNS, leave the notice sent",
        );
        self.watch(&id).await?;
        Ok(())
    }

    /// The live view of `unwind rollback watch`, until the rollback waits or ends.
    async fn watch(&self, id: &str) -> Result<(), CliError> {
        let watched =
            tokio::time::timeout(OUTCOME_WAIT, super::rollback::watch(&self.client, id)).await;
        match watched {
            Err(_) => Err(CliError::Failed(format!(
                "rollback {id} made no progress for {} s",
                OUTCOME_WAIT.as_secs()
            ))),
            // Waiting for a decision, or ending other than `completed`, is part of the story.
            Ok(Ok(()) | Err(CliError::AwaitingDecision(_))) => Ok(()),
            Ok(Err(CliError::Failed(m))) if m.contains(" ended ") => Ok(()),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Where to look afterwards: the console, the token, the ids, the evidence and the CLI.
    async fn where_to_look(&self, story: &Story) {
        let id = story.rollback_id.as_deref().unwrap_or("<rollback id>");
        let error = story.error_jti.as_deref().unwrap_or("<error jti>");
        let cp_router = story
            .router_checkpoint
            .as_deref()
            .unwrap_or("<router checkpoint>");
        println!("\nWhere to look");
        println!("  console     {}/ui", self.base);
        println!(
            "  token       {} (log in to the console with its content)",
            self.token_file.display()
        );
        println!("  workflow    {}", story.wid);
        println!("  rollback    {id}");
        if let Some(escalation) = &story.escalation_id {
            println!("  escalation  {escalation} (the irreversible notification)");
        }
        println!("  failure     {error} (the router's error ECT)");
        let mut evidence = vec![
            ("circuit_breaker_open", story.breaker_ect.clone()),
            ("cascade_detected", story.cascade_ect.clone()),
        ];
        if let Some(id) = &story.rollback_id
            && let Ok(r) = self.rollback(id).await
        {
            let of = |k: &str| r["evidence"][k].as_str().map(str::to_string);
            evidence.insert(0, ("rollback_start", of("rollback_start")));
            let decision = self
                .coordinator_ects(&story.wid, "hitl_decision")
                .await
                .ok()
                .and_then(|d| {
                    d.first()
                        .and_then(|e| e["jti"].as_str().map(str::to_string))
                });
            evidence.push(("hitl_decision", decision));
            evidence.push(("rollback_complete", of("rollback_complete")));
        }
        println!(
            "  evidence    signed by Unwind, verifiable with {}/.well-known/jwks.json:",
            self.base
        );
        for (exec_act, jti) in evidence {
            let jti = jti.unwrap_or_else(|| "(after the decision)".into());
            println!("              {exec_act:<21} {jti}");
        }
        println!(
            "  explore     export UNWIND_URL={} UNWIND_DATA_DIR={}",
            self.base,
            self.data_dir.display()
        );
        for command in [
            format!("unwind rollback get {id}"),
            format!("unwind blast-radius {cp_router}   # what undoing the router's change touches"),
            format!("unwind dag --wid {}", story.wid),
            format!(
                "unwind export --wid {w} --out {w}.export.json",
                w = story.wid
            ),
            format!("unwind verify {}.export.json", story.wid),
        ] {
            println!("              {command}");
        }
    }

    /// Interactive end: leaves the escalation open, says how to decide it, reports the end of
    /// the rollback when someone decides, and serves until Ctrl-C.
    async fn serve_until_stopped(&self, story: &Story) {
        let signal = crate::service::shutdown_signal();
        if let Some(id) = &story.rollback_id {
            println!("\nThe escalation is open. Decide it in the console (Escalations), or:");
            println!(
                "  unwind rollback decide {id} --decision proceed_partial --url {} --data-dir {}",
                self.base,
                self.data_dir.display()
            );
        }
        println!("\nServing until Ctrl-C.");
        let follow = async {
            let Some(id) = &story.rollback_id else {
                return std::future::pending::<()>().await;
            };
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(r) = self.rollback(id).await {
                    let status = str_of(&r["status"]);
                    if checks::is_terminal(&status) {
                        println!("decision received: rollback {id} ended {status}");
                        return std::future::pending::<()>().await;
                    }
                }
            }
        };
        tokio::select! {
            _ = signal => {}
            _ = follow => {}
        }
        println!("\nstopping");
    }

    async fn check(&self, story: &Story) -> Checklist {
        checks::run(self, story).await
    }
}
