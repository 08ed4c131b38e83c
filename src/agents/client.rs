//! One agent call (prepare or execute) and its retrying wrapper.
//!
//! Every call is checked against the trust configuration first, so a checkpoint cannot make
//! Unwind send requests to a host its issuer may not name (design.md §8); redirects are never
//! followed for the same reason. Each call has its own timeout, never longer than what is left
//! of the step's deadline, so the driver always gets control back in time (§6).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderValue, LOCATION};
use serde::Serialize;
use tokio::time::Instant;

use super::answer::{self, ExecuteAnswer, PrepareAnswer};
use super::backoff::Backoff;
use super::breakers::{CallSite, Circuits, Gate};
use super::bulkhead::Bulkhead;
use crate::config::RollbackConfig;
use crate::ect::TrustStore;

/// Default time limit of one agent call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer body read from an agent; a larger 2xx body is `bad_answer`.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The request header carrying the coordinator's `rollback_start` ECT.
pub const EXECUTION_CONTEXT: &str = "Execution-Context";

/// A client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent call settings: {0}")]
    Settings(String),
    #[error("agent HTTP client: {0}")]
    Client(String),
}

/// Time limits of agent calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallSettings {
    /// Time limit of one call, from connecting until the answer body is read.
    pub timeout: Duration,
    pub backoff: Backoff,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_CALL_TIMEOUT,
            backoff: Backoff::default(),
        }
    }
}

impl CallSettings {
    /// Settings from `[rollback]` (`agent_timeout_ms`; 0 means the default) with the default
    /// backoff.
    pub fn from_config(cfg: &RollbackConfig) -> Self {
        let timeout = match cfg.agent_timeout_ms {
            0 => DEFAULT_CALL_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        Self {
            timeout,
            ..Self::default()
        }
    }
}

/// One step's call: who the checkpoint belongs to, where to send, and what to say.
#[derive(Debug, Clone, Copy)]
pub struct StepCall<'a> {
    /// The issuer of the checkpoint; decides which hosts `rollback_uri` may name.
    pub agent: &'a str,
    /// The checkpoint's `cascade.rollback_uri` (the execute URL).
    pub rollback_uri: &'a str,
    pub rollback_id: &'a str,
    pub checkpoint_id: &'a str,
    pub scope: &'a str,
    /// The compact `rollback_start` ECT, sent as `Execution-Context`.
    pub context: &'a str,
    /// The rollback's workflow: the bulkhead its calls queue in, and the `wid` of a circuit
    /// breaker ECT this call triggers.
    pub wid: &'a str,
    /// The jti of the rollback's `rollback_start` (the parent of that ECT).
    pub start_jti: &'a str,
}

impl StepCall<'_> {
    fn site(&self) -> CallSite<'_> {
        CallSite {
            agent: self.agent,
            wid: self.wid,
            start_jti: self.start_jti,
        }
    }
}

/// Why a call gave no answer. `code` is stable (step records, metrics, tests match on it);
/// `detail` is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct CallError {
    pub code: &'static str,
    pub detail: String,
    /// The HTTP status, when the agent answered.
    pub status: Option<u16>,
    /// An `ect` found in an error body (agents sign their refusals), unverified.
    pub body_ect: Option<String>,
}

impl CallError {
    /// The issuer may not name this `rollback_uri` (checked before every call; nothing sent).
    pub const HOST_NOT_ALLOWED: &'static str = "host_not_allowed";
    /// The `rollback_uri` has a query or fragment, or the context is not a header value.
    pub const BAD_URI: &'static str = "bad_uri";
    pub const BAD_CONTEXT: &'static str = "bad_context";
    /// A 3xx: never followed, final.
    pub const REDIRECT: &'static str = "redirect";
    pub const TIMEOUT: &'static str = "timeout";
    pub const CONNECT: &'static str = "connect";
    /// Any other transport failure (reset connection, broken body, ...).
    pub const NETWORK: &'static str = "network";
    pub const HTTP_5XX: &'static str = "http_5xx";
    pub const HTTP_4XX: &'static str = "http_4xx";
    /// A 2xx whose body is not a known answer (or is too large).
    pub const BAD_ANSWER: &'static str = "bad_answer";
    /// The step deadline passed before any call was made.
    pub const DEADLINE: &'static str = "deadline";
    /// Refused locally: the agent's circuit breaker is open (nothing sent; retried after the
    /// cooldown).
    pub const CIRCUIT_OPEN: &'static str = "circuit_open";

    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            status: None,
            body_ect: None,
        }
    }

    fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// True for the failures a circuit breaker counts (api.md: a network error, a timeout, a
    /// 5xx or an unparseable answer); a 4xx or a refused URI says nothing about the agent's
    /// health.
    pub fn counts_against_circuit(&self) -> bool {
        matches!(
            self.code,
            Self::TIMEOUT | Self::CONNECT | Self::NETWORK | Self::HTTP_5XX | Self::BAD_ANSWER
        )
    }
}

