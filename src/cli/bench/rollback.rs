//! `unwind bench rollback`: one wide, deep rollback (default 1,000 checkpoints in 10 levels
//! below a root checkpoint) against stub agents that answer prepare and execute after a fixed
//! delay, beside its lower bound: every level waits for the one below it, and at most
//! `--concurrency` calls run at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use clap::Args;
use serde_json::{Map, Value, json};

use super::{AGENT, BENCH_TOKEN, BenchService, failed};
use crate::cli::CliError;
use crate::ect::{Profile, SigningKey};

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// A PostgreSQL server URL (a fresh database is created on it and dropped afterwards);
    /// default: SQLite in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Checkpoints below the root, spread evenly over the levels.
    #[arg(long, default_value_t = 1000)]
    pub checkpoints: usize,
    #[arg(long, default_value_t = 10)]
    pub levels: usize,
    /// Stub agents (each a server on 127.0.0.1); checkpoints are dealt out among them.
    #[arg(long, default_value_t = 10)]
    pub agents: usize,
    /// How long an agent takes to answer prepare and execute.
    #[arg(long, default_value_t = 10)]
    pub agent_delay_ms: u64,
    /// `rollback.max_concurrency`: agent calls of one rollback at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rollbacks measured (each on its own workflow).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RollbackArgs) -> Result<(), CliError> {
    if args.levels == 0
        || args.checkpoints < args.levels
        || args.agents == 0
        || args.concurrency == 0
        || args.runs == 0
    {
        return Err(CliError::Usage("need --levels >= 1, --checkpoints >= --levels, --agents, --concurrency and --runs >= 1".into()));
    }
    let concurrency = args.concurrency;
    let service = BenchService::start(args.database_url.as_deref(), |c| {
        c.rollback.max_concurrency = concurrency;
    })
    .await?;
    let result = measure(&args, &service).await;
    service.stop().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
    } else {
        let b = &report["lower_bound_ms"];
        println!(
            "rollback of {} checkpoints ({} levels + root) against agents answering in {} ms, concurrency {}:",
            report["steps"], report["levels"], report["agent_delay_ms"], report["concurrency"]
        );
        println!(
            "  lower bound: prepare {} ms + execute {} ms = {} ms",
            b["prepare"], b["execute"], b["total"]
        );
        for r in report["runs"].as_array().into_iter().flatten() {
            println!(
                "  run: {} ms ({}), {:.2} x the bound, coordinator overhead {:.3} ms per step",
                r["elapsed_ms"],
                r["status"].as_str().unwrap_or("?"),
                r["ratio_to_bound"].as_f64().unwrap_or(0.0),
                r["overhead_ms_per_step"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// Posts `tokens` as one batch to `base`; an error when any is refused.
pub(super) async fn ingest_all(
    client: &reqwest::Client,
    base: &str,
    tokens: &[String],
) -> Result<(), CliError> {
    let body: Value = client
        .post(format!("{base}/v1/ects"))
        .bearer_auth(BENCH_TOKEN)
        .json(&json!({ "tokens": tokens }))
        .send()
        .await
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)?;
    match body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["status"] == "rejected")
    {
        Some(bad) => Err(CliError::Failed(format!("ingest refused a token: {bad}"))),
        None => Ok(()),
    }
}

/// Asks `base` for a `sub_dag` rollback from `root`; its `rollback_id`.
pub(super) async fn request_rollback(
    client: &reqwest::Client,
    base: &str,
    root: &str,
) -> Result<String, CliError> {
    let r = client
        .post(format!("{base}/v1/rollbacks"))
        .bearer_auth(BENCH_TOKEN)
        .json(&json!({ "checkpoint_id": root, "scope": "sub_dag" }))
        .send()
        .await
        .map_err(failed)?;
    let status = r.status();
    let body: Value = r.json().await.map_err(failed)?;
    body["rollback_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| failed(format!("rollback request answered {status}: {body}")))
}

/// GET with the bench's operator token, as JSON.
pub(super) async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, CliError> {
    client
        .get(url)
        .bearer_auth(BENCH_TOKEN)
        .send()
        .await
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)
}

/// A status the bench stops waiting at: terminal, or waiting for a person.
pub(super) fn is_settled(status: &str) -> bool {
    matches!(
        status,
        "completed" | "partial" | "failed" | "aborted" | "superseded" | "awaiting_decision"
    )
}

/// A stub agent: answers after `delay`, without checking anything (the coordinator is measured).
pub(super) async fn stub_agent(
    delay: Duration,
) -> Result<(String, tokio::task::JoinHandle<()>), CliError> {
    let answer = move |status: &'static str| async move {
        tokio::time::sleep(delay).await;
        axum::Json(json!({ "status": status }))
    };
    let app = Router::new()
        .route(
            "/.well-known/cascade/rollback/prepare",
            post(move || answer("prepared")),
        )
        .route(
            "/.well-known/cascade/rollback",
            post(move || answer("completed")),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(failed)?;
    let uri = format!(
        "http://{}/.well-known/cascade/rollback",
        listener.local_addr().map_err(failed)?
    );
    let task = tokio::spawn(async move {
        let _ = crate::service::serve(listener, app, std::future::pending()).await;
    });
    Ok((uri, task))
}

pub(super) async fn measure(
    args: &RollbackArgs,
    service: &BenchService,
) -> Result<Value, CliError> {
    let delay = Duration::from_millis(args.agent_delay_ms);
    let mut agents = Vec::new();
    for _ in 0..args.agents {
        agents.push(stub_agent(delay).await?);
    }
    let uris: Vec<String> = agents.iter().map(|(u, _)| u.clone()).collect();
    let client = reqwest::Client::new();
    let width = args.checkpoints / args.levels;
    let steps = width * args.levels + 1;
    let per_level = width.div_ceil(args.concurrency) as u64;
    let bound_execute = (args.levels as u64 * per_level + 1) * args.agent_delay_ms;
    let bound_prepare = (steps.div_ceil(args.concurrency) as u64) * args.agent_delay_ms;
    let bound = bound_execute + bound_prepare;
    let mut runs = Vec::new();
    for run in 0..args.runs {
        eprintln!(
            "run {}: building a workflow of {steps} checkpoints…",
            run + 1
        );
        let (root, tokens) = workflow(service.key.clone(), &uris, args.levels, width).await?;
        for batch in tokens.chunks(1000) {
            ingest_all(&client, &service.base, batch).await?;
        }
        let started = Instant::now();
        let id = request_rollback(&client, &service.base, &root).await?;
        let status = loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let r = get_json(&client, &format!("{}/v1/rollbacks/{id}", service.base)).await?;
            let status = r["status"].as_str().unwrap_or_default().to_string();
            if is_settled(&status) {
                break status;
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(CliError::Failed(format!(
                    "rollback {id} still {status} after 300 s"
                )));
            }
        };
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        runs.push(json!({
            "elapsed_ms": elapsed.round(),
            "status": status,
            "ratio_to_bound": if bound > 0 { elapsed / bound as f64 } else { 0.0 },
            "overhead_ms_per_step": (elapsed - bound as f64).max(0.0) / steps as f64,
        }));
    }
    for (_, task) in agents {
        task.abort();
    }
    Ok(json!({
        "steps": steps, "levels": args.levels, "width": width, "agents": args.agents,
        "agent_delay_ms": args.agent_delay_ms, "concurrency": args.concurrency,
        "database": if service.database_url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        "lower_bound_ms": { "prepare": bound_prepare, "execute": bound_execute, "total": bound },
        "runs": runs,
    }))
}

/// A root checkpoint and `levels` levels of `width` checkpoints, each below one of the level
/// above; agents dealt out round-robin. Returns the root's jti and the signed tokens.
pub(super) async fn workflow(
    key: Arc<SigningKey>,
    uris: &[String],
    levels: usize,
    width: usize,
) -> Result<(String, Vec<String>), CliError> {
    let uris = uris.to_vec();
    tokio::task::spawn_blocking(move || {
        let wid = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now().timestamp();
        let checkpoint = |jti: &str, agent: usize, par: Vec<String>| -> Result<String, String> {
            let claims = json!({
                "iss": format!("{AGENT}{agent}"), "aud": "spiffe://unwind.local/coordinator",
                "iat": now, "exp": now + 3600, "jti": jti, "wid": wid, "exec_act": "checkpoint",
                "par": par,
                "ext": {"cascade.reversible": true, "cascade.rollback_uri": uris[agent % uris.len()], "cascade.ttl": 3600},
            });
            let claims: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
            key.sign_ect(&claims, Profile::Draft00).map_err(|e| e.to_string())
        };
        let root = format!("{wid}-root");
        let mut tokens = vec![checkpoint(&root, 0, vec![])?];
        for level in 1..=levels {
            for i in 0..width {
                let parent = if level == 1 { root.clone() } else { format!("{wid}-{}-{}", level - 1, (i * 7) % width) };
                tokens.push(checkpoint(&format!("{wid}-{level}-{i}"), i, vec![parent])?);
            }
        }
        Ok::<_, String>((root, tokens))
    })
    .await
    .map_err(failed)?
    .map_err(CliError::Failed)
}
