//! `unwind bench soak`: constant mixed load at a fixed rate for a long while, with the
//! process's memory and each request kind's latency sampled per window; at the end a verdict on
//! the memory trend and the latency drift.
//!
//! The load, per cycle of [`MIX`]: single-token and batch ingest, blast-radius and DAG queries on
//! a few fixed workflows, rollbacks of small workflows checkpointed by reference agents (real
//! `unwind-agent` servers on loopback), and escalations: rollbacks an agent refuses to prepare,
//! decided (`abort`) by the load generator as an operator would.
//!
//! What is measured as memory is the VmRSS of this process: the service, the load generator and
//! the reference agents together, so a leak in any of them shows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use super::ingest::{bench_claims, percentile_ms, sign_batches};
use super::{AGENT, BENCH_TOKEN, BenchService, failed, rss_kib};
use crate::cli::CliError;
use crate::cli::demo::agents::{DemoAgent, Fleet, Identity};
use crate::config::Config;
use crate::ect::{Profile, SigningKey};

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// A PostgreSQL server URL (a fresh database is created on it and dropped afterwards);
    /// default: SQLite in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// How long the load runs (`90s`, `10m`, `1h`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Length of a sampling window: RSS is read and latencies summarised once per window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Requests started per second, whether or not earlier ones finished.
    #[arg(long, default_value_t = 40)]
    pub rate: u64,
    /// Directory for `soak.json` (the samples and the verdict) and `soak.svg` (the plot).
    #[arg(long, default_value = "soak-results")]
    pub out: PathBuf,
    /// Fail when RSS grows faster than this over the second half (least-squares slope).
    #[arg(long, default_value_t = 64.0)]
    pub max_rss_slope_mib_per_h: f64,
    /// Fail when a kind's p99 in the last window exceeds this many times its p99 in the first
    /// steady window...
    #[arg(long, default_value_t = 3.0)]
    pub max_p99_ratio: f64,
    /// ...and is more than this many milliseconds above it (sub-millisecond p99s are noise).
    #[arg(long, default_value_t = 5.0)]
    pub p99_slack_ms: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `90s`, `10m`, `1h`, `500ms`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit (ms, s, m, h)"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Ok(Duration::from_millis(ms))
}

/// The request kinds, in the order they are reported.
pub const KINDS: [&str; 6] = [
    "ingest_single",
    "ingest_batch",
    "blast_radius",
    "dag",
    "rollback",
    "escalation",
];

/// One cycle of the load: at 40 requests/s, 20 single tokens, 4 batches of 50 tokens, 8 blast
/// radius and 4 DAG queries, 3.2 rollbacks and 0.8 escalations per second.
const MIX: [usize; 20] = [0, 2, 0, 1, 0, 3, 0, 2, 0, 4, 0, 2, 0, 1, 0, 3, 0, 2, 0, 4];
/// Every fifth rollback slot is an escalation instead.
const ESCALATE_EVERY: u64 = 5;
const BATCH_TOKENS: usize = 50;
const QUERY_WORKFLOWS: usize = 4;
const QUERY_WORKFLOW_TOKENS: usize = 500;
/// The reference agents: three that roll back, one that refuses to prepare.
const AGENT_NAMES: [&str; 4] = ["soak-a", "soak-b", "soak-c", "soak-refuser"];

/// Latency summary of one kind in one window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindWindow {
    pub count: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One sampling window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the load started, at the end of the window.
    pub t_s: f64,
    pub rss_mib: f64,
    pub kinds: BTreeMap<String, KindWindow>,
}

/// The thresholds a soak is judged by.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    pub max_rss_slope_mib_per_h: f64,
    pub max_p99_ratio: f64,
    pub p99_slack_ms: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct P99Check {
    pub kind: String,
    /// Index of the first steady window (the first is connection set-up and warm-up).
    pub first_window: usize,
    pub first_p99_ms: f64,
    pub last_p99_ms: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// Least-squares slope of RSS over the second half of the samples.
    pub rss_slope_mib_per_h: f64,
    pub rss_ok: bool,
    pub p99: Vec<P99Check>,
    pub errors: usize,
    pub pass: bool,
    /// Why it failed, in words (empty when it passed).
    pub reasons: Vec<String>,
}

