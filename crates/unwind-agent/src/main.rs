//! `unwind-agent`: the reference agent of the Unwind rollback protocol, for tests and demos.
//!
//! - `unwind-agent serve ...` answers prepare/execute/probe calls as `--behaviour` programs.
//! - `unwind-agent checkpoint ...` records a snapshot and prints its signed checkpoint ECT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::AsyncWriteExt;
use unwind_agent::cli::{CheckpointArgs, Cli, Command, Common, ServeArgs};
use unwind_agent::reference::{self, Behaviour, Controls, ReferenceHandler};
use unwind_agent::{
    Agent, CheckpointStore, CoordinatorKeys, EctSigner, SnapshotKey, StoreOptions, record_and_sign,
};
use unwind_ect::{KeyAlg, SigningKey};

/// Environment variable that may carry the snapshot key (base64url, 32 bytes) instead of a file.
const SNAPSHOT_KEY_ENV: &str = "UNWIND_AGENT_SNAPSHOT_KEY";

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Checkpoint(args) => checkpoint(args).await,
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let behaviour: Behaviour = args.behaviour.parse()?;
    tokio::fs::create_dir_all(&args.common.data_dir)
        .await
        .with_context(|| format!("creating {}", args.common.data_dir.display()))?;
    let _lock = lock_data_dir(&args.common.data_dir).await?;
    let key = load_or_create_signing_key(&args.common.key).await?;
    let store = open_store(&args.common).await?;
    let coordinator_keys = match (&args.coordinator_jwks, &args.coordinator_jwks_url) {
        (Some(path), None) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            CoordinatorKeys::Static(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a JWKS", path.display()))?,
            )
        }
        (None, Some(url)) => CoordinatorKeys::Url(url.clone()),
        _ => bail!("give exactly one of --coordinator-jwks or --coordinator-jwks-url"),
    };
    let controls = Controls::new(behaviour);
    let agent = Agent::builder()
        .id(&args.common.id)
        .signing_key(key)
        .coordinator(&args.coordinator_id, coordinator_keys)
        .store(store)
        .handler(Arc::new(ReferenceHandler::new(controls.clone())))
        .build()?;
    let _purger = agent.spawn_purger(Duration::from_secs(args.purge_interval_s.max(1)));
    let app = reference::router(&agent, controls, args.test_controls);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("listening on http://{addr}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    tracing::info!(agent = %agent.id(), %addr, test_controls = args.test_controls, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn checkpoint(args: CheckpointArgs) -> Result<()> {
    let key = load_or_create_signing_key(&args.common.key).await?;
    let store = open_store(&args.common).await?;
    let snapshot = tokio::fs::read(&args.snapshot)
        .await
        .with_context(|| format!("reading {}", args.snapshot.display()))?;
    let reversible = !args.irreversible;
    if reversible && args.rollback_uri.is_none() {
        bail!("a reversible checkpoint needs --rollback-uri");
    }
    let signer = EctSigner::new(&args.common.id, key, &args.aud);
    let (_, token) = record_and_sign(
        &store,
        &signer,
        &snapshot,
        args.ttl,
        args.target.as_deref(),
        reversible,
        &args.wid,
        &args.par,
        args.rollback_uri.as_deref(),
    )
    .await?;
    store.close().await;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("{token}\n").as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

async fn open_store(common: &Common) -> Result<CheckpointStore> {
    tokio::fs::create_dir_all(&common.data_dir)
        .await
        .with_context(|| format!("creating {}", common.data_dir.display()))?;
    let snapshot_key = load_snapshot_key(common).await?;
    let mut options = StoreOptions::in_dir(&common.data_dir, &common.id, snapshot_key);
    options.quota_bytes = common.quota_bytes;
    Ok(CheckpointStore::open(options).await?)
}

async fn load_snapshot_key(common: &Common) -> Result<SnapshotKey> {
    if let Ok(value) = std::env::var(SNAPSHOT_KEY_ENV) {
        return SnapshotKey::from_base64url(&value).with_context(|| SNAPSHOT_KEY_ENV.to_string());
    }
    let path = common
        .snapshot_key
        .clone()
        .unwrap_or_else(|| common.data_dir.join("snapshot.key"));
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => {
            SnapshotKey::from_base64url(&text).with_context(|| format!("{}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SnapshotKey::generate()?;
            write_secret(&path, &key.to_base64url()).await?;
            tracing::info!(path = %path.display(), "generated a snapshot encryption key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

async fn load_or_create_signing_key(path: &Path) -> Result<SigningKey> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => SigningKey::from_private_jwk_json(&text)
            .with_context(|| format!("{} is not a private JWK", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(KeyAlg::ES256)?;
            write_secret(path, &key.to_private_jwk_json()).await?;
            tracing::info!(path = %path.display(), kid = key.kid(), "generated a signing key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a new secret file readable only by its owner; never overwrites one.
async fn write_secret(path: &Path, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes()).await?;
    file.sync_all().await?;
    Ok(())
}

/// One `serve` per data directory: a second one would take the first one's running rollbacks
/// for interrupted ones.
async fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("serve.lock");
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?
        .into_std()
        .await;
    if file.try_lock().is_err() {
        bail!("{} is in use by another unwind-agent serve", dir.display());
    }
    Ok(file)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
