//! Start-up of `unwind serve`: open and migrate the store, load or create the coordinator's
//! signing key and the admin token, build the verifier and ledger, and serve until a signal.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::AsyncWriteExt;

use std::time::Duration;

use crate::agents::breakers::Circuits;
use crate::agents::bulkhead::Bulkhead;
use crate::agents::circuit::CircuitSettings;
use crate::agents::{AgentClient, CallSettings};
use crate::api::rollbacks::RequestLimiter;
use crate::api::{AppState, Authenticator};
use crate::cascade::{CascadeDetector, CascadeSettings, DetectionQueue};
use crate::config::{Config, Role};
use crate::ect::{KeyAlg, SigningKey, TrustStore, Verifier, VerifyPolicy};
use crate::hitl::{Decisions, Deliverer, DeliverySettings, Escalations, Hitl};
use crate::ledger::Ledger;
use crate::retention::{Pruner, RetentionSettings};
use crate::rollback::driver::{Coordinator, DriverSettings};
use crate::rollback::evidence::EvidenceSigner;
use crate::store::keys::sealed::{self, Passphrase, Sealer};
use crate::store::{self, NewKey, Store, StoreError, StoredKey};
use jsonwebtoken::jwk::JwkSet;

mod connections;
pub use connections::{ConnectionLimits, default_max_connections};

/// The environment variable holding the passphrase of the stored signing key.
pub const KEY_PASSPHRASE_ENV: &str = "UNWIND_KEY_PASSPHRASE";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("trust configuration: {0}")]
    Trust(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error(
        "the database is not migrated to this version ({0}): run `unwind migrate` with a role \
         that may change the schema, or set migrate_on_start = true"
    )]
    NotMigrated(String),
    #[error("coordinator key {kid}: {message}")]
    Key { kid: String, message: String },
}

/// Everything `serve` prepared, before it listens.
pub struct Prepared {
    pub state: AppState,
    /// The rollback worker; `run` starts it beside the server.
    pub coordinator: Arc<Coordinator>,
    /// The webhook delivery worker; `run` starts it beside the server.
    pub deliverer: Arc<Deliverer>,
    /// Lines worth showing the operator at start (where the key and token are).
    pub notices: Vec<String>,
    /// The cascade detection task, started by `prepare`.
    pub detector: tokio::task::JoinHandle<()>,
    /// The retention pruner; `run` starts it beside the server.
    pub pruner: Arc<Pruner>,
}

/// Opens the store (creating the data directory for the embedded default) and migrates it,
/// or with `migrate` false checks that it is migrated to this version.
pub async fn open_store(config: &Config, migrate: bool) -> Result<Arc<dyn Store>, ServiceError> {
    let url = config.database_url();
    let file = sqlite_file(&url);
    if let Some(file) = &file {
        ensure_private_dir(&config.data_dir).await?;
        create_private_file(file).await?;
    }
    let store = store::connect(&url).await?;
    if migrate {
        store.migrate().await?;
    } else {
        match store.ready().await {
            Err(StoreError::NotMigrated(detail)) => return Err(ServiceError::NotMigrated(detail)),
            other => other?,
        }
    }
    // The database holds the signing key: owner only, and so its WAL and shared memory
    // (which SQLite creates with the database's mode from now on).
    if let Some(file) = &file {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = file.clone().into_os_string();
            path.push(suffix);
            restrict_mode(Path::new(&path), 0o600).await?;
        }
    }
    Ok(store)
}

/// The file of a `sqlite:` URL, unless it is in memory.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    let in_memory = file.as_os_str().is_empty()
        || file.to_string_lossy().starts_with(":memory:")
        || url.contains("mode=memory");
    (!in_memory).then(|| file.to_path_buf())
}

