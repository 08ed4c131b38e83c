//! One typed configuration: built-in defaults < TOML file < `UNWIND_*` environment < flags.
//!
//! Nested keys come from the environment with a double underscore, e.g.
//! `UNWIND_ECT__CLOCK_SKEW_S=30`; top-level keys as they are, e.g. `UNWIND_DATABASE_URL`.
//! Every problem is reported with the key it concerns, before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::ect::config::{EctConfig, TrustConfig, TrustIssuerConfig};

pub mod reference;

/// The whole configuration of `unwind serve` (and of the client commands' defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// `sqlite://path` or `postgres://user@host/db`; default: SQLite in the data directory.
    pub database_url: Option<String>,
    /// Apply the database migrations when `serve` starts. `false`: `serve` only checks that
    /// `unwind migrate` has brought the schema to this version (and refuses to start if not),
    /// so its database role needs no right to change the schema.
    pub migrate_on_start: bool,
    /// Directory for the embedded database, the generated key and the admin token.
    pub data_dir: PathBuf,
    /// Base URL under which operators reach this service (used in links it sends).
    pub public_url: Option<String>,
    /// `iss` of the ECTs Unwind signs, and the audience agents address it with.
    pub coordinator_id: String,
    /// Private JWK Unwind signs with; generated on first start when absent. Default: none, a
    /// key generated once and kept in the store, shared by every replica
    /// (`<data_dir>/coordinator.jwk` of an earlier version is imported into it).
    pub signing_key_file: Option<PathBuf>,
    /// File holding the passphrase the stored signing key is encrypted with (the environment
    /// variable `UNWIND_KEY_PASSPHRASE` wins over it). Default: none, stored unencrypted.
    pub signing_key_passphrase_file: Option<PathBuf>,
    /// Where the generated admin token is written on first start.
    /// Default: `<data_dir>/admin.token`.
    pub admin_token_file: Option<PathBuf>,
    pub ect: EctConfig,
    pub trust: TrustConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub rollback: RollbackConfig,
    pub circuit: CircuitConfig,
    pub hitl: HitlConfig,
    pub cascade: CascadeConfig,
    pub retention: RetentionConfig,
    pub ledger: LedgerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            migrate_on_start: true,
            data_dir: PathBuf::from("unwind-data"),
            public_url: None,
            coordinator_id: "spiffe://unwind.local/coordinator".into(),
            signing_key_file: None,
            signing_key_passphrase_file: None,
            admin_token_file: None,
            ect: EctConfig::default(),
            trust: TrustConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            rollback: RollbackConfig::default(),
            circuit: CircuitConfig::default(),
            hitl: HitlConfig::default(),
            cascade: CascadeConfig::default(),
            retention: RetentionConfig::default(),
            ledger: LedgerConfig::default(),
        }
    }
}

/// `[auth]`: operator bearer tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<AuthTokenConfig>,
}

/// `[[auth.tokens]]`: one bearer token, stored as its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthTokenConfig {
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the token; the token itself is never stored.
    pub sha256: String,
}

/// Operator roles, weakest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Operator,
    Admin,
}

/// `[limits]`: request size, time and connection limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body, in bytes (413 `too_large` above it).
    pub max_body_bytes: usize,
    /// Most tokens in one batch (413 `too_large` above it).
    pub max_batch_tokens: usize,
    /// Largest `Execution-Context` header, in bytes (431 above it).
    pub max_execution_context_bytes: usize,
    /// Seconds a request may take before it is answered 503.
    pub request_timeout_s: u64,
    /// Milliseconds a connection may take to send a request's header, from its first byte (or
    /// from the connection's start); the connection is closed after it.
    pub header_read_timeout_ms: u64,
    /// Seconds a keep-alive connection may stay without a request before it is closed.
    pub idle_timeout_s: u64,
    /// Most client connections open at once; at the limit the longest idle one is closed for a
    /// new one. Default: half the process's open-file limit.
    pub max_connections: Option<usize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_tokens: 1000,
            max_execution_context_bytes: 16 * 1024,
            request_timeout_s: 30,
            header_read_timeout_ms: 10_000,
            idle_timeout_s: 60,
            max_connections: None,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Require a reader token on `/metrics`.
    pub require_auth: bool,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `unwind=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[rollback]`: the rollback driver (used from the rollback coordination release on).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackConfig {
    pub agent_timeout_ms: u64,
    pub step_deadline_s: u64,
    pub max_concurrency: usize,
    pub lease_s: u64,
    pub evidence_ttl_s: u64,
    /// Rollback requests per second allowed to one requester (operator or agent).
    pub requests_per_s: u32,
    /// Burst of rollback requests allowed to one requester.
    pub requests_burst: u32,
    /// Rollbacks one process drives at the same time.
    pub max_active: usize,
    /// Of those, rollbacks of one workflow (so one workflow cannot take every worker slot).
    pub max_active_per_workflow: usize,
    /// Concurrent agent calls of one workflow in this process, across all its rollbacks (the
    /// workflow's bulkhead; further calls queue behind its own).
    pub max_calls_per_workflow: usize,
    /// How often an idle worker looks for rollbacks to claim, in milliseconds.
    pub poll_ms: u64,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        Self {
            agent_timeout_ms: 5000,
            step_deadline_s: 600,
            max_concurrency: 64,
            lease_s: 30,
            evidence_ttl_s: 7 * 24 * 3600,
            requests_per_s: 10,
            requests_burst: 20,
            max_active: 16,
            max_active_per_workflow: 8,
            max_calls_per_workflow: 32,
            poll_ms: 500,
        }
    }
}