/// The result of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome<T> {
    Answer(T),
    /// Worth trying again with the same `rollback_id` (the agent answers a repeat with its
    /// earlier result and does not act twice).
    Retryable(CallError),
    /// Trying again cannot help.
    Final(CallError),
}

impl<T> CallOutcome<T> {
    /// `answer`, `retryable` or `final` (the metrics label).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Answer(_) => "answer",
            Self::Retryable(_) => "retryable",
            Self::Final(_) => "final",
        }
    }
}

/// The result of a retrying call.
#[derive(Debug, Clone, PartialEq)]
pub enum Final<T> {
    Answer(T),
    /// A non-retryable error.
    Failed(CallError),
    /// The step deadline came first; the last retryable error.
    DeadlinePassed(CallError),
}

/// Reported after every call of a retrying wrapper, before it sleeps, so the driver can
/// record the step's `attempts` and last error.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    /// Count of calls made for this step by this wrapper (a call refused by the circuit
    /// breaker is reported, with its `circuit_open` error, but not counted).
    pub attempt: u32,
    /// `None` when the call got an answer.
    pub error: Option<CallError>,
    /// The sleep before the next call; `None` when there is none (answer, final error, or the
    /// next call would start after the deadline).
    pub next_delay: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prepare,
    Execute,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Execute => "execute",
        }
    }
}

#[derive(Serialize)]
struct PrepareBody<'a> {
    rollback_id: &'a str,
    checkpoint_id: &'a str,
    scope: &'a str,
}

#[derive(Serialize)]
struct ExecuteBody<'a> {
    rollback_id: &'a str,
    checkpoint_id: &'a str,
    phase: &'static str,
}

/// What the agent sent back, read within [`MAX_ANSWER_BYTES`].
struct Reply {
    status: u16,
    body: Vec<u8>,
    /// The body was longer than the cap; `body` holds its start.
    truncated: bool,
    location: Option<String>,
}

/// One call's outcome and whether anything was sent (a refused URI sends nothing and is not
/// an attempt). A call the circuit breaker or the bulkhead held back sends nothing either, but
/// is an attempt: `retry_after` says when the next may be made.
struct Attempt<T> {
    outcome: CallOutcome<T>,
    sent: bool,
    retry_after: Option<Duration>,
}

type Classify<T> = fn(&Reply) -> CallOutcome<T>;