/// Builds the application state from a validated configuration.
pub async fn prepare(config: Config) -> Result<Prepared, ServiceError> {
    let mut notices = Vec::new();
    // The generated admin token lives here (the embedded database too): owner only.
    if config.admin_token_file.is_none() {
        ensure_private_dir(&config.data_dir).await?;
    }
    let store = open_store(&config, config.migrate_on_start).await?;

    let (signing_key, key_notice) = coordinator_key(&config, store.as_ref()).await?;
    notices.push(key_notice);
    let coordinator_jwks = coordinator_jwks(&signing_key, &store.unretired_keys().await?);

    let token_path = config.admin_token_path();
    // The generated one; a configured file may be a read-only mounted secret, left as it is.
    if config.admin_token_file.is_none() {
        restrict_mode(&token_path, 0o600).await?;
    }
    let (admin_token, created) = load_or_create_admin_token(&token_path).await?;
    notices.push(format!(
        "admin token: {}{}",
        token_path.display(),
        if created { " (created)" } else { "" }
    ));

    let mut trust =
        TrustStore::from_config(&config.trust).map_err(|e| ServiceError::Trust(e.to_string()))?;
    trust.add_static_issuer(&config.coordinator_id, coordinator_jwks);
    let policy = VerifyPolicy::from_config(&config.ect).map_err(|message| {
        ServiceError::Config(crate::config::ConfigError::Key {
            key: "ect.algorithms".into(),
            message,
        })
    })?;
    let trust = Arc::new(trust);
    let verifier = Arc::new(Verifier::new(trust.clone(), policy));
    let (detection_queue, detection_rx) = DetectionQueue::new(config.cascade.queue);
    let ledger = Arc::new(
        Ledger::new(store.clone(), verifier, config.ect.clock_skew_s)
            .with_own_issuer(config.coordinator_id.clone())
            .with_observer(Arc::new(detection_queue)),
    );
    let signing_key = Arc::new(signing_key);

    let evidence = EvidenceSigner::new(
        signing_key.clone(),
        &config.coordinator_id,
        config.ect.profile,
        config.rollback.evidence_ttl_s,
    )
    .with_token_limit(config.ect.max_token_bytes);
    let owner = format!("{}/{}", std::process::id(), uuid::Uuid::new_v4().simple());
    // Secrets are resolved now: a missing one stops the start, naming its key.
    let targets = crate::hitl::webhook::resolve(&config.hitl, |var| std::env::var(var).ok())?;
    let delivery_wake = Arc::new(tokio::sync::Notify::new());
    let escalations = Arc::new(Escalations::new(
        store.clone(),
        targets.iter().map(|t| t.url.clone()).collect(),
        config.public_url(),
        delivery_wake.clone(),
    ));
    let call_settings = CallSettings::from_config(&config.rollback);
    let circuits = Circuits::new(
        CircuitSettings::from_config(&config.circuit),
        store.clone(),
        ledger.clone(),
        evidence.clone(),
        call_settings.timeout,
    )
    .with_escalations(escalations.clone());
    let agents = AgentClient::new(trust, call_settings)
        .map_err(|e| ServiceError::Trust(format!("agent client: {e}")))?
        .with_circuits(Arc::new(circuits))
        .with_bulkhead(Bulkhead::new(
            "agent_calls",
            config.rollback.max_calls_per_workflow,
        ));
    let deliverer = Deliverer::new(
        store.clone(),
        targets,
        DeliverySettings::from_config(&config.hitl, owner.clone()),
        delivery_wake,
    )
    .map_err(|e| ServiceError::Trust(format!("webhook client: {e}")))?;
    let hitl = Arc::new(Hitl {
        escalations: escalations.clone(),
        decisions: Decisions::new(store.clone(), ledger.clone(), evidence.clone()),
    });
    // Detection runs for as long as the runtime: the ledger it records into holds its queue.
    let detector = CascadeDetector::new(
        store.clone(),
        ledger.clone(),
        evidence.clone(),
        CascadeSettings {
            window_s: i64::try_from(config.cascade.window_s).unwrap_or(i64::MAX),
            min_reporters: config.cascade.min_reporters,
            queue: config.cascade.queue,
            auto_rollback: config.cascade.auto_rollback.clone(),
            escalate_above_agents: config.cascade.escalate_above_agents,
        },
    )
    .escalating_to(escalations.clone());
    let detector = tokio::spawn(detector.run(detection_rx, std::future::pending::<()>()));
    let coordinator = Coordinator::new(
        store.clone(),
        ledger.clone(),
        Arc::new(agents),
        evidence,
        escalations,
        DriverSettings {
            owner,
            lease: Duration::from_secs(config.rollback.lease_s),
            max_concurrency: config.rollback.max_concurrency,
            step_deadline: Duration::from_secs(config.rollback.step_deadline_s),
            poll_interval: Duration::from_millis(config.rollback.poll_ms.max(10)),
            max_rollbacks: config.rollback.max_active,
            max_rollbacks_per_workflow: config.rollback.max_active_per_workflow,
            evidence_ttl: Duration::from_secs(config.rollback.evidence_ttl_s),
        },
    );
    let rollback_limiter = Arc::new(RequestLimiter::new(
        config.rollback.requests_per_s,
        config.rollback.requests_burst,
    ));

    let pruner = Pruner::new(
        store.clone(),
        RetentionSettings::from_config(&config.retention),
    );

    let mut auth = Authenticator::new(&config.auth.tokens);
    auth.add_token("admin", Role::Admin, &admin_token);

    let state = AppState {
        config: Arc::new(config),
        store,
        ledger,
        auth: Arc::new(auth),
        signing_key,
        metrics: metrics_handle(),
        coordinator: Some(coordinator.clone()),
        rollback_limiter,
        hitl,
    };
    Ok(Prepared {
        state,
        coordinator,
        deliverer,
        notices,
        detector,
        pruner,
    })
}