/// `[circuit]`: per-agent circuit breakers, the cascade draft's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    pub window_s: u64,
    pub error_threshold: f64,
    pub min_calls: u64,
    pub cooldown_s: u64,
    pub max_cooldown_s: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            window_s: 60,
            error_threshold: 0.5,
            min_calls: 5,
            cooldown_s: 30,
            max_cooldown_s: 300,
        }
    }
}

/// `[hitl]`: human escalation webhooks and their delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HitlConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// Delay before the first retry of a failed delivery; doubled per attempt (with jitter).
    pub retry_initial_ms: u64,
    /// Longest delay between two attempts of one delivery.
    pub retry_max_s: u64,
    /// Timeout of one webhook POST (connect and answer).
    pub timeout_ms: u64,
    /// How often the delivery worker looks for due deliveries when nothing wakes it.
    pub poll_ms: u64,
}

impl Default for HitlConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            retry_initial_ms: 1000,
            retry_max_s: 300,
            timeout_ms: 5000,
            poll_ms: 1000,
        }
    }
}

/// `[[hitl.webhooks]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
}

/// `[cascade]`: cascade detection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CascadeConfig {
    pub window_s: u64,
    pub escalate_above_agents: usize,
    pub min_reporters: usize,
    /// Ingested nodes waiting for detection before new ones are dropped.
    pub queue: usize,
    /// Workflows (ids, or `*` for every one) whose cascades start a `sub_dag` rollback from
    /// the root cause at once.
    pub auto_rollback: Vec<String>,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self {
            window_s: 60,
            escalate_above_agents: 3,
            min_reporters: 2,
            queue: 10_000,
            auto_rollback: Vec::new(),
        }
    }
}

/// `[retention]`: pruning of operational rows of finished work (docs/operations.md,
/// "Retention"). The ledger is never pruned. A number of days of `0` keeps those rows forever.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days a finished rollback's steps are kept after its last change.
    pub rollback_steps_days: u32,
    /// Days a delivered webhook event and its attempts are kept after delivery.
    pub webhook_deliveries_days: u32,
    /// Seconds between two prune runs of this process.
    pub interval_s: u64,
    /// Rows deleted per statement (each statement's locks are held only that long).
    pub batch: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            rollback_steps_days: 30,
            webhook_deliveries_days: 30,
            interval_s: 3600,
            batch: 1000,
        }
    }
}

/// `[ledger]`: pinning the hash chain's head outside the database (docs/security.md, "What
/// the ledger's chain proves").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Seconds between two signed heads appended to `<data_dir>/ledger-heads.jsonl` and sent
    /// as webhook event `ledger.head`; `0`: none.
    pub head_interval_s: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            head_interval_s: 300,
        }
    }
}

impl Config {
    /// Where pinned heads are appended: `<data_dir>/ledger-heads.jsonl`.
    pub fn ledger_heads_path(&self) -> PathBuf {
        self.data_dir.join("ledger-heads.jsonl")
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// A configuration that cannot be used; the message names the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("configuration: {0}")]
    Other(String),
}

fn key_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

/// Algorithms Unwind can verify; anything else (notably `none` and HMAC) is refused.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["ES256", "ES384", "EdDSA", "PS256", "RS256"];

impl Config {
    /// Loads defaults < `file` < `UNWIND_*` environment < `overrides`, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env, overrides)
    }