/// The coordinator's HTTP client to agents. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    trust: Arc<TrustStore>,
    settings: CallSettings,
    circuits: Option<Arc<Circuits>>,
    /// Concurrent calls per workflow.
    bulkhead: Option<Bulkhead>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// Builds the client: rustls (aws-lc), no redirects, `settings.timeout` per call.
    pub fn new(trust: Arc<TrustStore>, settings: CallSettings) -> Result<Self, AgentError> {
        if settings.timeout.is_zero() {
            return Err(AgentError::Settings(
                "the call timeout must be positive".into(),
            ));
        }
        if settings.backoff.initial.is_zero() || settings.backoff.max < settings.backoff.initial {
            return Err(AgentError::Settings(
                "backoff needs 0 < initial <= max".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("unwind/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::Client(error_chain(&e)))?;
        Ok(Self {
            http,
            trust,
            settings,
            circuits: None,
            bulkhead: None,
        })
    }

    /// Every call first asks the agent's circuit breaker.
    pub fn with_circuits(mut self, circuits: Arc<Circuits>) -> Self {
        self.circuits = Some(circuits);
        self
    }

    /// Calls of one workflow wait for a place in `bulkhead` (keyed by `wid`).
    pub fn with_bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    pub fn settings(&self) -> &CallSettings {
        &self.settings
    }

    pub fn circuits(&self) -> Option<&Arc<Circuits>> {
        self.circuits.as_ref()
    }

    /// One prepare call, no retry: `POST {rollback_uri}/prepare`.
    pub async fn prepare_once(&self, call: &StepCall<'_>) -> CallOutcome<PrepareAnswer> {
        self.attempt(
            Phase::Prepare,
            call,
            Instant::now() + self.settings.timeout,
            classify_prepare,
        )
        .await
        .outcome
    }

    /// One execute call, no retry: `POST {rollback_uri}`.
    pub async fn execute_once(&self, call: &StepCall<'_>) -> CallOutcome<ExecuteAnswer> {
        self.attempt(
            Phase::Execute,
            call,
            Instant::now() + self.settings.timeout,
            classify_execute,
        )
        .await
        .outcome
    }

    /// Prepares until a final answer or until `deadline`, with backoff between calls.
    pub async fn prepare(
        &self,
        call: &StepCall<'_>,
        deadline: Instant,
        on_attempt: impl FnMut(&AttemptReport),
    ) -> Final<PrepareAnswer> {
        self.retry(Phase::Prepare, call, deadline, on_attempt, classify_prepare)
            .await
    }

    /// Executes until a final answer or until `deadline`, with backoff between calls. Every
    /// call carries the same `rollback_id`, so the agent acts at most once.
    pub async fn execute(
        &self,
        call: &StepCall<'_>,
        deadline: Instant,
        on_attempt: impl FnMut(&AttemptReport),
    ) -> Final<ExecuteAnswer> {
        self.retry(Phase::Execute, call, deadline, on_attempt, classify_execute)
            .await
    }

    async fn retry<T>(
        &self,
        phase: Phase,
        call: &StepCall<'_>,
        deadline: Instant,
        mut on_attempt: impl FnMut(&AttemptReport),
        classify: Classify<T>,
    ) -> Final<T> {
        // Calls made (the step's `attempts`), and calls made or held back by the breaker or
        // the bulkhead (the backoff's exponent: a refused call is not a call, but waiting
        // longer after each is what spreads the retries out).
        let mut attempts = 0u32;
        let mut tries = 0u32;
        let mut last: Option<CallError> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Final::DeadlinePassed(last.unwrap_or_else(|| {
                    CallError::new(
                        CallError::DEADLINE,
                        "the step deadline passed before the agent was called",
                    )
                }));
            }
            let Attempt {
                outcome,
                sent,
                retry_after,
            } = self.attempt(phase, call, deadline, classify).await;
            if !sent && retry_after.is_none() {
                // Refused before sending: not an attempt, and nothing a retry could change.
                return match outcome {
                    CallOutcome::Answer(a) => Final::Answer(a),
                    CallOutcome::Retryable(e) | CallOutcome::Final(e) => Final::Failed(e),
                };
            }
            tries = tries.saturating_add(1);
            if sent {
                attempts = attempts.saturating_add(1);
            }
            match outcome {
                CallOutcome::Answer(a) => {
                    on_attempt(&AttemptReport {
                        attempt: attempts,
                        error: None,
                        next_delay: None,
                    });
                    return Final::Answer(a);
                }
                CallOutcome::Final(e) => {
                    on_attempt(&AttemptReport {
                        attempt: attempts,
                        error: Some(e.clone()),
                        next_delay: None,
                    });
                    return Final::Failed(e);
                }
                CallOutcome::Retryable(e) => {
                    // Never before the breaker lets a call through again.
                    let delay = self
                        .settings
                        .backoff
                        .delay(tries)
                        .max(retry_after.unwrap_or_default());
                    let next = Instant::now()
                        .checked_add(delay)
                        .is_some_and(|at| at < deadline)
                        .then_some(delay);
                    on_attempt(&AttemptReport {
                        attempt: attempts,
                        error: Some(e.clone()),
                        next_delay: next,
                    });
                    match next {
                        Some(delay) => {
                            last = Some(e);
                            tokio::time::sleep(delay).await;
                        }
                        None => return Final::DeadlinePassed(e),
                    }
                }
            }
        }
    }

    /// One call: guard, wait for a place in the workflow's bulkhead, ask the breaker, send,
    /// read, classify, count, tell the breaker. The call ends by `deadline`.
    async fn attempt<T>(
        &self,
        phase: Phase,
        call: &StepCall<'_>,
        deadline: Instant,
        classify: Classify<T>,
    ) -> Attempt<T> {
        let (url, context) = match self.target(phase, call) {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!(
                    phase = phase.label(),
                    agent = call.agent,
                    code = e.code,
                    detail = %e.detail,
                    "agent call refused"
                );
                return Attempt {
                    outcome: CallOutcome::Final(e),
                    sent: false,
                    retry_after: None,
                };
            }
        };
        // Held while the request is out (not across the backoff sleeps in between).
        let _place = match &self.bulkhead {
            Some(b) => Some(b.acquire(call.wid).await),
            None => None,
        };
        let timeout = self
            .settings
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            // The deadline passed while waiting for a place: not the agent's fault.
            return held_back(
                CallError::new(
                    CallError::DEADLINE,
                    "the step deadline passed in the bulkhead",
                ),
                Duration::ZERO,
            );
        }
        let permit = match &self.circuits {
            None => None,
            Some(circuits) => match circuits.admit(call.site()).await {
                Gate::Pass(permit) => Some(permit),
                Gate::Refused { retry_after } => {
                    metrics::counter!("unwind_circuit_refusals_total", "phase" => phase.label())
                        .increment(1);
                    tracing::debug!(
                        phase = phase.label(),
                        agent = call.agent,
                        ?retry_after,
                        "agent call refused: circuit open"
                    );
                    return held_back(
                        CallError::new(
                            CallError::CIRCUIT_OPEN,
                            format!(
                                "the circuit breaker toward the agent is open; next call in {} ms",
                                retry_after.as_millis()
                            ),
                        ),
                        retry_after,
                    );
                }
            },
        };
        let started = Instant::now();
        let outcome = match self.send(phase, call, url, context, timeout).await {
            Ok(reply) => classify(&reply),
            Err(e) => CallOutcome::Retryable(e),
        };
        let elapsed = started.elapsed();
        if let (Some(circuits), Some(permit)) = (&self.circuits, permit) {
            let failed = match &outcome {
                CallOutcome::Answer(_) => false,
                CallOutcome::Retryable(e) | CallOutcome::Final(e) => e.counts_against_circuit(),
            };
            circuits.record(permit, call.site(), failed, elapsed).await;
        }
        metrics::counter!(
            "unwind_agent_calls_total",
            "phase" => phase.label(),
            "outcome" => outcome.label()
        )
        .increment(1);
        metrics::histogram!("unwind_agent_call_seconds", "phase" => phase.label()).record(elapsed);
        match &outcome {
            CallOutcome::Answer(_) => tracing::debug!(
                phase = phase.label(),
                agent = call.agent,
                rollback_id = call.rollback_id,
                checkpoint_id = call.checkpoint_id,
                ?elapsed,
                "agent answered"
            ),
            CallOutcome::Retryable(e) | CallOutcome::Final(e) => tracing::info!(
                phase = phase.label(),
                agent = call.agent,
                rollback_id = call.rollback_id,
                checkpoint_id = call.checkpoint_id,
                outcome = outcome.label(),
                code = e.code,
                detail = %e.detail,
                ?elapsed,
                "agent call failed"
            ),
        }
        Attempt {
            outcome,
            sent: true,
            retry_after: None,
        }
    }

    /// The URL to call and the header value, or why no call may be made. The trust check runs
    /// on every call, so a trust change takes effect between retries.
    fn target(
        &self,
        phase: Phase,
        call: &StepCall<'_>,
    ) -> Result<(reqwest::Url, HeaderValue), CallError> {
        self.trust
            .rollback_uri_allowed(call.agent, call.rollback_uri)
            .map_err(|r| CallError::new(CallError::HOST_NOT_ALLOWED, r.detail))?;
        let mut url = crate::ect::trust::parse_rollback_uri(call.rollback_uri).map_err(|why| {
            CallError::new(
                CallError::BAD_URI,
                format!("`{}`: {why}", call.rollback_uri),
            )
        })?;
        if phase == Phase::Prepare {
            let path = format!("{}/prepare", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        let context = HeaderValue::from_str(call.context).map_err(|_| {
            CallError::new(
                CallError::BAD_CONTEXT,
                "the Execution-Context token is not a valid header value",
            )
        })?;
        Ok((url, context))
    }

    async fn send(
        &self,
        phase: Phase,
        call: &StepCall<'_>,
        url: reqwest::Url,
        context: HeaderValue,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let request = self
            .http
            .post(url)
            .timeout(timeout)
            .header(ACCEPT, "application/json")
            .header(EXECUTION_CONTEXT, context);
        let request = match phase {
            Phase::Prepare => request.json(&PrepareBody {
                rollback_id: call.rollback_id,
                checkpoint_id: call.checkpoint_id,
                scope: call.scope,
            }),
            Phase::Execute => request.json(&ExecuteBody {
                rollback_id: call.rollback_id,
                checkpoint_id: call.checkpoint_id,
                phase: "execute",
            }),
        };
        let mut response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| answer::short_text(v.as_bytes()));
        if response.status().is_redirection() {
            // The body of a redirect is of no use; the connection is simply dropped.
            return Ok(Reply {
                status,
                body: Vec::new(),
                truncated: false,
                location,
            });
        }
        let mut body = Vec::new();
        let mut truncated = response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64);
        while !truncated {
            match response.chunk().await.map_err(transport_error)? {
                None => break,
                Some(chunk) => {
                    let room = MAX_ANSWER_BYTES - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                    } else {
                        body.extend_from_slice(&chunk);
                    }
                }
            }
        }
        Ok(Reply {
            status,
            body,
            truncated,
            location,
        })
    }
}