/// Least-squares slope of `y` over `x` (0 with fewer than two distinct `x`).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// Judges a soak: RSS must not trend upwards over the second half (the first half includes
/// warm-up: pools, caches and allocator arenas filling), each kind's p99 in the last window must
/// stay near its p99 in the first steady window, and no request may fail.
pub fn verdict(samples: &[Sample], t: Thresholds) -> Verdict {
    let half = &samples[samples.len() / 2..];
    let points: Vec<(f64, f64)> = half.iter().map(|s| (s.t_s / 3600.0, s.rss_mib)).collect();
    let rss_slope = slope(&points);
    let rss_ok = rss_slope <= t.max_rss_slope_mib_per_h;
    let mut reasons = Vec::new();
    if !rss_ok {
        reasons.push(format!(
            "RSS grows {rss_slope:.1} MiB/h over the second half (limit {:.1})",
            t.max_rss_slope_mib_per_h
        ));
    }
    // The first window holds connection set-up; the second is the first steady one when the
    // run is long enough to have a third.
    let steady = usize::from(samples.len() >= 3);
    let mut p99 = Vec::new();
    for kind in KINDS {
        let with = |s: &Sample| s.kinds.get(kind).filter(|k| k.count > 0).cloned();
        let first = samples
            .iter()
            .enumerate()
            .skip(steady)
            .find_map(|(i, s)| with(s).map(|k| (i, k)));
        let last = samples.iter().rev().find_map(with);
        let (Some((first_window, first)), Some(last)) = (first, last) else {
            continue;
        };
        let ok = last.p99_ms <= first.p99_ms * t.max_p99_ratio
            || last.p99_ms - first.p99_ms <= t.p99_slack_ms;
        if !ok {
            reasons.push(format!(
                "{kind}: p99 {:.1} ms in the last window against {:.1} ms in window {first_window}",
                last.p99_ms, first.p99_ms
            ));
        }
        p99.push(P99Check {
            kind: kind.to_string(),
            first_window,
            first_p99_ms: first.p99_ms,
            last_p99_ms: last.p99_ms,
            ok,
        });
    }
    let errors: usize = samples
        .iter()
        .flat_map(|s| s.kinds.values())
        .map(|k| k.errors)
        .sum();
    if errors > 0 {
        reasons.push(format!("{errors} requests failed"));
    }
    Verdict {
        rss_slope_mib_per_h: rss_slope,
        rss_ok,
        pass: reasons.is_empty(),
        p99,
        errors,
        reasons,
    }
}

pub async fn run(args: SoakArgs) -> Result<(), CliError> {
    if args.rate == 0 || args.sample_every.is_zero() || args.duration < args.sample_every * 2 {
        return Err(CliError::Usage(
            "need --rate >= 1, --sample-every > 0 and --duration of at least two windows".into(),
        ));
    }
    let dir = std::env::temp_dir().join(format!("unwind-soak-{}", uuid::Uuid::new_v4().simple()));
    let mut identities = Vec::new();
    for name in AGENT_NAMES {
        identities.push(Identity::create(name, &dir).await?);
    }
    let trust: Vec<_> = identities.iter().map(Identity::trust_entry).collect();
    let service = BenchService::start(args.database_url.as_deref(), |c| {
        c.trust.issuers.extend(trust);
    })
    .await?;
    let result = soak(&args, &service, identities).await;
    service.stop().await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let (samples, setup) = result?;

    let thresholds = Thresholds {
        max_rss_slope_mib_per_h: args.max_rss_slope_mib_per_h,
        max_p99_ratio: args.max_p99_ratio,
        p99_slack_ms: args.p99_slack_ms,
    };
    let verdict = verdict(&samples, thresholds);
    let report = json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
        "database": if args.database_url.is_some() { "postgres" } else { "sqlite" },
        "duration_s": args.duration.as_secs_f64(),
        "sample_every_s": args.sample_every.as_secs_f64(),
        "rate_per_s": args.rate,
        "rss_measured": "VmRSS of the bench process (/proc/self/status): service, load generator and reference agents",
        "setup": setup,
        "thresholds": thresholds,
        "samples": samples,
        "verdict": verdict,
    });
    tokio::fs::create_dir_all(&args.out)
        .await
        .map_err(|e| failed(format!("{}: {e}", args.out.display())))?;
    let json_path = args.out.join("soak.json");
    let svg_path = args.out.join("soak.svg");
    tokio::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&report).map_err(failed)?,
    )
    .await
    .map_err(|e| failed(format!("{}: {e}", json_path.display())))?;
    tokio::fs::write(&svg_path, super::plot::soak_svg(&samples, &verdict))
        .await
        .map_err(|e| failed(format!("{}: {e}", svg_path.display())))?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
    } else {
        print_summary(&samples, &verdict, &args);
        println!(
            "samples: {}; plot: {}",
            json_path.display(),
            svg_path.display()
        );
    }
    if verdict.pass {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "soak failed: {}",
            verdict.reasons.join("; ")
        )))
    }
}