    /// Like [`Config::load`], with the environment given (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    message: "no such file".into(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // `UNWIND_A__B` sets `a.b`; values parse like the environment provider's (numbers,
        // booleans, arrays), so `UNWIND_ECT__CLOCK_SKEW_S=30` is a number.
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("UNWIND_") else {
                continue;
            };
            if CLIENT_ENV.contains(&name.as_str()) || rest.is_empty() {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            figment = figment.merge((key, parsed));
        }
        figment = figment.merge(Serialized::defaults(overrides));
        let mut config: Config = figment.extract().map_err(|e| figment_error(file, e))?;
        if let Some(dir) = file.and_then(Path::parent) {
            for issuer in &mut config.trust.issuers {
                if let Some(p) = issuer.jwks_file.as_ref().filter(|p| p.is_relative()) {
                    issuer.jwks_file = Some(dir.join(p));
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(key_error(
                "database_url",
                format!("`{url}` is neither sqlite:… nor postgres://…"),
            ));
        }
        if self.coordinator_id.trim().is_empty() {
            return Err(key_error("coordinator_id", "must not be empty"));
        }
        if let Err(why) = crate::ect::spiffe::IdPattern::parse(&self.coordinator_id) {
            return Err(key_error("coordinator_id", why.why));
        }
        if self.coordinator_id.contains('*') {
            return Err(key_error(
                "coordinator_id",
                "must be an exact id, not a pattern",
            ));
        }
        if self.ect.algorithms.is_empty() {
            return Err(key_error(
                "ect.algorithms",
                "must name at least one algorithm",
            ));
        }
        for alg in &self.ect.algorithms {
            if !SUPPORTED_ALGORITHMS.contains(&alg.as_str()) {
                return Err(key_error(
                    "ect.algorithms",
                    format!(
                        "`{alg}` is not allowed; choose from {}",
                        SUPPORTED_ALGORITHMS.join(", ")
                    ),
                ));
            }
        }
        if self.ect.clock_skew_s < 0 {
            return Err(key_error("ect.clock_skew_s", "must not be negative"));
        }
        if self.ect.max_parents == 0 {
            return Err(key_error("ect.max_parents", "must be at least 1"));
        }
        if self.ect.max_token_bytes < 256 {
            return Err(key_error("ect.max_token_bytes", "must be at least 256"));
        }
        for (i, issuer) in self.trust.issuers.iter().enumerate() {
            let key = |k: &str| format!("trust.issuers[{i}].{k}");
            if issuer.id.is_empty() {
                return Err(key_error(&key("id"), "must not be empty"));
            }
            if let Err(e) = crate::ect::spiffe::IdPattern::parse(&issuer.id) {
                return Err(key_error(&key("id"), e.why));
            }
            for pattern in issuer.link_to.iter().flatten() {
                if let Err(e) = crate::ect::spiffe::IdPattern::parse(pattern) {
                    return Err(key_error(&key("link_to"), e.to_string()));
                }
            }
            if issuer.requests_per_s == Some(0) {
                return Err(key_error(&key("requests_per_s"), "must be at least 1"));
            }
            match (&issuer.jwks_file, &issuer.jwks_url) {
                (None, None) => {
                    return Err(key_error(
                        &key("jwks_file"),
                        "one of jwks_file or jwks_url is required",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(key_error(
                        &key("jwks_url"),
                        "give jwks_file or jwks_url, not both",
                    ));
                }
                (Some(path), None) if !path.is_file() => {
                    return Err(key_error(
                        &key("jwks_file"),
                        format!("{} is not a readable file", path.display()),
                    ));
                }
                (None, Some(url))
                    if !(url.starts_with("https://") || url.starts_with("http://")) =>
                {
                    return Err(key_error(&key("jwks_url"), "must be an http(s) URL"));
                }
                _ => {}
            }
        }
        for (i, token) in self.auth.tokens.iter().enumerate() {
            let ok =
                token.sha256.len() == 64 && token.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(key_error(
                    &format!("auth.tokens[{i}].sha256"),
                    "must be 64 hex digits (SHA-256 of the token)",
                ));
            }
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(key_error("limits.max_body_bytes", "must be at least 1024"));
        }
        if self.limits.max_batch_tokens == 0 {
            return Err(key_error("limits.max_batch_tokens", "must be at least 1"));
        }
        if self.limits.header_read_timeout_ms == 0 || self.limits.idle_timeout_s == 0 {
            return Err(key_error(
                "limits.header_read_timeout_ms",
                "must be above 0 (and limits.idle_timeout_s too)",
            ));
        }
        if self.limits.max_connections == Some(0) {
            return Err(key_error("limits.max_connections", "must be at least 1"));
        }
        if self.rollback.lease_s < 3 {
            return Err(key_error("rollback.lease_s", "must be at least 3 seconds"));
        }
        if self.rollback.evidence_ttl_s == 0 {
            return Err(key_error(
                "rollback.evidence_ttl_s",
                "must be at least 1 second",
            ));
        }
        if self.rollback.max_concurrency == 0 || self.rollback.max_active == 0 {
            return Err(key_error(
                "rollback.max_concurrency",
                "must be at least 1 (and rollback.max_active too)",
            ));
        }
        if self.rollback.max_active_per_workflow == 0 || self.rollback.max_calls_per_workflow == 0 {
            return Err(key_error(
                "rollback.max_calls_per_workflow",
                "must be at least 1 (and rollback.max_active_per_workflow too)",
            ));
        }
        if self.rollback.agent_timeout_ms == 0
            || self.rollback.agent_timeout_ms >= self.limits.request_timeout_s.saturating_mul(1000)
        {
            return Err(key_error(
                "rollback.agent_timeout_ms",
                "must be above 0 and shorter than limits.request_timeout_s (a call to an agent must time out before its caller does)",
            ));
        }
        if !(0.0..=1.0).contains(&self.circuit.error_threshold) {
            return Err(key_error(
                "circuit.error_threshold",
                "must be between 0 and 1",
            ));
        }
        if self.hitl.timeout_ms == 0 || self.hitl.retry_initial_ms == 0 || self.hitl.poll_ms == 0 {
            return Err(key_error(
                "hitl.timeout_ms",
                "must be above 0 (and hitl.retry_initial_ms, hitl.poll_ms too)",
            ));
        }
        if self.hitl.retry_max_s.saturating_mul(1000) < self.hitl.retry_initial_ms {
            return Err(key_error(
                "hitl.retry_max_s",
                "must not be shorter than hitl.retry_initial_ms",
            ));
        }
        if self.retention.interval_s == 0 {
            return Err(key_error(
                "retention.interval_s",
                "must be at least 1 second",
            ));
        }
        // A century is "forever" enough, and keeps the age within what the databases add.
        for (key, days) in [
            (
                "retention.rollback_steps_days",
                self.retention.rollback_steps_days,
            ),
            (
                "retention.webhook_deliveries_days",
                self.retention.webhook_deliveries_days,
            ),
        ] {
            if days > 36_500 {
                return Err(key_error(key, "must be at most 36500 (0 keeps forever)"));
            }
        }
        if !(1..=10_000).contains(&self.retention.batch) {
            return Err(key_error("retention.batch", "must be between 1 and 10000"));
        }
        for (i, hook) in self.hitl.webhooks.iter().enumerate() {
            if hook.secret.is_none() && hook.secret_env.is_none() {
                return Err(key_error(
                    &format!("hitl.webhooks[{i}].secret"),
                    "give secret or secret_env",
                ));
            }
        }
        Ok(())
    }

    /// The database URL in force (default: SQLite in the data directory).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("unwind.db").display()),
        }
    }