/// A call held back before sending, to be tried again after `retry_after`.
fn held_back<T>(error: CallError, retry_after: Duration) -> Attempt<T> {
    Attempt {
        outcome: CallOutcome::Retryable(error),
        sent: false,
        retry_after: Some(retry_after),
    }
}

/// Prepare: 2xx answers (or is retried when unreadable), any other 4xx is `cannot_prepare`,
/// 3xx is final, 5xx retried.
fn classify_prepare(reply: &Reply) -> CallOutcome<PrepareAnswer> {
    match reply.status {
        200..=299 => match readable(reply).and_then(answer::parse_prepare) {
            Ok(a) => CallOutcome::Answer(a),
            Err(detail) => CallOutcome::Retryable(bad_answer(reply, detail)),
        },
        400..=499 => CallOutcome::Answer(PrepareAnswer::CannotPrepare {
            reason: http_detail(reply),
            ect: answer::body_ect(&reply.body),
        }),
        _ => common_failure(reply),
    }
}

/// Execute: 2xx answers (or is retried when unreadable), 4xx and 3xx are final, 5xx retried.
fn classify_execute(reply: &Reply) -> CallOutcome<ExecuteAnswer> {
    match reply.status {
        200..=299 => match readable(reply).and_then(answer::parse_execute) {
            Ok(a) => CallOutcome::Answer(a),
            Err(detail) => CallOutcome::Retryable(bad_answer(reply, detail)),
        },
        400..=499 => CallOutcome::Final(CallError {
            code: CallError::HTTP_4XX,
            detail: http_detail(reply),
            status: Some(reply.status),
            body_ect: answer::body_ect(&reply.body),
        }),
        _ => common_failure(reply),
    }
}