fn print_summary(samples: &[Sample], v: &Verdict, args: &SoakArgs) {
    println!(
        "soak: {} s at {} requests/s, {} windows of {} s",
        args.duration.as_secs(),
        args.rate,
        samples.len(),
        args.sample_every.as_secs_f64()
    );
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        println!(
            "RSS: {:.1} MiB after the first window, {:.1} MiB at the end; slope over the second half {:+.1} MiB/h (limit {:.1}): {}",
            first.rss_mib,
            last.rss_mib,
            v.rss_slope_mib_per_h,
            args.max_rss_slope_mib_per_h,
            if v.rss_ok { "flat" } else { "GROWING" }
        );
    }
    for c in &v.p99 {
        println!(
            "{:<14} p99 {:>8.1} ms in window {} -> {:>8.1} ms in the last: {}",
            c.kind,
            c.first_p99_ms,
            c.first_window,
            c.last_p99_ms,
            if c.ok { "stable" } else { "DRIFTED" }
        );
    }
    println!(
        "failed requests: {}; verdict: {}",
        v.errors,
        if v.pass { "pass" } else { "FAIL" }
    );
}

/// What every load task shares.
struct Load {
    client: reqwest::Client,
    base: String,
    key: Arc<SigningKey>,
    fleet: Fleet,
    /// (wid, root jti) of the workflows queried.
    queried: Vec<(String, String)>,
    run: String,
    counter: AtomicU64,
    window: Mutex<Vec<(usize, Duration, bool)>>,
}

impl Load {
    fn record(&self, kind: usize, latency: Duration, ok: bool) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.push((kind, latency, ok));
    }

    fn take_window(&self) -> Vec<(usize, Duration, bool)> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *w)
    }

    fn agent(&self, i: usize) -> Result<&DemoAgent, String> {
        self.fleet
            .agents
            .get(i)
            .ok_or_else(|| format!("no agent {i}"))
    }
}