    /// The signing key file in force, or (none configured) where an earlier version kept it.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("coordinator.jwk"))
    }

    /// The admin token file in force.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// The public base URL in force.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }
}

/// Environment variables read by the client commands, not by the configuration.
const CLIENT_ENV: &[&str] = &[
    "UNWIND_URL",
    "UNWIND_TOKEN",
    "UNWIND_TEST_POSTGRES_URL",
    "UNWIND_KEY_PASSPHRASE",
];

fn figment_error(file: Option<&Path>, e: figment::Error) -> ConfigError {
    let key = e.path.join(".");
    let message = e.kind.to_string();
    if key.is_empty() {
        match file {
            Some(path) => ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
            None => ConfigError::Other(e.to_string()),
        }
    } else {
        ConfigError::Key { key, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ect::Profile;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("unwind.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_are_the_embedded_ones() {
        let c = Config::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://unwind-data/unwind.db");
        assert_eq!(
            c.signing_key_path(),
            PathBuf::from("unwind-data/coordinator.jwk")
        );
        assert_eq!(
            c.admin_token_path(),
            PathBuf::from("unwind-data/admin.token")
        );
        assert_eq!(c.ect.algorithms, vec!["ES256".to_string()]);
        assert_eq!(c.ect.clock_skew_s, 60);
        assert_eq!(c.rollback.lease_s, 30);
        assert_eq!(c.circuit.max_cooldown_s, 300);
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jwks.json"), r#"{"keys":[]}"#).unwrap();
        let file = write(
            dir.path(),
            r#"
listen = "127.0.0.1:9000"
database_url = "sqlite://from-file.db"
coordinator_id = "spiffe://file/coordinator"
[ect]
clock_skew_s = 10
profile = "draft-01"
[[trust.issuers]]
id = "spiffe://example.com/agent/*"
jwks_file = "a.jwks.json"
rollback_hosts = ["127.0.0.1"]
allow_http = true
"#,
        );
        let env = vec![
            (
                "UNWIND_DATABASE_URL".to_string(),
                "sqlite://from-env.db".to_string(),
            ),
            ("UNWIND_ECT__CLOCK_SKEW_S".to_string(), "30".to_string()),
            ("UNWIND_URL".to_string(), "http://client-only".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let flags = Overrides {
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let c = Config::load_from(Some(&file), &env, &flags).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9100", "flags win");
        assert_eq!(
            c.database_url(),
            "sqlite://from-env.db",
            "environment beats the file"
        );
        assert_eq!(c.ect.clock_skew_s, 30, "nested environment keys");
        assert_eq!(c.ect.profile, Profile::Draft01, "file beats defaults");
        assert_eq!(c.coordinator_id, "spiffe://file/coordinator");
        assert_eq!(
            c.trust.issuers[0].jwks_file.as_deref(),
            Some(dir.path().join("a.jwks.json").as_path()),
            "relative to the file"
        );
    }

    fn error_of(toml: &str, env: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), toml);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(Some(&file), &env, &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn invalid_configuration_names_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("listen = \"not an address\"", &[], "listen"),
            ("[ect]\nalgorithms = [\"HS256\"]", &[], "ect.algorithms"),
            ("[ect]\nalgorithms = [\"none\"]", &[], "ect.algorithms"),
            ("[ect]\nclock_skew_s = \"soon\"", &[], "ect.clock_skew_s"),
            ("database_url = \"mysql://x\"", &[], "database_url"),
            ("[rollback]\nlease_s = -1", &[], "rollback.lease_s"),
            (
                "[[trust.issuers]]\nid = \"spiffe://x/*\"",
                &[],
                "trust.issuers[0].jwks_file",
            ),
            (
                "[[trust.issuers]]\nid = \"spiffe://x/*\"\njwks_file = \"missing.json\"",
                &[],
                "trust.issuers[0].jwks_file",
            ),
            (
                "[[trust.issuers]]\nid = \"spiffe://*/x\"\njwks_url = \"https://k\"",
                &[],
                "trust.issuers[0].id",
            ),
            (
                "[[trust.issuers]]\nid = \"https://agents.example/*\"\njwks_url = \"https://k\"",
                &[],
                "trust.issuers[0].id",
            ),
            (
                "[[trust.issuers]]\nid = \"spiffe://x/agent/../admin\"\njwks_url = \"https://k\"",
                &[],
                "trust.issuers[0].id",
            ),
            (
                "[[trust.issuers]]\nid = \"spiffe://x/*\"\njwks_url = \"https://k\"\nlink_to = [\"spiffe://y/*/z\"]",
                &[],
                "trust.issuers[0].link_to",
            ),
            (
                "coordinator_id = \"spiffe://X/coordinator\"",
                &[],
                "coordinator_id",
            ),
            (
                "[[auth.tokens]]\nname = \"ops\"\nrole = \"operator\"\nsha256 = \"abc\"",
                &[],
                "auth.tokens[0].sha256",
            ),
            (
                "[[auth.tokens]]\nname = \"ops\"\nrole = \"root\"\nsha256 = \"abc\"",
                &[],
                "role",
            ),
            ("colour = \"blue\"", &[], "colour"),
            (
                "",
                &[("UNWIND_ECT__CLOCK_SKEW_S", "abc")],
                "ect.clock_skew_s",
            ),
            (
                "[circuit]\nerror_threshold = 2.0",
                &[],
                "circuit.error_threshold",
            ),
            ("[retention]\nbatch = 0", &[], "retention.batch"),
            ("[retention]\ninterval_s = 0", &[], "retention.interval_s"),
            (
                "[retention]\nwebhook_deliveries_days = 40000",
                &[],
                "retention.webhook_deliveries_days",
            ),
            (
                "[retention]\nrollback_steps_days = -1",
                &[],
                "retention.rollback_steps_days",
            ),
        ];
        for (toml, env, key) in cases {
            let message = error_of(toml, env);
            assert!(
                message.contains(key),
                "{toml:?}: {message:?} does not name {key}"
            );
        }
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load_from(
            Some(Path::new("/nonexistent/unwind.toml")),
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
    }
}
