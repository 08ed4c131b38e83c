//! The reference agent's programmable behaviour, for tests and demos of the coordinator:
//! answers can be delayed, refused, failed with 500s or never sent, and execute results chosen.
//!
//! The behaviour is a comma-separated list (`--behaviour`, or `POST /_test/behaviour` when the
//! test controls are on):
//! - `prepared` (default) / `cannot_prepare` / `irreversible`: the prepare answer;
//! - `slow:<ms>`: delay every protocol answer;
//! - `fail:<n>`: answer 500 to the next `n` protocol calls, then behave;
//! - `hang`: never answer;
//! - `execute=completed|failed|escalated|compensated`: the execute result.
//!
//! `GET /_test/calls` counts protocol calls and lists every restore the agent ran, so a test
//! can check that no checkpoint was executed twice for one `rollback_id`.
//!
//! The reference agent also publishes its public keys at `GET /.well-known/jwks.json`, so a
//! coordinator can trust it with a `jwks_url` (docker-compose.yml does) instead of a copied file.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agent::{
    Agent, CheckpointCtx, HandlerError, PrepareDecision, RestoreOutcome, RollbackHandler,
    RollbackStatus,
};
use crate::crypto::out_hash;
use crate::http::{PREPARE_PATH, ROLLBACK_PATH, problem};

/// A behaviour specification that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "behaviour `{0}`: expected prepared, cannot_prepare, irreversible, slow:<ms>, fail:<n>, hang or execute=completed|failed|escalated|compensated"
)]
pub struct BehaviourError(String);

/// What the reference agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// `None` = prepared; else the `cannot_prepare` reason.
    pub cannot_prepare: Option<String>,
    pub delay: Option<Duration>,
    /// Protocol calls still to be answered with 500.
    pub fail_remaining: u32,
    pub hang: bool,
    pub execute: RollbackStatus,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            cannot_prepare: None,
            delay: None,
            fail_remaining: 0,
            hang: false,
            execute: RollbackStatus::Completed,
        }
    }
}

impl std::str::FromStr for Behaviour {
    type Err = BehaviourError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut b = Behaviour::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || BehaviourError(item.to_owned());
            match item {
                "prepared" => b.cannot_prepare = None,
                "cannot_prepare" => b.cannot_prepare = Some("agent_refused".into()),
                "irreversible" => b.cannot_prepare = Some("irreversible".into()),
                "hang" => b.hang = true,
                _ => {
                    if let Some(ms) = item.strip_prefix("slow:") {
                        b.delay = Some(Duration::from_millis(ms.parse().map_err(|_| bad())?));
                    } else if let Some(n) = item.strip_prefix("fail:") {
                        b.fail_remaining = n.parse().map_err(|_| bad())?;
                    } else if let Some(result) = item.strip_prefix("execute=") {
                        b.execute = match result {
                            "completed" => RollbackStatus::Completed,
                            "failed" => RollbackStatus::Failed,
                            "escalated" => RollbackStatus::Escalated,
                            "compensated" => RollbackStatus::Compensated,
                            _ => return Err(bad()),
                        };
                    } else {
                        return Err(bad());
                    }
                }
            }
        }
        Ok(b)
    }
}

#[derive(Debug, Default)]
struct Counters {
    prepare: u64,
    execute: u64,
    prepare_hooks: u64,
    executed: Vec<(String, String)>,
}

/// Shared state of the reference agent: its behaviour, its counters and its "system state"
/// (the last restored snapshot).
#[derive(Debug, Default)]
pub struct Controls {
    behaviour: Mutex<Behaviour>,
    counters: Mutex<Counters>,
    state: Mutex<Option<Vec<u8>>>,
}

/// Locks, recovering from a poisoned lock (the data is counters and flags, always consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Controls {
    pub fn new(behaviour: Behaviour) -> Arc<Self> {
        Arc::new(Self {
            behaviour: Mutex::new(behaviour),
            ..Default::default()
        })
    }

    pub fn behaviour(&self) -> Behaviour {
        lock(&self.behaviour).clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.behaviour) = behaviour;
    }

    /// `{"prepare": n, "execute": n, "prepare_hooks": n, "executed": [[rollback_id, checkpoint_id], ..]}`.
    pub fn calls(&self) -> Value {
        let c = lock(&self.counters);
        json!({
            "prepare": c.prepare,
            "execute": c.execute,
            "prepare_hooks": c.prepare_hooks,
            "executed": c.executed.iter().map(|(r, k)| json!([r, k])).collect::<Vec<_>>(),
        })
    }

    /// The last restored snapshot.
    pub fn state(&self) -> Option<Vec<u8>> {
        lock(&self.state).clone()
    }
}

/// The reference agent's rollback hooks: restoring replaces its in-memory state with the
/// snapshot and reports both state hashes.
#[derive(Debug, Clone)]
pub struct ReferenceHandler {
    controls: Arc<Controls>,
}

impl ReferenceHandler {
    pub fn new(controls: Arc<Controls>) -> Self {
        Self { controls }
    }
}