/// 3xx, 5xx and anything unexpected (1xx reaching here, codes above 599).
fn common_failure<T>(reply: &Reply) -> CallOutcome<T> {
    match reply.status {
        300..=399 => CallOutcome::Final(
            CallError::new(
                CallError::REDIRECT,
                format!(
                    "http {} to `{}`: redirects are not followed",
                    reply.status,
                    reply.location.as_deref().unwrap_or("")
                ),
            )
            .with_status(reply.status),
        ),
        500..=599 => CallOutcome::Retryable(CallError {
            code: CallError::HTTP_5XX,
            detail: http_detail(reply),
            status: Some(reply.status),
            body_ect: answer::body_ect(&reply.body),
        }),
        _ => CallOutcome::Retryable(bad_answer(
            reply,
            format!("unexpected http status {}", reply.status),
        )),
    }
}

fn readable(reply: &Reply) -> Result<&[u8], String> {
    if reply.truncated {
        Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"))
    } else {
        Ok(&reply.body)
    }
}

fn bad_answer(reply: &Reply, detail: String) -> CallError {
    CallError::new(CallError::BAD_ANSWER, detail).with_status(reply.status)
}

/// `http <status>: <short body>`.
fn http_detail(reply: &Reply) -> String {
    let text = answer::short_text(&reply.body);
    if text.is_empty() {
        format!("http {}", reply.status)
    } else {
        format!("http {}: {text}", reply.status)
    }
}

fn transport_error(e: reqwest::Error) -> CallError {
    let code = if e.is_timeout() {
        CallError::TIMEOUT
    } else if e.is_connect() {
        CallError::CONNECT
    } else {
        CallError::NETWORK
    };
    CallError::new(code, error_chain(&e))
}

/// An error and its sources on one line (reqwest's own message omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