/// Prepares, listens and serves until `shutdown` completes; in-flight requests finish first.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let addr = config.listen;
    let prepared = prepare(config).await?;
    for notice in &prepared.notices {
        println!("unwind: {notice}");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServiceError::Serve)?;
    println!("unwind: listening on http://{local}");
    tracing::info!(%local, "listening");
    let heads = head_pinner(&prepared.state);
    let limits = ConnectionLimits::from_config(&prepared.state.config.limits);
    let app = crate::api::router(prepared.state);
    // One signal stops both the server and the rollback worker.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let heads = {
        let mut rx = stop_rx.clone();
        tokio::spawn(heads.run(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    };
    let worker = {
        let mut rx = stop_rx.clone();
        tokio::spawn(prepared.coordinator.run(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    };
    let delivery = {
        let mut rx = stop_rx.clone();
        tokio::spawn(prepared.deliverer.run(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    };
    let pruning = {
        let mut rx = stop_rx.clone();
        tokio::spawn(prepared.pruner.run(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    };
    let mut rx = stop_rx;
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    connections::serve(listener, app, limits, async move {
        let _ = rx.wait_for(|stop| *stop).await;
    })
    .await
    .map_err(ServiceError::Serve)?;
    let _ = worker.await;
    let _ = delivery.await;
    let _ = pruning.await;
    let _ = heads.await;
    tracing::info!("stopped");
    Ok(())
}

/// The task that pins the ledger's signed head to `<data_dir>/ledger-heads.jsonl` and the
/// `ledger.head` webhook event every `ledger.head_interval_s`.
pub fn head_pinner(state: &AppState) -> Arc<crate::ledger::heads::HeadPinner> {
    Arc::new(
        crate::ledger::heads::HeadPinner::new(
            state.store.clone(),
            state.signing_key.clone(),
            state.config.coordinator_id.clone(),
            state.config.ledger_heads_path(),
            Duration::from_secs(state.config.ledger.head_interval_s),
        )
        .with_sink(state.hitl.escalations.clone()),
    )
}

/// Serves `app` on `listener` with the default connection limits until `shutdown` completes,
/// then lets in-flight requests finish. Nagle's algorithm is turned off on every connection: a
/// response written in two segments would otherwise wait for the client's delayed ACK (about
/// 40 ms).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    connections::serve(listener, app, ConnectionLimits::default(), shutdown).await
}

/// Like [`serve`], under `limits`.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    connections::serve(listener, app, limits, shutdown).await
}

/// Completes on SIGTERM or Ctrl-C. The handlers are registered when this is called (not when
/// the future is first polled), so a signal that arrives while the server is still starting
/// already leads to a graceful stop instead of the default "terminate at once".
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for signals; stop with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
            tracing::info!("shutting down: finishing in-flight requests");
        }
    }
    #[cfg(not(unix))]
    async move {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            match PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| b.install_recorder())
            {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Creates `dir` (mode 0700) when missing, and takes others' access away when it has some.
async fn ensure_private_dir(dir: &Path) -> Result<(), ServiceError> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).await.map_err(|e| ServiceError::File {
        path: dir.to_path_buf(),
        message: format!("cannot create directory: {e}"),
    })?;
    restrict_mode(dir, 0o700).await
}

/// Creates an empty file readable by its owner only when `path` is missing, so the database
/// SQLite then opens is never readable by others, not even for a moment.
async fn create_private_file(path: &Path) -> Result<(), ServiceError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| ServiceError::File {
                path: parent.to_path_buf(),
                message: format!("cannot create directory: {e}"),
            })?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(path).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ServiceError::File {
            path: path.to_path_buf(),
            message: format!("cannot create: {e}"),
        }),
    }
}

