//! `unwind bench ingest`: sustained ingest throughput beside the raw ES256 verification rate
//! measured in the same run, and single-token latency at a fixed request rate.
//!
//! The service runs in this process on a fresh database (a new PostgreSQL database created
//! through `--database-url`, or SQLite in a temporary directory) and is driven over loopback
//! HTTP, so client and server share the machine's cores, as a worst case.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Map, Value, json};

use super::{AGENT, BENCH_TOKEN, BenchService, failed};
use crate::cli::CliError;
use crate::ect::{Profile, SigningKey};

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// A PostgreSQL server URL (a fresh database is created on it and dropped afterwards);
    /// default: SQLite in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Tokens to ingest in batches.
    #[arg(long, default_value_t = 100_000)]
    pub tokens: usize,
    /// Tokens per batch (each batch is one workflow's tree).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Concurrent batch clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Single-token requests per second for the latency run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of the latency run (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Signatures verified on one core for the raw rate.
    #[arg(long, default_value_t = 20_000)]
    pub verify_samples: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: IngestArgs) -> Result<(), CliError> {
    if args.batch == 0 || args.tokens < args.batch || args.clients == 0 {
        return Err(CliError::Usage(
            "need --batch >= 1, --tokens >= --batch, --clients >= 1".into(),
        ));
    }
    let service = BenchService::start(args.database_url.as_deref(), |_| {}).await?;
    let result = measure(&args, &service).await;
    service.stop().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

pub(super) async fn measure(args: &IngestArgs, service: &BenchService) -> Result<Value, CliError> {
    let base = service.base.clone();
    let database_url = service.database_url.as_str();
    let key = service.key.clone();
    eprintln!("signing {} tokens…", args.tokens);
    let batches = sign_batches(key.clone(), args.tokens / args.batch, args.batch).await?;
    eprintln!("measuring raw ES256 verification on one core…");
    let verify_rate =
        raw_verify_rate(&batches[0][0], key.public_jwk(), args.verify_samples).await?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .build()
        .map_err(failed)?;
    // Latency first, on a quiet service: the batch phase leaves the database with background
    // work (WAL checkpoints, autovacuum) that would be measured instead.
    let single = if args.seconds > 0 && args.rate > 0 {
        eprintln!("single tokens at {}/s for {} s…", args.rate, args.seconds);
        Some(single_latency(&client, &base, key.clone(), args.rate, args.seconds).await?)
    } else {
        None
    };
    eprintln!(
        "ingesting in batches of {} with {} clients…",
        args.batch, args.clients
    );
    let total: usize = batches.iter().map(Vec::len).sum();
    let (elapsed, mut batch_latencies) = ingest_batches(
        &client,
        std::slice::from_ref(&base),
        Arc::new(batches),
        args.clients,
    )
    .await?;
    let ingest_rate = total as f64 / elapsed.as_secs_f64();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let limit = verify_rate * cores as f64;
    Ok(json!({
        "machine": { "cores": cores },
        "database": if database_url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        "raw_es256_verify_per_s_one_core": verify_rate.round(),
        "ingest": {
            "tokens": total, "batch": args.batch, "clients": args.clients,
            "seconds": elapsed.as_secs_f64(),
            "tokens_per_s": ingest_rate.round(),
            "ratio_to_verify_limit": ingest_rate / limit,
            "verify_limit_all_cores": limit.round(),
            "batch_p50_ms": percentile_ms(&mut batch_latencies, 0.50),
            "batch_p99_ms": percentile_ms(&mut batch_latencies, 0.99),
        },
        "single": single,
    }))
}

/// Posts every batch, `clients` at a time (client `c` talks to `bases[c % bases.len()]`), and
/// checks that each token was created. Returns the wall time and each batch's latency.
pub(super) async fn ingest_batches(
    client: &reqwest::Client,
    bases: &[String],
    batches: Arc<Vec<Vec<String>>>,
    clients: usize,
) -> Result<(Duration, Vec<Duration>), CliError> {
    if bases.is_empty() {
        return Err(CliError::Usage("no service to ingest into".into()));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..clients {
        // Clients are spread over the bases in turn (replicas behind no load balancer).
        let base = bases[c % bases.len()].clone();
        let (client, batches, next) = (client.clone(), batches.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else { break };
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/v1/ects"))
                    .bearer_auth(BENCH_TOKEN)
                    .json(&json!({ "tokens": batch }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let body: Value = r.json().await.map_err(|e| e.to_string())?;
                latencies.push(t.elapsed());
                let created = body["results"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|x| x["status"] == "created").count());
                if !status.is_success() || created != batch.len() {
                    return Err(format!(
                        "batch {i}: {status}: {created} of {} created: {body}",
                        batch.len()
                    ));
                }
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut batch_latencies = Vec::new();
    for w in workers {
        batch_latencies.extend(w.await.map_err(failed)?.map_err(CliError::Failed)?);
    }
    Ok((started.elapsed(), batch_latencies))
}

/// `count` workflows of `size` tokens each: a binary tree (token k's parent is (k-1)/2), so a
/// batch carries its own parents and batches never wait for each other.
pub(super) async fn sign_batches(
    key: Arc<SigningKey>,
    count: usize,
    size: usize,
) -> Result<Vec<Vec<String>>, CliError> {
    let now = chrono::Utc::now().timestamp();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut handles = Vec::new();
    for part in 0..cores {
        let key = key.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for w in (part..count).step_by(cores) {
                let wid = uuid::Uuid::new_v4().to_string();
                let mut batch = Vec::with_capacity(size);
                for k in 0..size {
                    let par: Vec<String> = if k == 0 {
                        vec![]
                    } else {
                        vec![format!("{wid}-{}", (k - 1) / 2)]
                    };
                    let claims = bench_claims(
                        &format!("{AGENT}{}", k % 8),
                        &format!("{wid}-{k}"),
                        &wid,
                        par,
                        now,
                    );
                    batch.push(
                        key.sign_ect(&claims, Profile::Draft00)
                            .map_err(|e| e.to_string())?,
                    );
                }
                // Children before parents: the service has to order each batch.
                batch.reverse();
                out.push((w, batch));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.map_err(failed)?.map_err(CliError::Failed)?);
    }
    all.sort_by_key(|(w, _)| *w);
    Ok(all.into_iter().map(|(_, b)| b).collect())
}

pub(super) fn bench_claims(
    iss: &str,
    jti: &str,
    wid: &str,
    par: Vec<String>,
    now: i64,
) -> Map<String, Value> {
    let v = json!({
        "iss": iss, "aud": "spiffe://unwind.local/coordinator", "iat": now, "exp": now + 3600,
        "jti": jti, "wid": wid, "exec_act": "bench_step", "par": par,
        "out_hash": "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Signature checks per second on one core: the primitive ingest cannot beat.
pub(super) async fn raw_verify_rate(
    token: &str,
    jwk: jsonwebtoken::jwk::Jwk,
    samples: usize,
) -> Result<f64, CliError> {
    let parsed = crate::ect::jws::parse_compact(token, 16 * 1024).map_err(failed)?;
    tokio::task::spawn_blocking(move || {
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let input = parsed.signing_input.as_bytes();
        let started = Instant::now();
        for _ in 0..samples {
            let ok = jsonwebtoken::crypto::verify(
                &parsed.signature_b64,
                input,
                &key,
                jsonwebtoken::Algorithm::ES256,
            )
            .map_err(|e| e.to_string())?;
            if !ok {
                return Err("signature did not verify".to_string());
            }
        }
        Ok(samples as f64 / started.elapsed().as_secs_f64())
    })
    .await
    .map_err(failed)?
    .map_err(CliError::Failed)
}

/// Single `application/jwt` requests at a fixed rate; latency percentiles.
pub(super) async fn single_latency(
    client: &reqwest::Client,
    base: &str,
    key: Arc<SigningKey>,
    rate: u64,
    seconds: u64,
) -> Result<Value, CliError> {
    let n = (rate * seconds) as usize;
    // One more second first, not measured: connections to the service and the database are
    // opened while the rate ramps up, and that start-up is not the steady state.
    let warmup = rate as usize;
    let now = chrono::Utc::now().timestamp();
    let wid = uuid::Uuid::new_v4().to_string();
    let tokens: Vec<String> = {
        let key = key.clone();
        let wid = wid.clone();
        tokio::task::spawn_blocking(move || {
            (0..n + warmup)
                .map(|k| {
                    key.sign_ect(
                        &bench_claims(
                            &format!("{AGENT}single"),
                            &format!("{wid}-s{k}"),
                            // A hundred workflows in turn, as from many agents at once.
                            &format!("{wid}-{}", k % 100),
                            vec![],
                            now,
                        ),
                        Profile::Draft00,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(failed)?
        .map_err(failed)?
    };
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(n);
    for token in tokens {
        ticker.tick().await;
        let client = client.clone();
        let url = format!("{base}/v1/ects");
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client
                .post(url)
                .bearer_auth(BENCH_TOKEN)
                .header("content-type", "application/jwt")
                .body(token)
                .send()
                .await;
            let ok = matches!(&r, Ok(r) if r.status().as_u16() == 201);
            (t.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut errors = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let (latency, ok) = h.await.map_err(failed)?;
        if i < warmup {
            continue;
        }
        latencies.push(latency);
        if !ok {
            errors += 1;
        }
    }
    Ok(json!({
        "rate_per_s": rate, "requests": n, "errors": errors,
        "p50_ms": percentile_ms(&mut latencies, 0.50),
        "p99_ms": percentile_ms(&mut latencies, 0.99),
        "max_ms": percentile_ms(&mut latencies, 1.0),
    }))
}

pub(super) fn percentile_ms(values: &mut [Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    (values[i].as_secs_f64() * 1e6).round() / 1e3
}

fn print_report(r: &Value) {
    let i = &r["ingest"];
    println!(
        "machine: {} cores; database: {}",
        r["machine"]["cores"], r["database"]
    );
    println!(
        "raw ES256 verification, one core:  {:>10} tokens/s",
        r["raw_es256_verify_per_s_one_core"]
    );
    println!(
        "verification limit, all cores:     {:>10} tokens/s",
        i["verify_limit_all_cores"]
    );
    println!(
        "ingest ({} tokens, batches of {}, {} clients): {} tokens/s = {:.2} x the limit (batch p50 {} ms, p99 {} ms)",
        i["tokens"],
        i["batch"],
        i["clients"],
        i["tokens_per_s"],
        i["ratio_to_verify_limit"].as_f64().unwrap_or(0.0),
        i["batch_p50_ms"],
        i["batch_p99_ms"]
    );
    if let Some(s) = r["single"].as_object() {
        println!(
            "single tokens at {}/s ({} requests, {} errors): p50 {} ms, p99 {} ms, max {} ms",
            s["rate_per_s"], s["requests"], s["errors"], s["p50_ms"], s["p99_ms"], s["max_ms"]
        );
    }
}
