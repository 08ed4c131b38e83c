//! `unwind bench all`: the performance record of design.md §9 in one run. Each figure is printed
//! beside its target or limit and the ratio to it:
//!
//! - ingest throughput (batches of 500) beside twice the raw ES256 verification rate measured in
//!   the same run, and single-token p99 at a fixed rate ([`super::ingest`]);
//! - blast radius on the synthetic workflows the criterion bench uses
//!   ([`crate::dag::synthetic::layered`]), 10 k and 1 M nodes, beside the time to load them
//!   from the store ([`super::blast`]);
//! - a rollback of 1,000 checkpoints in 10 levels against 10 ms agents beside its lower bound
//!   ([`super::rollback`]);
//! - ingest and rollback throughput with 1 and 3 `unwind serve` replicas (child processes of
//!   this executable) on one fresh PostgreSQL database, the same load spread over them.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use super::ingest::{IngestArgs, ingest_batches, sign_batches};
use super::rollback::RollbackArgs;
use super::{
    AGENT, BENCH_TOKEN, BenchService, drop_postgres_database, failed, fresh_postgres_database,
};
use crate::cli::CliError;

#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// A PostgreSQL server URL (fresh databases are created on it and dropped afterwards);
    /// default: SQLite in a temporary directory, and no replica figures (they need PostgreSQL).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Small sizes (seconds, not minutes): checks that every part runs; the figures mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One line of the record.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// What the value is compared with (a target, or a limit it cannot beat).
    pub limit: Option<f64>,
    pub limit_is: String,
    /// `value / limit`.
    pub ratio: Option<f64>,
    /// Whether design.md §9's target is met (`None`: no target).
    pub target_met: Option<bool>,
}

impl Figure {
    fn new(name: String, value: f64, unit: &'static str) -> Self {
        Self {
            name,
            value,
            unit,
            limit: None,
            limit_is: String::new(),
            ratio: None,
            target_met: None,
        }
    }

    fn against(mut self, limit: f64, limit_is: impl Into<String>) -> Self {
        self.limit = Some(limit);
        self.limit_is = limit_is.into();
        self.ratio = (limit > 0.0).then(|| self.value / limit);
        self
    }

    fn target(mut self, met: bool) -> Self {
        self.target_met = Some(met);
        self
    }
}

/// Sizes of a full or a quick record.
struct Sizes {
    tokens: usize,
    single_rate: u64,
    single_seconds: u64,
    verify_samples: usize,
    /// (width, layers, target ms) of each blast-radius workflow.
    graphs: [(usize, usize, f64); 2],
    checkpoints: usize,
    levels: usize,
    agents: usize,
    replica_tokens: usize,
    /// Rollbacks requested at once in each replica run, and the (levels, width) of their trees.
    replica_rollbacks: usize,
    replica_tree: (usize, usize),
}

const FULL: Sizes = Sizes {
    tokens: 100_000,
    single_rate: 1000,
    single_seconds: 10,
    verify_samples: 20_000,
    graphs: [(100, 100, 10.0), (1_000, 1_000, 1000.0)],
    checkpoints: 1000,
    levels: 10,
    agents: 10,
    replica_tokens: 50_000,
    replica_rollbacks: 96,
    replica_tree: (2, 5),
};

const QUICK: Sizes = Sizes {
    tokens: 1_000,
    single_rate: 100,
    single_seconds: 1,
    verify_samples: 500,
    graphs: [(10, 10, 10.0), (100, 100, 1000.0)],
    checkpoints: 40,
    levels: 4,
    agents: 3,
    replica_tokens: 1_000,
    replica_rollbacks: 6,
    replica_tree: (1, 2),
};

const BATCH: usize = 500;
const AGENT_DELAY_MS: u64 = 10;
const CONCURRENCY: usize = 64;
/// Batch clients of the replica runs: two per replica with three, the same six with one.
const REPLICA_CLIENTS: usize = 6;