/// Clears the permission bits of `path` outside `allowed` (0700 or 0600) when any are set; a
/// missing path is left alone. Failing to is an error: the start stops rather than serve with
/// a key others can read.
async fn restrict_mode(path: &Path, allowed: u32) -> Result<(), ServiceError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file_error = |message: String| ServiceError::File {
            path: path.to_path_buf(),
            message,
        };
        let mode = match tokio::fs::metadata(path).await {
            Ok(meta) => meta.permissions().mode() & 0o7777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(file_error(format!("cannot read its mode: {e}"))),
        };
        if mode & !allowed == 0 {
            return Ok(());
        }
        let tightened = mode & allowed;
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened))
            .await
            .map_err(|e| {
                file_error(format!(
                    "mode {mode:o} lets others in and cannot be changed to {tightened:o}: {e}"
                ))
            })?;
        tracing::warn!(path = %path.display(), from = %format!("{mode:o}"), to = %format!("{tightened:o}"), "file mode tightened");
    }
    #[cfg(not(unix))]
    let _ = (path, allowed);
    Ok(())
}

/// Writes a new file readable by its owner only; fails if it exists (so two processes starting
/// together cannot both create one).
pub async fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    file.write_all(contents).await?;
    file.sync_all().await
}

/// The key Unwind signs with, and the line telling the operator where it comes from.
///
/// `signing_key_file` when configured (generated there when absent). Otherwise the store's
/// active key, so every replica of one database signs with the same key: made once by whichever
/// replica starts first. A `coordinator.jwk` left in the data directory by an earlier version is
/// imported (as the active key when the store has none, else as a trusted one), so evidence it
/// signed still verifies. With a passphrase (`UNWIND_KEY_PASSPHRASE` or
/// `signing_key_passphrase_file`) every private key in the store is kept sealed, and plaintext
/// ones left by an earlier start are sealed now.
pub async fn coordinator_key(
    config: &Config,
    store: &dyn Store,
) -> Result<(SigningKey, String), ServiceError> {
    if let Some(path) = &config.signing_key_file {
        let (key, created) = load_or_create_key(path).await?;
        let notice = format!(
            "coordinator signing key: {} (kid {}{})",
            path.display(),
            key.kid(),
            if created { ", created" } else { "" }
        );
        return Ok((key, notice));
    }
    let passphrase = key_passphrase(config, |var| std::env::var(var).ok()).await?;
    // Derived once (it is slow on purpose), and only when something is to be sealed.
    let sealer: tokio::sync::OnceCell<Arc<Sealer>> = tokio::sync::OnceCell::new();
    let stored_form = |key: SigningKey| {
        let (passphrase, sealer) = (passphrase.clone(), &sealer);
        async move {
            let private_jwk = key.to_private_jwk_json();
            let Some(passphrase) = passphrase else {
                return Ok(private_jwk);
            };
            let sealer = sealer
                .get_or_try_init(|| blocking(move || Sealer::new(&passphrase).map(Arc::new)))
                .await
                .map_err(|e| key_error(key.kid(), e))?
                .clone();
            let public =
                serde_json::to_value(key.public_jwk()).map_err(|e| key_error(key.kid(), e))?;
            let kid = key.kid().to_string();
            blocking(move || sealer.seal(&kid, &private_jwk, public))
                .await
                .map_err(|e| key_error(key.kid(), e))
        }
    };
    let legacy_path = config.signing_key_path();
    let legacy = match tokio::fs::read_to_string(&legacy_path).await {
        Ok(text) => {
            Some(
                SigningKey::from_private_jwk_json(&text).map_err(|e| ServiceError::File {
                    path: legacy_path.clone(),
                    message: e.to_string(),
                })?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(ServiceError::File {
                path: legacy_path,
                message: format!("cannot read: {e}"),
            });
        }
    };
    // (created here, imported from the legacy file)
    let (active, made) = match store.active_key().await? {
        Some(active) => (active, (false, false)),
        None => {
            let offered = match &legacy {
                Some(key) => key.clone(),
                None => SigningKey::generate(KeyAlg::ES256)
                    .map_err(|e| ServiceError::Trust(format!("cannot generate a key: {e}")))?,
            };
            // Of replicas starting together, one key wins and all use it.
            let active = store
                .ensure_active_key(&new_key(&offered, stored_form(offered.clone()).await?))
                .await?;
            let won = active.kid == offered.kid();
            (active, (won && legacy.is_none(), won && legacy.is_some()))
        }
    };
    if let Some(legacy) = &legacy
        && legacy.kid() != active.kid
        && !store
            .all_keys()
            .await?
            .iter()
            .any(|k| k.kid == legacy.kid())
    {
        store
            .add_key(&new_key(legacy, stored_form(legacy.clone()).await?))
            .await?;
    }
    let private_jwk = if sealed::is_sealed(&active.private_jwk) {
        let Some(passphrase) = passphrase.clone() else {
            return Err(key_error(
                &active.kid,
                format!(
                    "it is stored encrypted: give its passphrase in {KEY_PASSPHRASE_ENV} or \
                     signing_key_passphrase_file"
                ),
            ));
        };
        let (stored, kid) = (active.private_jwk.clone(), active.kid.clone());
        blocking(move || sealed::open(&stored, &kid, &passphrase))
            .await
            .map_err(|e| key_error(&active.kid, format!("cannot decrypt it: {e}")))?
    } else {
        active.private_jwk.clone()
    };
    let key = SigningKey::from_private_jwk_json(&private_jwk).map_err(|e| {
        ServiceError::Store(StoreError::Corrupt(format!(
            "coordinator key {}: {e}",
            active.kid
        )))
    })?;
    if key.kid() != active.kid {
        return Err(key_error(
            &active.kid,
            format!("the stored private key is that of kid {}", key.kid()),
        ));
    }
    let mut sealed_now = 0;
    if passphrase.is_some() {
        for row in store.all_keys().await? {
            if sealed::is_sealed(&row.private_jwk) {
                continue;
            }
            let plain = SigningKey::from_private_jwk_json(&row.private_jwk)
                .map_err(|e| key_error(&row.kid, format!("unreadable: {e}")))?;
            let sealed_text = stored_form(plain).await?;
            // Another replica sealing it first is as good.
            if store
                .replace_private_jwk(&row.kid, &row.private_jwk, &sealed_text)
                .await?
            {
                sealed_now += 1;
            }
        }
    }
    let (created, imported) = made;
    let notice = format!(
        "coordinator signing key: kept in the store{} (kid {}{}{})",
        if passphrase.is_some() {
            ", encrypted"
        } else {
            ""
        },
        key.kid(),
        if created {
            ", created".to_string()
        } else if imported {
            format!(", imported from {}", legacy_path.display())
        } else {
            String::new()
        },
        if sealed_now > 0 {
            format!(", {sealed_now} plaintext key(s) encrypted now")
        } else {
            String::new()
        }
    );
    Ok((key, notice))
}

/// The passphrase of the stored keys: `UNWIND_KEY_PASSPHRASE` (read through `env`), else the
/// contents of `signing_key_passphrase_file` without its final line break; none when neither
/// is set.
pub async fn key_passphrase(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Passphrase>, ServiceError> {
    if let Some(text) = env(KEY_PASSPHRASE_ENV) {
        return Passphrase::new(text)
            .map(Some)
            .map_err(|e| ServiceError::Config(config_key_error(KEY_PASSPHRASE_ENV, e)));
    }
    let Some(path) = &config.signing_key_passphrase_file else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ServiceError::File {
            path: path.clone(),
            message: format!("cannot read the key passphrase: {e}"),
        })?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    Passphrase::new(text.to_string())
        .map(Some)
        .map_err(|e| ServiceError::Config(config_key_error("signing_key_passphrase_file", e)))
}

fn config_key_error(key: &str, e: impl std::fmt::Display) -> crate::config::ConfigError {
    crate::config::ConfigError::Key {
        key: key.into(),
        message: e.to_string(),
    }
}

fn key_error(kid: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Key {
        kid: kid.to_string(),
        message: e.to_string(),
    }
}

/// Runs slow CPU work (key derivation) off the runtime's workers.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("key task failed: {e}")),
    }
}

