//! `unwind bench`: whole-system measurements (see docs/benchmarks.md).
//!
//! Each bench runs the real service in this process, on a fresh database (a new PostgreSQL
//! database created through `--database-url` and dropped afterwards, or SQLite in a temporary
//! directory), and drives it over loopback HTTP, so client and server share the machine's cores:
//! a worst case.

mod all;
mod blast;
mod ingest;
mod plot;
mod rollback;
mod soak;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use super::CliError;
use crate::config::{AuthTokenConfig, Config, Role, TrustIssuerConfig};
use crate::ect::{KeyAlg, SigningKey};

pub use all::AllArgs;
pub use ingest::IngestArgs;
pub use rollback::RollbackArgs;
pub use soak::SoakArgs;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Ingest throughput beside the raw verification rate, and single-token latency.
    ///
    /// Example: unwind bench ingest --database-url postgres://postgres@127.0.0.1/postgres
    Ingest(IngestArgs),
    /// A wide, deep rollback against agents that answer after a fixed delay.
    ///
    /// Example: unwind bench rollback --checkpoints 1000 --levels 10 --agent-delay-ms 10
    Rollback(RollbackArgs),
    /// Constant mixed load for a while: memory and latency must stay flat.
    ///
    /// Example: unwind bench soak --duration 10m --out soak-results
    Soak(SoakArgs),
    /// The performance record: every figure of design.md §9 in one run, beside its limit.
    ///
    /// Example: unwind bench all --database-url postgres://postgres@127.0.0.1/postgres
    All(AllArgs),
}

pub async fn run(cmd: BenchCommand) -> Result<(), CliError> {
    match cmd {
        BenchCommand::Ingest(args) => ingest::run(args).await,
        BenchCommand::Rollback(args) => rollback::run(args).await,
        BenchCommand::Soak(args) => soak::run(args).await,
        BenchCommand::All(args) => all::run(args).await,
    }
}

const BENCH_TOKEN: &str = "bench-operator-token-0123456789";
const AGENT: &str = "spiffe://bench.example/agent/";

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Resident set size of this process in KiB, from `/proc/self/status` (0 where unavailable).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Writes the public JWKS of the bench's agent key into `dir`; the file's path (what the
/// services under measurement trust).
async fn write_agent_jwks(dir: &std::path::Path, key: &SigningKey) -> Result<PathBuf, CliError> {
    let jwks = dir.join("agents.jwks.json");
    tokio::fs::write(
        &jwks,
        serde_json::to_vec(&key.public_jwks()).map_err(failed)?,
    )
    .await
    .map_err(failed)?;
    Ok(jwks)
}

/// The service under measurement, with a trusted agent key and an operator token.
struct BenchService {
    base: String,
    database_url: String,
    key: Arc<SigningKey>,
    server: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
    dir: PathBuf,
    dropper: Option<(String, String)>,
}

impl BenchService {
    async fn start(
        database_url: Option<&str>,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<Self, CliError> {
        let dir =
            std::env::temp_dir().join(format!("unwind-bench-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&dir).await.map_err(failed)?;
        let (url, dropper) = match database_url {
            Some(url) if url.starts_with("postgres") => {
                let (db_url, name) = fresh_postgres_database(url).await?;
                (db_url, Some((url.to_string(), name)))
            }
            Some(other) => {
                return Err(CliError::Usage(format!(
                    "--database-url must be postgres://…, not {other}"
                )));
            }
            None => (format!("sqlite://{}", dir.join("bench.db").display()), None),
        };
        let key = SigningKey::generate(KeyAlg::ES256).map_err(failed)?;
        let jwks = write_agent_jwks(&dir, &key).await?;
        let mut config = Config {
            listen: "127.0.0.1:0".parse().map_err(failed)?,
            database_url: Some(url.clone()),
            data_dir: dir.join("data"),
            ..Config::default()
        };
        config.trust.issuers = vec![TrustIssuerConfig {
            id: format!("{AGENT}*"),
            jwks_file: Some(jwks),
            rollback_hosts: vec!["127.0.0.1".into()],
            allow_http: true,
            ..Default::default()
        }];
        config.auth.tokens = vec![AuthTokenConfig {
            name: "bench".into(),
            role: Role::Operator,
            sha256: crate::ect::sha256_hex(BENCH_TOKEN.as_bytes()),
        }];
        adjust(&mut config);
        let prepared = crate::service::prepare(config).await.map_err(failed)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(failed)?;
        let base = format!("http://{}", listener.local_addr().map_err(failed)?);
        let worker = tokio::spawn(
            prepared
                .coordinator
                .clone()
                .run(std::future::pending::<()>()),
        );
        let app = crate::api::router(prepared.state);
        let server = tokio::spawn(async move {
            let _ = crate::service::serve(listener, app, std::future::pending()).await;
        });
        Ok(Self {
            base,
            database_url: url,
            key: Arc::new(key),
            server,
            worker,
            dir,
            dropper,
        })
    }

    async fn stop(self) {
        self.server.abort();
        self.worker.abort();
        if let Some((server, name)) = &self.dropper {
            drop_postgres_database(server, name).await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

async fn fresh_postgres_database(server_url: &str) -> Result<(String, String), CliError> {
    use sqlx::Connection;
    let name = format!("unwind_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server_url)
        .await
        .map_err(failed)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(failed)?;
    let mut url = reqwest::Url::parse(server_url).map_err(failed)?;
    url.set_path(&name);
    Ok((url.to_string(), name))
}

async fn drop_postgres_database(server_url: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(server_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}