pub async fn run(args: AllArgs) -> Result<(), CliError> {
    let sizes = if args.quick { &QUICK } else { &FULL };
    let db = args.database_url.as_deref();
    let mut figures = Vec::new();

    eprintln!("== ingest");
    let ingest_args = IngestArgs {
        database_url: args.database_url.clone(),
        tokens: sizes.tokens,
        batch: BATCH,
        clients: 4,
        rate: sizes.single_rate,
        seconds: sizes.single_seconds,
        verify_samples: sizes.verify_samples,
        json: true,
    };
    let service = BenchService::start(db, |_| {}).await?;
    let ingest = super::ingest::measure(&ingest_args, &service).await;
    service.stop().await;
    let ingest = ingest?;
    let raw = ingest["raw_es256_verify_per_s_one_core"]
        .as_f64()
        .unwrap_or(0.0);
    let cores = ingest["machine"]["cores"].as_f64().unwrap_or(1.0);
    let limit = raw * cores;
    let limit_is = format!("{cores} x raw ES256 verification ({raw:.0}/s per core)");
    let rate = ingest["ingest"]["tokens_per_s"].as_f64().unwrap_or(0.0);
    figures.push(
        Figure::new(
            format!("ingest, batches of {BATCH}, 4 clients"),
            rate,
            "tokens/s",
        )
        .against(limit, &limit_is)
        .target(rate >= 20_000.0 && rate >= 0.6 * limit),
    );
    if let Some(p99) = ingest["single"]["p99_ms"].as_f64() {
        figures.push(
            Figure::new(
                format!("single-token ingest p99 at {}/s", sizes.single_rate),
                p99,
                "ms",
            )
            .against(5.0, "target")
            .target(p99 < 5.0),
        );
    }

    eprintln!("== blast radius");
    let mut graphs = Vec::new();
    for (width, layers, target_ms) in sizes.graphs {
        let mut g = super::blast::in_memory(width, layers).await?;
        let ms = g["blast_radius_ms"].as_f64().unwrap_or(0.0);
        figures.push(
            Figure::new(
                format!("blast radius, {} nodes (all reached)", g["nodes"]),
                ms,
                "ms",
            )
            .against(target_ms, "target")
            .target(ms < target_ms),
        );
        eprintln!("storing {} nodes to time their load…", g["nodes"]);
        let load = super::blast::load_from_store(db, width, layers).await?;
        let load_ms = load["load_ms"].as_f64().unwrap_or(0.0)
            + load["graph_build_ms"].as_f64().unwrap_or(0.0);
        figures.push(
            Figure::new(
                format!("load from the store + graph build, {} nodes", load["nodes"]),
                load_ms,
                "ms",
            )
            .against(ms, "the blast radius on the loaded graph (no target)"),
        );
        g["load_from_store"] = load;
        graphs.push(g);
    }

    eprintln!("== rollback");
    let rollback_args = RollbackArgs {
        database_url: args.database_url.clone(),
        checkpoints: sizes.checkpoints,
        levels: sizes.levels,
        agents: sizes.agents,
        agent_delay_ms: AGENT_DELAY_MS,
        concurrency: CONCURRENCY,
        runs: 1,
        json: true,
    };
    let service = BenchService::start(db, |c| c.rollback.max_concurrency = CONCURRENCY).await?;
    let rollback = super::rollback::measure(&rollback_args, &service).await;
    service.stop().await;
    let rollback = rollback?;
    let run = &rollback["runs"][0];
    let elapsed = run["elapsed_ms"].as_f64().unwrap_or(0.0);
    let bound = rollback["lower_bound_ms"]["total"].as_f64().unwrap_or(0.0);
    let completed = run["status"] == "completed";
    figures.push(
        Figure::new(
            format!(
                "rollback, {} steps in {} levels + root, {AGENT_DELAY_MS} ms agents ({})",
                rollback["steps"],
                sizes.levels,
                run["status"].as_str().unwrap_or("?")
            ),
            elapsed,
            "ms",
        )
        .against(
            bound,
            format!("lower bound (prepare + levels x ceil(width / {CONCURRENCY}) x {AGENT_DELAY_MS} ms); target < 2000 ms"),
        )
        .target(completed && elapsed < 2000.0),
    );
    let overhead = run["overhead_ms_per_step"].as_f64().unwrap_or(0.0);
    figures.push(
        Figure::new(
            "rollback coordinator overhead per step".into(),
            overhead,
            "ms",
        )
        .against(1.0, "target")
        .target(overhead < 1.0),
    );

    let mut replicas = Value::Null;
    match db {
        Some(server) => {
            eprintln!("== replicas");
            let key = Arc::new(
                crate::ect::SigningKey::generate(crate::ect::KeyAlg::ES256).map_err(failed)?,
            );
            let batches =
                Arc::new(sign_batches(key.clone(), sizes.replica_tokens / BATCH, BATCH).await?);
            let mut rates = Vec::new();
            let mut rollback_rates = Vec::new();
            for n in [1, 3] {
                eprintln!("ingest and rollbacks through {n} replica(s)…");
                let r = replica_run(server, n, &key, batches.clone(), sizes).await?;
                rates.push((n, r.ingest_per_s));
                rollback_rates.push((n, r));
            }
            let one = rates[0].1;
            for (n, r) in &rates {
                let f = Figure::new(
                    format!("ingest, {n} unwind serve replica(s), {REPLICA_CLIENTS} clients"),
                    *r,
                    "tokens/s",
                )
                .against(limit, &limit_is);
                figures.push(f);
            }
            let three = rates[1].1;
            figures.push(
                Figure::new("replica scaling, 3 / 1".into(), three / one.max(1.0), "x")
                    .against(1.0, "1 replica (no target yet)"),
            );
            let (levels, width) = sizes.replica_tree;
            let steps = 1 + levels * width;
            let one = rollback_rates[0].1.rollbacks_per_s;
            for (n, r) in &rollback_rates {
                figures.push(
                    Figure::new(
                        format!(
                            "rollbacks, {n} replica(s): {} at once of {steps} steps, {AGENT_DELAY_MS} ms agents ({} completed)",
                            sizes.replica_rollbacks, r.completed
                        ),
                        r.rollbacks_per_s,
                        "rollbacks/s",
                    )
                    .against(one, "1 replica (no target yet)"),
                );
            }
            replicas = json!({
                "clients": REPLICA_CLIENTS, "tokens": batches.iter().map(Vec::len).sum::<usize>(),
                "tokens_per_s": rates.iter().map(|(n, r)| (n.to_string(), json!(r.round()))).collect::<serde_json::Map<_, _>>(),
                "rollbacks": sizes.replica_rollbacks, "rollback_steps": steps,
                "rollbacks_per_s": rollback_rates.iter().map(|(n, r)| (n.to_string(), json!(r.rollbacks_per_s))).collect::<serde_json::Map<_, _>>(),
                "rollbacks_completed": rollback_rates.iter().map(|(n, r)| (n.to_string(), json!(r.completed))).collect::<serde_json::Map<_, _>>(),
            });
        }
        None => eprintln!(
            "== replicas: skipped (they share one PostgreSQL database: pass --database-url)"
        ),
    }

    let report = json!({
        "machine": machine(cores).await,
        "quick": args.quick,
        "database": if db.is_some() { "postgres" } else { "sqlite" },
        "figures": figures,
        "ingest": ingest,
        "blast_radius": graphs,
        "rollback": rollback,
        "replicas": replicas,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
    } else {
        print_table(&report, &figures);
    }
    Ok(())
}

async fn machine(cores: f64) -> Value {
    let cpu = tokio::fs::read_to_string("/proc/cpuinfo")
        .await
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({ "cores": cores, "cpu": cpu, "os": std::env::consts::OS })
}

fn print_table(report: &Value, figures: &[Figure]) {
    println!(
        "machine: {} cores ({}); database: {}{}",
        report["machine"]["cores"],
        report["machine"]["cpu"].as_str().unwrap_or("?"),
        report["database"].as_str().unwrap_or("?"),
        if report["quick"] == true {
            "; QUICK sizes: the figures mean nothing"
        } else {
            ""
        }
    );
    println!(
        "{:<62} {:>14} {:>12} {:>7}  {:<6} limit",
        "figure", "value", "limit", "ratio", "target"
    );
    for f in figures {
        let value = format!("{:.2} {}", f.value, f.unit);
        let limit = f.limit.map_or(String::new(), |l| format!("{l:.2}"));
        let ratio = f.ratio.map_or(String::new(), |r| format!("{r:.2}"));
        let met = match f.target_met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "-",
        };
        println!(
            "{:<62} {:>14} {:>12} {:>7}  {:<6} {}",
            f.name, value, limit, ratio, met, f.limit_is
        );
    }
}