fn new_key(key: &SigningKey, private_jwk: String) -> NewKey {
    NewKey {
        kid: key.kid().to_string(),
        alg: format!("{:?}", key.alg()),
        private_jwk,
    }
}

/// The public keys tokens signed by Unwind verify under: the signing key and every stored key
/// not retired (each once). A sealed key is published from the public JWK beside it.
pub fn coordinator_jwks(signing: &SigningKey, stored: &[StoredKey]) -> JwkSet {
    let mut keys = vec![signing.public_jwk()];
    for row in stored {
        if row.kid == signing.kid() {
            continue;
        }
        let public = if sealed::is_sealed(&row.private_jwk) {
            sealed::public_jwk(&row.private_jwk)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    serde_json::from_value::<jsonwebtoken::jwk::Jwk>(v).map_err(|e| e.to_string())
                })
        } else {
            SigningKey::from_private_jwk_json(&row.private_jwk)
                .map(|key| key.public_jwk())
                .map_err(|e| e.to_string())
        };
        match public {
            Ok(jwk) if jwk.common.key_id.as_deref() == Some(row.kid.as_str()) => keys.push(jwk),
            Ok(_) => tracing::warn!(kid = %row.kid, "stored coordinator key names another kid"),
            Err(e) => {
                tracing::warn!(kid = %row.kid, error = %e, "stored coordinator key unreadable")
            }
        }
    }
    JwkSet { keys }
}

