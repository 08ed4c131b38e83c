//! The command line of the `unwind-agent` binary, in the library so that deployment files
//! (docker-compose.yml) can be checked against the very definitions the binary parses.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::store::DEFAULT_QUOTA_BYTES;

/// `unwind-agent serve|checkpoint ...`.
#[derive(Debug, Parser)]
#[command(
    name = "unwind-agent",
    version,
    about = "Reference agent of the Unwind rollback protocol"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the agent protocol endpoints.
    Serve(ServeArgs),
    /// Record a checkpoint and print its signed checkpoint ECT.
    Checkpoint(CheckpointArgs),
}

/// Identity and storage shared by both commands.
#[derive(Debug, Args)]
pub struct Common {
    /// The agent's id (`iss` of its ECTs), a SPIFFE id.
    #[arg(long, env = "UNWIND_AGENT_ID")]
    pub id: String,
    /// Private JWK file of the agent's signing key (an ES256 key is generated when missing).
    #[arg(long)]
    pub key: PathBuf,
    /// Directory of the checkpoint database.
    #[arg(long, default_value = "unwind-agent-data")]
    pub data_dir: PathBuf,
    /// File holding the snapshot encryption key (base64url, 32 bytes); default
    /// `<data-dir>/snapshot.key`, generated when missing. `UNWIND_AGENT_SNAPSHOT_KEY` wins.
    #[arg(long)]
    pub snapshot_key: Option<PathBuf>,
    /// Storage quota for encrypted snapshots, in bytes.
    #[arg(long, default_value_t = DEFAULT_QUOTA_BYTES)]
    pub quota_bytes: u64,
}

/// `unwind-agent serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on (port 0: any free port; the real one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Id of the one coordinator this agent obeys.
    #[arg(long)]
    pub coordinator_id: String,
    /// JWKS file of the coordinator.
    #[arg(
        long,
        conflicts_with = "coordinator_jwks_url",
        required_unless_present = "coordinator_jwks_url"
    )]
    pub coordinator_jwks: Option<PathBuf>,
    /// JWKS URL of the coordinator (e.g. `http://127.0.0.1:8080/.well-known/jwks.json`).
    #[arg(long)]
    pub coordinator_jwks_url: Option<String>,
    /// Programmed answers, e.g. `slow:50,fail:2,execute=compensated` (see the reference module).
    #[arg(long, default_value = "prepared")]
    pub behaviour: String,
    /// Enable `POST /_test/behaviour` and `GET /_test/calls` (tests and demos only).
    #[arg(long)]
    pub test_controls: bool,
    /// Seconds between two purges of expired checkpoints.
    #[arg(long, default_value_t = 60)]
    pub purge_interval_s: u64,
}

/// `unwind-agent checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub common: Common,
    /// Workflow id of the checkpoint.
    #[arg(long)]
    pub wid: String,
    /// File holding the state snapshot.
    #[arg(long)]
    pub snapshot: PathBuf,
    /// The agent's rollback endpoint (`.../.well-known/cascade/rollback`).
    #[arg(long)]
    pub rollback_uri: Option<String>,
    /// Parent ECT ids (repeatable).
    #[arg(long = "par")]
    pub par: Vec<String>,
    /// Time to live, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
    /// Target system of the checkpointed action.
    #[arg(long)]
    pub target: Option<String>,
    /// Declare the action irreversible.
    #[arg(long)]
    pub irreversible: bool,
    /// Audience of the token: the coordinator's id.
    #[arg(
        long = "aud",
        alias = "coordinator-id",
        default_value = "spiffe://unwind.local/coordinator"
    )]
    pub aud: String,
}