/// Runs the load; returns the samples and what was set up before it.
async fn soak(
    args: &SoakArgs,
    service: &BenchService,
    identities: Vec<Identity>,
) -> Result<(Vec<Sample>, Value), CliError> {
    let client = reqwest::Client::new();
    let jwks: jsonwebtoken::jwk::JwkSet = client
        .get(format!("{}/.well-known/jwks.json", service.base))
        .send()
        .await
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fleet = Fleet::start(
        identities,
        &Config::default().coordinator_id,
        jwks,
        &stop_rx,
    )
    .await?;
    let refuser = fleet
        .agents
        .last()
        .ok_or_else(|| failed("no reference agents"))?;
    refuser.behave(&client, "cannot_prepare").await?;

    eprintln!("ingesting {QUERY_WORKFLOWS} workflows of {QUERY_WORKFLOW_TOKENS} tokens to query…");
    let batches = sign_batches(service.key.clone(), QUERY_WORKFLOWS, QUERY_WORKFLOW_TOKENS).await?;
    let mut queried = Vec::new();
    for batch in &batches {
        post_batch(&client, &service.base, batch)
            .await
            .map_err(CliError::Failed)?;
        // Children come first in a batch: the root is the last token.
        let root = batch.last().ok_or_else(|| failed("empty batch"))?;
        let (_, claims) = crate::ect::jws::decode_unverified(root).map_err(failed)?;
        queried.push((
            claims["wid"].as_str().unwrap_or_default().to_string(),
            claims["jti"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let load = Arc::new(Load {
        client,
        base: service.base.clone(),
        key: service.key.clone(),
        fleet,
        queried,
        run: uuid::Uuid::new_v4().simple().to_string(),
        counter: AtomicU64::new(0),
        window: Mutex::new(Vec::new()),
    });

    eprintln!(
        "mixed load at {}/s for {} s, a sample every {} s…",
        args.rate,
        args.duration.as_secs(),
        args.sample_every.as_secs_f64()
    );
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut next_sample = args.sample_every;
    let mut slot = 0usize;
    let mut rollbacks = 0u64;
    while started.elapsed() < args.duration {
        ticker.tick().await;
        while tasks.try_join_next().is_some() {}
        if started.elapsed() >= next_sample {
            samples.push(summarise(started.elapsed(), load.take_window()));
            next_sample += args.sample_every;
        }
        let mut kind = MIX[slot % MIX.len()];
        slot += 1;
        if kind == 4 {
            rollbacks += 1;
            if rollbacks.is_multiple_of(ESCALATE_EVERY) {
                kind = 5;
            }
        }
        let load = load.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            let result = match kind {
                0 => single(&load).await,
                1 => batch(&load).await,
                2 => query(&load, true).await,
                3 => query(&load, false).await,
                4 => rollback(&load).await,
                _ => escalation(&load).await,
            };
            let (latency, ok) = match result {
                Ok(timed) => (timed.unwrap_or_else(|| t.elapsed()), true),
                Err(e) => {
                    tracing::warn!(kind = KINDS[kind], error = %e, "soak request failed");
                    (t.elapsed(), false)
                }
            };
            load.record(kind, latency, ok);
        });
    }
    while tasks.join_next().await.is_some() {}
    // Requests still running when the last window closed are not in any window; their
    // failures are counted in the last one so that none goes unreported.
    let rest = load.take_window();
    if let Some(last) = samples.last_mut() {
        let extra = summarise(started.elapsed(), rest);
        for (kind, k) in extra.kinds {
            if let Some(entry) = last.kinds.get_mut(&kind) {
                entry.errors += k.errors;
            }
        }
    }
    let _ = stop_tx.send(true);
    let setup = json!({
        "query_workflows": QUERY_WORKFLOWS, "query_workflow_tokens": QUERY_WORKFLOW_TOKENS,
        "batch_tokens": BATCH_TOKENS, "reference_agents": AGENT_NAMES,
        "mix_per_cycle": KINDS.iter().enumerate().map(|(i, k)| {
            let n = MIX.iter().filter(|&&m| m == i).count();
            (k.to_string(), json!(n))
        }).collect::<serde_json::Map<_, _>>(),
        "escalate_every_nth_rollback": ESCALATE_EVERY,
    });
    match Arc::try_unwrap(load) {
        Ok(load) => load.fleet.stopped().await,
        Err(_) => tracing::warn!("soak load still shared at the end; agents left to the runtime"),
    }
    Ok((samples, setup))
}

fn summarise(at: Duration, window: Vec<(usize, Duration, bool)>) -> Sample {
    let mut kinds = BTreeMap::new();
    for (i, name) in KINDS.iter().enumerate() {
        let mut latencies: Vec<Duration> =
            window.iter().filter(|w| w.0 == i).map(|w| w.1).collect();
        let errors = window.iter().filter(|w| w.0 == i && !w.2).count();
        kinds.insert(
            name.to_string(),
            KindWindow {
                count: latencies.len(),
                errors,
                p50_ms: percentile_ms(&mut latencies, 0.50),
                p99_ms: percentile_ms(&mut latencies, 0.99),
            },
        );
    }
    Sample {
        t_s: at.as_secs_f64(),
        rss_mib: rss_kib() as f64 / 1024.0,
        kinds,
    }
}

/// A request's result: `Some(latency)` when the request timed itself (work before the timed
/// part, such as signing, is not the service's), `None` to take the task's whole time.
type Timed = Result<Option<Duration>, String>;

async fn post_batch(client: &reqwest::Client, base: &str, tokens: &[String]) -> Result<(), String> {
    let r = client
        .post(format!("{base}/v1/ects"))
        .bearer_auth(BENCH_TOKEN)
        .json(&json!({ "tokens": tokens }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    let created = body["results"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| x["status"] == "created").count());
    if !status.is_success() || created != tokens.len() {
        return Err(format!(
            "batch: {status}: {created} of {} created",
            tokens.len()
        ));
    }
    Ok(())
}

async fn single(load: &Load) -> Timed {
    let n = load.counter.fetch_add(1, Ordering::Relaxed);
    let claims = bench_claims(
        &format!("{AGENT}soak"),
        &format!("{}-s{n}", load.run),
        // A hundred workflows in turn, as from many agents at once.
        &format!("{}-{}", load.run, n % 100),
        vec![],
        chrono::Utc::now().timestamp(),
    );
    let token = load
        .key
        .sign_ect(&claims, Profile::Draft00)
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let r = load
        .client
        .post(format!("{}/v1/ects", load.base))
        .bearer_auth(BENCH_TOKEN)
        .header("content-type", "application/jwt")
        .body(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().as_u16() != 201 {
        return Err(format!("single: HTTP {}", r.status()));
    }
    Ok(Some(t.elapsed()))
}

async fn batch(load: &Load) -> Timed {
    let batches = sign_batches(load.key.clone(), 1, BATCH_TOKENS)
        .await
        .map_err(|e| e.to_string())?;
    let tokens = batches.first().ok_or("no batch signed")?;
    let t = Instant::now();
    post_batch(&load.client, &load.base, tokens).await?;
    Ok(Some(t.elapsed()))
}

async fn query(load: &Load, blast: bool) -> Timed {
    let n = load.counter.fetch_add(1, Ordering::Relaxed) as usize;
    let (wid, root) = &load.queried[n % load.queried.len()];
    let url = if blast {
        format!("{}/v1/ects/{root}/blast-radius", load.base)
    } else {
        format!("{}/v1/workflows/{wid}/dag", load.base)
    };
    let r = load
        .client
        .get(&url)
        .bearer_auth(BENCH_TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    let nodes = body["nodes"].as_array().map_or(0, Vec::len);
    if !status.is_success() || nodes != QUERY_WORKFLOW_TOKENS {
        return Err(format!("{url}: HTTP {status}, {nodes} nodes"));
    }
    Ok(None)
}

/// A workflow of a root checkpoint by `first` and one child checkpoint by each of `others`,
/// signed by the reference agents and ingested; returns the root's jti.
async fn checkpointed_workflow(
    load: &Load,
    first: usize,
    others: &[usize],
) -> Result<String, String> {
    let wid = uuid::Uuid::new_v4().to_string();
    let (root, token) = load
        .agent(first)?
        .checkpoint(b"soak state", "soak", true, &wid, &[])
        .await
        .map_err(|e| e.to_string())?;
    let mut tokens = vec![token];
    for &a in others {
        let (_, token) = load
            .agent(a)?
            .checkpoint(
                b"soak state",
                "soak",
                true,
                &wid,
                std::slice::from_ref(&root),
            )
            .await
            .map_err(|e| e.to_string())?;
        tokens.push(token);
    }
    post_batch(&load.client, &load.base, &tokens).await?;
    Ok(root)
}

/// Starts a rollback from `root`; returns its id.
async fn start_rollback(load: &Load, root: &str, escalate: bool) -> Result<String, String> {
    let mut body = json!({ "checkpoint_id": root, "scope": "sub_dag" });
    if escalate {
        body["on_cannot_prepare"] = json!("escalate");
    }
    let r = load
        .client
        .post(format!("{}/v1/rollbacks", load.base))
        .bearer_auth(BENCH_TOKEN)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let created: Value = r.json().await.map_err(|e| e.to_string())?;
    created["rollback_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("rollback: HTTP {status}: {created}"))
}

/// Polls a rollback until its status is one of `until`; returns that status.
async fn wait_for(load: &Load, id: &str, until: &[&str]) -> Result<String, String> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r: Value = load
            .client
            .get(format!("{}/v1/rollbacks/{id}", load.base))
            .bearer_auth(BENCH_TOKEN)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let status = r["status"].as_str().unwrap_or_default();
        if until.contains(&status) {
            return Ok(status.to_string());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("rollback {id} still {status} after 60 s"));
        }
    }
}

const TERMINAL: [&str; 6] = [
    "completed",
    "partial",
    "failed",
    "aborted",
    "superseded",
    "awaiting_decision",
];

/// A rollback of three checkpoints on three agents, from the request to `completed`.
async fn rollback(load: &Load) -> Timed {
    let root = checkpointed_workflow(load, 0, &[1, 2]).await?;
    let t = Instant::now();
    let id = start_rollback(load, &root, false).await?;
    let status = wait_for(load, &id, &TERMINAL).await?;
    if status != "completed" {
        return Err(format!("rollback {id}: {status}"));
    }
    Ok(Some(t.elapsed()))
}

/// A rollback whose child checkpoint's agent refuses to prepare: escalated, then decided
/// `abort` as soon as it waits for a decision; from the request to `aborted`.
async fn escalation(load: &Load) -> Timed {
    let refuser = load.fleet.agents.len().saturating_sub(1);
    let root = checkpointed_workflow(load, 0, &[refuser]).await?;
    let t = Instant::now();
    let id = start_rollback(load, &root, true).await?;
    let status = wait_for(load, &id, &TERMINAL).await?;
    if status != "awaiting_decision" {
        return Err(format!("escalation {id}: {status}, not awaiting_decision"));
    }
    let r = load
        .client
        .post(format!("{}/v1/rollbacks/{id}/decision", load.base))
        .bearer_auth(BENCH_TOKEN)
        .json(&json!({ "decision": "abort", "comment": "soak" }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("decision on {id}: HTTP {}", r.status()));
    }
    let status = wait_for(load, &id, &TERMINAL[..5]).await?;
    if status != "aborted" {
        return Err(format!("escalation {id}: {status} after abort"));
    }
    Ok(Some(t.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        max_rss_slope_mib_per_h: 64.0,
        max_p99_ratio: 3.0,
        p99_slack_ms: 5.0,
    };

    /// `n` windows of 10 s with RSS from `rss(i)` and every kind's p99 from `p99(i)`.
    fn series(n: usize, rss: impl Fn(usize) -> f64, p99: impl Fn(usize) -> f64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                t_s: 10.0 * (i + 1) as f64,
                rss_mib: rss(i),
                kinds: KINDS
                    .iter()
                    .map(|k| {
                        let w = KindWindow {
                            count: 10,
                            errors: 0,
                            p50_ms: p99(i) / 2.0,
                            p99_ms: p99(i),
                        };
                        (k.to_string(), w)
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(slope(&[(0.0, 1.0)]), 0.0);
        // Noise around a flat line: the slope is the fit's, not the last minus the first.
        let s = slope(&[(0.0, 10.0), (1.0, 12.0), (2.0, 9.0), (3.0, 11.0)]);
        assert!(s.abs() < 0.5, "{s}");
    }

    #[test]
    fn a_flat_soak_passes_even_with_warm_up_growth_and_noise() {
        // Fast growth in the first half (warm-up), flat with ±1 MiB of noise after.
        let samples = series(
            60,
            |i| {
                if i < 30 {
                    50.0 + i as f64
                } else {
                    80.0 + (i % 3) as f64 - 1.0
                }
            },
            |i| 4.0 + (i % 2) as f64,
        );
        let v = verdict(&samples, T);
        assert!(v.pass, "{:?}", v.reasons);
        assert!(v.rss_ok);
        assert_eq!(v.p99.len(), KINDS.len());
        assert!(v.p99.iter().all(|c| c.first_window == 1));
    }

    #[test]
    fn steady_memory_growth_fails() {
        // 0.5 MiB per 10 s window = 180 MiB/h.
        let samples = series(60, |i| 50.0 + 0.5 * i as f64, |_| 4.0);
        let v = verdict(&samples, T);
        assert!(!v.rss_ok);
        assert!(!v.pass);
        assert!(
            (v.rss_slope_mib_per_h - 180.0).abs() < 1e-6,
            "{}",
            v.rss_slope_mib_per_h
        );
        assert!(v.reasons[0].contains("RSS grows"), "{:?}", v.reasons);
    }

    #[test]
    fn a_p99_that_drifts_fails_but_small_absolute_changes_do_not() {
        let drift = verdict(&series(20, |_| 50.0, |i| 10.0 + 3.0 * i as f64), T);
        assert!(drift.rss_ok);
        assert!(!drift.pass);
        assert!(drift.p99.iter().all(|c| !c.ok && c.first_p99_ms == 13.0));
        // 0.5 ms to 2 ms is four times more, but within the slack.
        let tiny = verdict(&series(20, |_| 50.0, |i| if i < 10 { 0.5 } else { 2.0 }), T);
        assert!(tiny.pass, "{:?}", tiny.reasons);
    }

    #[test]
    fn failed_requests_fail_the_soak() {
        let mut samples = series(10, |_| 50.0, |_| 4.0);
        if let Some(k) = samples[4].kinds.get_mut("rollback") {
            k.errors = 2;
        }
        let v = verdict(&samples, T);
        assert_eq!(v.errors, 2);
        assert!(!v.pass);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10d").is_err());
    }
}