/// Loads the private JWK at `path`, or generates an ES256 key there. `true` when created.
pub async fn load_or_create_key(path: &Path) -> Result<(SigningKey, bool), ServiceError> {
    let file_error = |message: String| ServiceError::File {
        path: path.to_path_buf(),
        message,
    };
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            let key =
                SigningKey::from_private_jwk_json(&text).map_err(|e| file_error(e.to_string()))?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(KeyAlg::ES256).map_err(|e| file_error(e.to_string()))?;
            match write_private_file(path, key.to_private_jwk_json().as_bytes()).await {
                Ok(()) => Ok((key, true)),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Box::pin(load_or_create_key(path)).await
                }
                Err(e) => Err(file_error(format!("cannot write: {e}"))),
            }
        }
        Err(e) => Err(file_error(format!("cannot read: {e}"))),
    }
}

/// Loads the admin token at `path`, or generates one there. `true` when created.
pub async fn load_or_create_admin_token(path: &Path) -> Result<(String, bool), ServiceError> {
    let file_error = |message: String| ServiceError::File {
        path: path.to_path_buf(),
        message,
    };
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.len() < 16 {
                return Err(file_error(
                    "the admin token file holds no usable token (16+ characters)".into(),
                ));
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token().map_err(|e| file_error(e.to_string()))?;
            match write_private_file(path, format!("{token}\n").as_bytes()).await {
                Ok(()) => Ok((token, true)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Box::pin(load_or_create_admin_token(path)).await
                }
                Err(e) => Err(file_error(format!("cannot write: {e}"))),
            }
        }
        Err(e) => Err(file_error(format!("cannot read: {e}"))),
    }
}

/// A fresh bearer token: 32 random bytes, base64url.
pub fn new_token() -> Result<String, aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(format!(
        "unw_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}