#[async_trait]
impl RollbackHandler for ReferenceHandler {
    async fn prepare(&self, _ctx: &CheckpointCtx) -> PrepareDecision {
        lock(&self.controls.counters).prepare_hooks += 1;
        match self.controls.behaviour().cannot_prepare {
            None => PrepareDecision::Prepared,
            Some(reason) => PrepareDecision::CannotPrepare(reason),
        }
    }

    async fn restore(
        &self,
        ctx: &CheckpointCtx,
        snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError> {
        lock(&self.controls.counters)
            .executed
            .push((ctx.rollback_id.clone(), ctx.checkpoint.jti.clone()));
        match self.controls.behaviour().execute {
            RollbackStatus::Completed => {
                let mut state = lock(&self.controls.state);
                let before = state.as_deref().map(out_hash);
                let after = out_hash(&snapshot);
                *state = Some(snapshot);
                Ok(RestoreOutcome::completed().with_hashes(before, Some(after)))
            }
            RollbackStatus::Compensated => Err(HandlerError::NotRestorable(
                "programmed to compensate".into(),
            )),
            RollbackStatus::Failed => Err(HandlerError::Failed("programmed to fail".into())),
            RollbackStatus::Escalated => Ok(RestoreOutcome::new(RollbackStatus::Escalated)),
        }
    }

    async fn compensate(&self, _ctx: &CheckpointCtx) -> Result<RestoreOutcome, HandlerError> {
        Ok(RestoreOutcome::new(RollbackStatus::Compensated))
    }
}

/// Where the reference agent serves its public keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The agent's protocol routes with the programmable behaviour in front of them, its public
/// keys at [`JWKS_PATH`] (never delayed or failed: they are not part of the protocol), plus
/// `/_test/behaviour` and `/_test/calls` when `test_controls` is set.
pub fn router(agent: &Agent, controls: Arc<Controls>, test_controls: bool) -> Router {
    let jwks = agent.public_jwks();
    let protocol = agent
        .router()
        .layer(axum::middleware::from_fn_with_state(
            controls.clone(),
            behave,
        ))
        .route(JWKS_PATH, get(move || async move { axum::Json(jwks) }));
    if !test_controls {
        return protocol;
    }
    let test = Router::new()
        .route("/_test/behaviour", post(set_behaviour).get(get_behaviour))
        .route("/_test/calls", get(get_calls))
        .with_state(controls);
    protocol.merge(test)
}

/// Counts protocol calls and applies `hang`, `slow` and `fail` before the real handler.
async fn behave(State(controls): State<Arc<Controls>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    {
        let mut counters = lock(&controls.counters);
        if path == PREPARE_PATH {
            counters.prepare += 1;
        } else if path == ROLLBACK_PATH {
            counters.execute += 1;
        }
    }
    let (hang, delay, fail) = {
        let mut b = lock(&controls.behaviour);
        let fail = b.fail_remaining > 0;
        if fail {
            b.fail_remaining -= 1;
        }
        (b.hang, b.delay, fail)
    };
    if hang {
        std::future::pending::<()>().await;
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if fail {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "programmed failure",
        );
    }
    next.run(request).await
}

#[derive(Deserialize)]
struct BehaviourBody {
    behaviour: String,
}

async fn set_behaviour(
    State(controls): State<Arc<Controls>>,
    axum::Json(body): axum::Json<BehaviourBody>,
) -> Response {
    match body.behaviour.parse::<Behaviour>() {
        Ok(b) => {
            controls.set_behaviour(b);
            get_behaviour(State(controls)).await.into_response()
        }
        Err(e) => problem(StatusCode::BAD_REQUEST, "malformed", &e.to_string()),
    }
}

async fn get_behaviour(State(controls): State<Arc<Controls>>) -> axum::Json<Value> {
    let b = controls.behaviour();
    axum::Json(json!({
        "prepare": b.cannot_prepare.as_deref().unwrap_or("prepared"),
        "delay_ms": b.delay.map(|d| d.as_millis() as u64),
        "fail_remaining": b.fail_remaining,
        "hang": b.hang,
        "execute": b.execute.as_str(),
    }))
}

async fn get_calls(State(controls): State<Arc<Controls>>) -> axum::Json<Value> {
    axum::Json(controls.calls())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let b: Behaviour = "slow:50,fail:2,execute=compensated".parse().unwrap();
        assert_eq!(b.delay, Some(Duration::from_millis(50)));
        assert_eq!(b.fail_remaining, 2);
        assert_eq!(b.execute, RollbackStatus::Compensated);
        let b: Behaviour = "irreversible".parse().unwrap();
        assert_eq!(b.cannot_prepare.as_deref(), Some("irreversible"));
        assert!("hang".parse::<Behaviour>().unwrap().hang);
        assert!("slow:x".parse::<Behaviour>().is_err());
        assert!("execute=maybe".parse::<Behaviour>().is_err());
        assert!("dance".parse::<Behaviour>().is_err());
        assert_eq!("".parse::<Behaviour>().unwrap(), Behaviour::default());
    }
}