/// What one replica run measured.
struct ReplicaRun {
    ingest_per_s: f64,
    rollbacks_per_s: f64,
    completed: usize,
}

/// Through `n` replicas of `unwind serve` sharing one fresh database on `server`: ingests
/// `batches` (tokens per second of wall time), then runs the rollbacks of
/// [`replica_rollbacks`].
async fn replica_run(
    server: &str,
    n: usize,
    key: &Arc<crate::ect::SigningKey>,
    batches: Arc<Vec<Vec<String>>>,
    sizes: &Sizes,
) -> Result<ReplicaRun, CliError> {
    let dir =
        std::env::temp_dir().join(format!("unwind-replicas-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::create_dir_all(&dir).await.map_err(failed)?;
    let (db_url, name) = fresh_postgres_database(server).await?;
    let result = async {
        let config = write_replica_config(&dir, &db_url, key.as_ref()).await?;
        let exe = std::env::current_exe().map_err(failed)?;
        // Migrations once, before the replicas start.
        let out = tokio::process::Command::new(&exe)
            .arg("migrate")
            .arg("--config")
            .arg(&config)
            .output()
            .await
            .map_err(failed)?;
        if !out.status.success() {
            return Err(CliError::Failed(format!(
                "unwind migrate: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut children = Vec::new();
        let mut bases = Vec::new();
        for i in 0..n {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(failed)?
                .port();
            let log = tokio::fs::File::create(dir.join(format!("replica-{i}.log")))
                .await
                .map_err(failed)?
                .into_std()
                .await;
            let child = tokio::process::Command::new(&exe)
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(dir.join(format!("replica-{i}")))
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(failed)?;
            children.push(child);
            bases.push(format!("http://127.0.0.1:{port}"));
        }
        let client = reqwest::Client::new();
        for base in &bases {
            wait_ready(&client, base).await?;
        }
        let total: usize = batches.iter().map(Vec::len).sum();
        let (elapsed, _) = ingest_batches(&client, &bases, batches, REPLICA_CLIENTS).await?;
        let ingest_per_s = total as f64 / elapsed.as_secs_f64();
        let rollbacks = replica_rollbacks(&client, &bases, key, sizes).await;
        for mut c in children {
            let _ = c.kill().await;
        }
        let (rollbacks_per_s, completed) = rollbacks?;
        Ok(ReplicaRun {
            ingest_per_s,
            rollbacks_per_s,
            completed,
        })
    }
    .await;
    drop_postgres_database(server, &name).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

/// `sizes.replica_rollbacks` workflows, each a root checkpoint with `replica_tree` levels
/// below it against stub agents answering in [`AGENT_DELAY_MS`], ingested and then all rolled
/// back at once, the requests spread over `bases`. Returns rollbacks settled per second of wall
/// time (from the first request to the last settled rollback) and how many completed.
async fn replica_rollbacks(
    client: &reqwest::Client,
    bases: &[String],
    key: &Arc<crate::ect::SigningKey>,
    sizes: &Sizes,
) -> Result<(f64, usize), CliError> {
    let mut agents = Vec::new();
    for _ in 0..sizes.agents {
        agents.push(super::rollback::stub_agent(Duration::from_millis(AGENT_DELAY_MS)).await?);
    }
    let uris: Vec<String> = agents.iter().map(|(u, _)| u.clone()).collect();
    let result = async {
        let (levels, width) = sizes.replica_tree;
        let mut roots = Vec::new();
        for i in 0..sizes.replica_rollbacks {
            let (root, tokens) =
                super::rollback::workflow(key.clone(), &uris, levels, width).await?;
            let base = &bases[i % bases.len()];
            super::rollback::ingest_all(client, base, &tokens).await?;
            roots.push((base.clone(), root));
        }
        let started = Instant::now();
        let requests = roots
            .iter()
            .map(|(base, root)| super::rollback::request_rollback(client, base, root));
        let ids: std::collections::HashSet<String> = futures::future::try_join_all(requests)
            .await?
            .into_iter()
            .collect();
        // One list request per sweep: the fresh database holds only these rollbacks.
        loop {
            let page =
                super::rollback::get_json(client, &format!("{}/v1/rollbacks?limit=1000", bases[0]))
                    .await?;
            let ours: Vec<&Value> = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["rollback_id"].as_str().is_some_and(|id| ids.contains(id)))
                .collect();
            let settled = ours
                .iter()
                .filter(|r| super::rollback::is_settled(r["status"].as_str().unwrap_or_default()))
                .count();
            if settled == ids.len() {
                let elapsed = started.elapsed().as_secs_f64();
                let completed = ours.iter().filter(|r| r["status"] == "completed").count();
                return Ok((ids.len() as f64 / elapsed, completed));
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(CliError::Failed(format!(
                    "{settled} of {} rollbacks settled after 300 s",
                    ids.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    for (_, task) in agents {
        task.abort();
    }
    result
}

/// The replicas' configuration: the bench agent key trusted, the bench operator token, quiet
/// logs (the bench measures, it does not debug), and a rollback request rate limit above what
/// the bench asks for at once.
async fn write_replica_config(
    dir: &Path,
    database_url: &str,
    key: &crate::ect::SigningKey,
) -> Result<std::path::PathBuf, CliError> {
    let jwks = super::write_agent_jwks(dir, key).await?;
    // TOML basic strings take JSON string escapes, so serde_json quotes them.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let toml = format!(
        "database_url = {}\n\n[log]\nlevel = \"warn\"\n\n[rollback]\nrequests_per_s = 10000\nrequests_burst = 10000\n\n[[trust.issuers]]\nid = {}\njwks_file = {}\nrollback_hosts = [\"127.0.0.1\"]\nallow_http = true\n\n[[auth.tokens]]\nname = \"bench\"\nrole = \"operator\"\nsha256 = {}\n",
        q(database_url),
        q(&format!("{AGENT}*")),
        q(&jwks.display().to_string()),
        q(&crate::ect::sha256_hex(BENCH_TOKEN.as_bytes())),
    );
    let path = dir.join("unwind.toml");
    tokio::fs::write(&path, toml).await.map_err(failed)?;
    Ok(path)
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> Result<(), CliError> {
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(CliError::Failed(format!(
                "replica {base} not ready after 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_its_ratio_to_the_limit() {
        let f = Figure::new("x".into(), 3.0, "ms").against(4.0, "target");
        assert_eq!(f.ratio, Some(0.75));
        let none = Figure::new("x".into(), 3.0, "ms").against(0.0, "nothing");
        assert_eq!(none.ratio, None);
    }
}
