//! The demo's coordinator, in-process: the same start-up as `unwind serve`
//! ([`crate::service::prepare`]) on a listener bound beforehand, so that `--listen
//! 127.0.0.1:0` can print the real port and the configuration names it.

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::CliError;
use crate::config::Config;
use crate::service::{self, ServiceError};

/// The running coordinator's tasks.
pub struct Running {
    tasks: Vec<JoinHandle<()>>,
    detector: JoinHandle<()>,
}

fn service_error(e: ServiceError) -> CliError {
    match e {
        ServiceError::Config(c) => CliError::Usage(c.to_string()),
        other => CliError::Failed(other.to_string()),
    }
}

/// Prepares the service from `config` and serves it on `listener` with its rollback and
/// webhook workers, until `stop` turns true.
pub async fn start(
    config: Config,
    listener: TcpListener,
    stop: &watch::Receiver<bool>,
) -> Result<Running, CliError> {
    config
        .validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let prepared = service::prepare(config).await.map_err(service_error)?;
    let stopped = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let app = crate::api::router(prepared.state);
    let server = {
        let shutdown = stopped(stop);
        tokio::spawn(async move {
            if let Err(e) = service::serve(listener, app, shutdown).await {
                tracing::error!(error = %e, "the demo's coordinator stopped serving");
            }
        })
    };
    let worker = tokio::spawn(prepared.coordinator.run(stopped(stop)));
    let delivery = tokio::spawn(prepared.deliverer.run(stopped(stop)));
    Ok(Running {
        tasks: vec![server, worker, delivery],
        detector: prepared.detector,
    })
}

impl Running {
    /// Waits for the server and workers to finish after the stop signal.
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.detector.abort();
    }
}

/// The coordinator's public keys, as its agents fetch them.
pub async fn served_jwks(
    http: &reqwest::Client,
    base: &str,
) -> Result<jsonwebtoken::jwk::JwkSet, CliError> {
    let url = format!("{base}/.well-known/jwks.json");
    let failed = |e: reqwest::Error| CliError::Failed(format!("{url}: {e}"));
    http.get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)
}
