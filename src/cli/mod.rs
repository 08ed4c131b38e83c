//! The `unwind` command line: the service (`serve`, `migrate`), tools for agent authors
//! (`keys generate`, `ect sign|verify|decode`) and operator commands (`blast-radius`,
//! `rollback …`, `dag`, `export`, `verify`). Exit codes: 0 success, 1 a refused token or a
//! failed operation, 2 a usage or configuration error, 3 a rollback awaiting a decision, 4 an
//! audit with findings (docs/cli.md).

pub mod audit;
pub mod bench;
pub mod client;
pub mod dag;
pub mod demo;
pub mod ect;
pub mod rollback;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use ect::{EctCommand, KeysCommand};

#[derive(Debug, Parser)]
#[command(
    name = "unwind",
    version,
    about = "Rollback coordinator for multi-agent workflows",
    long_about = "Unwind records Execution Context Tokens (ECTs) in an append-only ledger, answers \
                  questions about their DAG and coordinates rollbacks.\n\n\
                  Start it on the embedded default (SQLite in ./unwind-data):\n  unwind serve"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator.
    ///
    /// Example: unwind serve --config unwind.toml
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    ///
    /// Example: unwind migrate --database-url postgres://unwind@db/unwind
    Migrate(ServeArgs),
    /// Signing keys for agents and tests.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign, verify and decode ECTs.
    #[command(subcommand)]
    Ect(EctCommand),
    /// Print the OpenAPI document of this build.
    ///
    /// Example: unwind openapi > openapi/unwind.json
    Openapi,
    /// Measure the service (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show what an ECT's failure affects: descendants, agents and checkpoints.
    ///
    /// Example: unwind blast-radius 7f3c2a9e-… --max-depth 3 --output json
    BlastRadius(rollback::BlastRadiusArgs),
    /// Request, follow and decide on rollbacks.
    #[command(subcommand)]
    Rollback(rollback::RollbackCommand),
    /// Show a workflow's DAG: a tree in the terminal, or Graphviz DOT / Mermaid.
    ///
    /// Example: unwind dag --wid wf-42 --format mermaid
    Dag(dag::DagArgs),
    /// Write a workflow's tokens, rollbacks and verification keys to one file for audit.
    ///
    /// Example: unwind export --wid wf-42 --out wf-42.export.json
    Export(audit::ExportArgs),
    /// Audit an export offline (signatures, claims, DAG rules, rollback evidence, hash chain),
    /// or with `--live` a running coordinator's whole hash chain and its signed head.
    ///
    /// Exit codes: 0 no findings, 4 findings (one line each: check, jti, detail), 2 a file
    /// that cannot be read or is not an export.
    ///
    /// Example: unwind verify wf-42.export.json --jwks keys-from-the-coordinator.json
    /// Example: unwind verify --live --url https://unwind.example --jwks keys.json
    Verify(audit::VerifyArgs),
    /// A guided tour: Unwind and five reference agents on this machine, a network change that
    /// fails, a circuit breaker, a cascade, a rollback and an escalation.
    ///
    /// Example: unwind demo --listen 127.0.0.1:8080 --data-dir ./unwind-demo
    Demo(demo::DemoArgs),
}

/// Where the configuration comes from: defaults < `--config` file < `UNWIND_*` < these flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "UNWIND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub listen: Option<String>,
    /// sqlite://… or postgres://… .
    #[arg(long)]
    pub database_url: Option<String>,
    /// Data directory (embedded database, generated key and admin token).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl ServeArgs {
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            listen: self.listen.clone(),
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

/// Why a command failed, and which exit code that means.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or configuration: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The operation failed or a token was refused: exit code 1.
    #[error("{0}")]
    Failed(String),
    /// A watched rollback stopped to wait for an operator's decision: exit code 3.
    #[error("{0}")]
    AwaitingDecision(String),
    /// An audit (`unwind verify`) found something: exit code 4.
    #[error("{0}")]
    Findings(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
            CliError::AwaitingDecision(_) => 3,
            CliError::Findings(_) => audit::FINDINGS_EXIT_CODE,
        }
    }
}
