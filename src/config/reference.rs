//! The configuration reference of docs/operations.md, generated from the configuration type:
//! every key and its default come from [`Config::default`], the meanings from [`KEYS`]. A test
//! fails when a key of the type has no entry here (or an entry names no key), and when the
//! table in the docs differs from [`reference_table`]; `UNWIND_BLESS=1 cargo test --lib
//! config` rewrites it.

use serde_json::Value;

use super::Config;

/// One documented key.
pub struct KeyDoc {
    /// Dotted path, e.g. `rollback.lease_s`.
    pub key: &'static str,
    /// What to show as the default when it is not the type's own value (a value derived from
    /// another key, or an empty list shown as "none"); `None` renders the type's default.
    pub default: Option<&'static str>,
    pub meaning: &'static str,
}

/// Every configuration key, in the order the reference lists them.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "listen",
        default: None,
        meaning: "address the HTTP server listens on",
    },
    KeyDoc {
        key: "database_url",
        default: Some("`sqlite://<data_dir>/unwind.db`"),
        meaning: "`sqlite://path` or `postgres://user:password@host/db`",
    },
    KeyDoc {
        key: "migrate_on_start",
        default: None,
        meaning: "apply migrations when `serve` starts; `false`: refuse to start unless `unwind migrate` has brought the schema to this version (the role then needs no schema rights)",
    },
    KeyDoc {
        key: "data_dir",
        default: None,
        meaning: "embedded database, generated key and admin token",
    },
    KeyDoc {
        key: "public_url",
        default: Some("`http://<listen>`"),
        meaning: "base URL operators reach Unwind under (used in links it sends)",
    },
    KeyDoc {
        key: "coordinator_id",
        default: None,
        meaning: "`iss` of the tokens Unwind signs; agents address Unwind with it in `aud`",
    },
    KeyDoc {
        key: "signing_key_file",
        default: Some("none: a key in the store"),
        meaning: "private JWK Unwind signs with; generated (ES256) when absent. Unset: one key generated once and kept in the store for every replica (an earlier version's `<data_dir>/coordinator.jwk` is imported)",
    },
    KeyDoc {
        key: "signing_key_passphrase_file",
        default: Some("none: stored unencrypted"),
        meaning: "file holding the passphrase the key kept in the store is encrypted with (AES-256-GCM under a PBKDF2-HMAC-SHA256 key); `UNWIND_KEY_PASSPHRASE` wins over it. A stored plaintext key is encrypted at the next start",
    },
    KeyDoc {
        key: "admin_token_file",
        default: Some("`<data_dir>/admin.token`"),
        meaning: "the admin bearer token, generated when absent",
    },
    KeyDoc {
        key: "ect.profile",
        default: None,
        meaning: "names in tokens Unwind signs: `draft-00` (`par`, `ext`, `wimse-exec+jwt`) or `draft-01` (`pred`, `ect_ext`, `exec+jwt`)",
    },
    KeyDoc {
        key: "ect.algorithms",
        default: None,
        meaning: "accepted algorithms: ES256, ES384, EdDSA, PS256, RS256 (never `none` or HMAC)",
    },
    KeyDoc {
        key: "ect.clock_skew_s",
        default: None,
        meaning: "tolerance for `iat`, `exp` and parent ordering",
    },
    KeyDoc {
        key: "ect.max_parents",
        default: None,
        meaning: "longest parent list accepted",
    },
    KeyDoc {
        key: "ect.max_token_bytes",
        default: None,
        meaning: "largest token accepted",
    },
    KeyDoc {
        key: "trust.issuers",
        default: Some("none"),
        meaning: "trusted issuers, see below",
    },
    KeyDoc {
        key: "trust.jwks_refresh_min_interval_s",
        default: Some("`0` (= 30 s)"),
        meaning: "least time between two fetches of one JWKS URL when an unknown `kid` arrives",
    },
    KeyDoc {
        key: "trust.jwks_cache_ttl_s",
        default: Some("`0` (= 300 s)"),
        meaning: "how long a fetched JWKS is used before it is fetched again",
    },
    KeyDoc {
        key: "auth.tokens",
        default: Some("none"),
        meaning: "operator bearer tokens, see below",
    },
    KeyDoc {
        key: "limits.max_body_bytes",
        default: None,
        meaning: "largest request body (413 `too_large`)",
    },
    KeyDoc {
        key: "limits.max_batch_tokens",
        default: None,
        meaning: "most tokens in one batch (413 `too_large`)",
    },
    KeyDoc {
        key: "limits.max_execution_context_bytes",
        default: None,
        meaning: "largest `Execution-Context` header (431)",
    },
    KeyDoc {
        key: "limits.request_timeout_s",
        default: None,
        meaning: "a request taking longer is answered 503 `unavailable`",
    },
    KeyDoc {
        key: "limits.header_read_timeout_ms",
        default: None,
        meaning: "a connection that has not sent a whole request header this long after its first byte (or after connecting) is closed",
    },
    KeyDoc {
        key: "limits.idle_timeout_s",
        default: None,
        meaning: "a keep-alive connection without a request this long is closed",
    },
    KeyDoc {
        key: "limits.max_connections",
        default: Some("half the open-file limit"),
        meaning: "most client connections at once; at the limit the longest idle one is closed for the new one (with none idle, new ones wait)",
    },
    KeyDoc {
        key: "metrics.require_auth",
        default: None,
        meaning: "require a reader token on `/metrics`",
    },
    KeyDoc {
        key: "log.format",
        default: None,
        meaning: "`text` or `json` (one JSON object per line, with the request id)",
    },
    KeyDoc {
        key: "log.level",
        default: None,
        meaning: "a `tracing` filter such as `unwind=debug,info`; `RUST_LOG` overrides it",
    },
    KeyDoc {
        key: "rollback.agent_timeout_ms",
        default: None,
        meaning: "per call to an agent; must be shorter than `limits.request_timeout_s`",
    },
    KeyDoc {
        key: "rollback.step_deadline_s",
        default: None,
        meaning: "a step's deadline: retries stop after it",
    },
    KeyDoc {
        key: "rollback.max_concurrency",
        default: None,
        meaning: "concurrent agent calls of one rollback",
    },
    KeyDoc {
        key: "rollback.lease_s",
        default: None,
        meaning: "a worker's lease on a rollback (renewed every third of it); another replica resumes a rollback whose lease expired",
    },
    KeyDoc {
        key: "rollback.evidence_ttl_s",
        default: None,
        meaning: "lifetime of `rollback_start` evidence (its `exp`); a rollback not finished by then, awaiting a decision or not, ends `failed` (its unfinished steps show `rollback_expired`); at least 1",
    },
    KeyDoc {
        key: "rollback.requests_per_s",
        default: None,
        meaning: "rollback requests per second per requester (429 `rate_limited` with `Retry-After` beyond)",
    },
    KeyDoc {
        key: "rollback.requests_burst",
        default: None,
        meaning: "burst of rollback requests per requester",
    },
    KeyDoc {
        key: "rollback.max_active",
        default: None,
        meaning: "rollbacks one process drives at once (others wait for a free worker)",
    },
    KeyDoc {
        key: "rollback.max_active_per_workflow",
        default: None,
        meaning: "of those, rollbacks of one workflow; a workflow's further rollbacks wait (their lease is left to run out after `poll_ms`), so another workflow's rollback still finds a worker; at least 1",
    },
    KeyDoc {
        key: "rollback.max_calls_per_workflow",
        default: None,
        meaning: "the workflow bulkhead: concurrent agent calls of one workflow in this process, across all its rollbacks; further calls queue behind their own workflow's (counted in `unwind_bulkhead_waits_total`); at least 1",
    },
    KeyDoc {
        key: "rollback.poll_ms",
        default: None,
        meaning: "how often an idle worker looks for rollbacks to claim (new requests wake it at once)",
    },
    KeyDoc {
        key: "circuit.window_s",
        default: None,
        meaning: "sliding window of the per-agent circuit breaker's error rate, in seconds",
    },
    KeyDoc {
        key: "circuit.error_threshold",
        default: None,
        meaning: "an error rate above this (network errors, timeouts, 5xx, unreadable answers) opens the agent's breaker",
    },
    KeyDoc {
        key: "circuit.min_calls",
        default: None,
        meaning: "a window with fewer calls never opens a breaker",
    },
    KeyDoc {
        key: "circuit.cooldown_s",
        default: None,
        meaning: "first cooldown of an open breaker: calls are refused locally (`circuit_open`) and retried after it, then one probe decides",
    },
    KeyDoc {
        key: "circuit.max_cooldown_s",
        default: None,
        meaning: "a failed probe doubles the cooldown, up to this",
    },
    KeyDoc {
        key: "hitl.webhooks",
        default: Some("none"),
        meaning: "escalation webhooks (`[[hitl.webhooks]]`): `url`, and `secret` or `secret_env` (the name of an environment variable holding the secret, read at start; a missing variable stops the start with an error naming the key)",
    },
    KeyDoc {
        key: "hitl.retry_initial_ms",
        default: None,
        meaning: "delay before the first retry of a failed webhook delivery; doubled per attempt, ±20 % jitter",
    },
    KeyDoc {
        key: "hitl.retry_max_s",
        default: None,
        meaning: "longest delay between two attempts of one delivery; deliveries are retried until the receiver accepts them",
    },
    KeyDoc {
        key: "hitl.timeout_ms",
        default: None,
        meaning: "timeout of one webhook POST; a slower receiver counts as failed and is retried",
    },
    KeyDoc {
        key: "hitl.poll_ms",
        default: None,
        meaning: "how often the delivery worker looks for due deliveries (new events wake it at once)",
    },
    KeyDoc {
        key: "cascade.window_s",
        default: None,
        meaning: "cascade detection window: only nodes issued (`iat`) this close to the new one count",
    },
    KeyDoc {
        key: "cascade.escalate_above_agents",
        default: None,
        meaning: "a cascade touching more agents escalates",
    },
    KeyDoc {
        key: "cascade.min_reporters",
        default: None,
        meaning: "distinct reporters needed for error clustering",
    },
    KeyDoc {
        key: "cascade.auto_rollback",
        default: None,
        meaning: "workflow ids (or `\"*\"` for all) whose cascades start a `sub_dag` rollback from the root cause's nearest checkpoint at once, requested by `unwind:cascade`",
    },
    KeyDoc {
        key: "cascade.queue",
        default: None,
        meaning: "ingested error nodes and breaker reports waiting for detection; beyond it new ones are dropped and counted (`unwind_cascade_queue_dropped_total`) rather than slowing ingest",
    },
    KeyDoc {
        key: "retention.rollback_steps_days",
        default: None,
        meaning: "days the steps of a finished rollback are kept after its last change (the rollback itself and its evidence stay); `0` keeps them forever; at most 36500",
    },
    KeyDoc {
        key: "retention.webhook_deliveries_days",
        default: None,
        meaning: "days a delivered webhook event and its recorded attempts are kept after delivery (pending ones always stay); `0` keeps them forever; at most 36500",
    },
    KeyDoc {
        key: "retention.interval_s",
        default: None,
        meaning: "seconds between two prune runs of each replica (the first runs at start)",
    },
    KeyDoc {
        key: "retention.batch",
        default: None,
        meaning: "rows one delete statement removes at most, 1 to 10000, so pruning never holds locks for long",
    },
    KeyDoc {
        key: "ledger.head_interval_s",
        default: None,
        meaning: "seconds between two signed heads of the ledger's hash chain, appended to `<data_dir>/ledger-heads.jsonl` and sent as webhook event `ledger.head` (the first one interval after start); `0`: none",
    },
];

/// The leaf keys of the configuration type with their default values, in dotted form.
pub fn default_values() -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        if let Value::Object(map) = v {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() {
                    walk(&key, v, out);
                } else {
                    out.push((key, v.clone()));
                }
            }
        }
    }
    let mut out = Vec::new();
    // Serializing the defaults cannot fail: the type holds no maps with non-string keys.
    let value = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    walk("", &value, &mut out);
    out
}

fn render(value: &Value) -> String {
    match value {
        Value::String(s) => format!("`{s}`"),
        Value::Null => "none".to_string(),
        other => format!("`{other}`"),
    }
}

/// The markdown table of docs/operations.md.
pub fn reference_table() -> String {
    let defaults = default_values();
    let mut table = String::from("| key | default | meaning |\n|---|---|---|\n");
    for doc in KEYS {
        let default = match doc.default {
            Some(text) => text.to_string(),
            None => defaults
                .iter()
                .find(|(k, _)| k == doc.key)
                .map_or_else(|| "none".to_string(), |(_, v)| render(v)),
        };
        table.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            doc.key, doc.meaning
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "docs/operations.md";
    const START: &str =
        "<!-- configuration reference: generated from src/config/reference.rs -->\n";
    const END: &str = "<!-- end of the configuration reference -->\n";

    #[test]
    fn every_key_of_the_type_has_one_entry_and_every_entry_a_key() {
        let type_keys: Vec<String> = default_values().into_iter().map(|(k, _)| k).collect();
        for key in &type_keys {
            assert_eq!(
                KEYS.iter().filter(|d| d.key == key).count(),
                1,
                "`{key}` needs exactly one entry in src/config/reference.rs"
            );
        }
        for doc in KEYS {
            assert!(
                type_keys.iter().any(|k| k == doc.key),
                "src/config/reference.rs documents `{}`, which the configuration type does not have",
                doc.key
            );
        }
    }

    #[test]
    fn the_operations_guide_holds_the_generated_reference() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find(START).expect("start marker") + START.len();
        let end = text[start..].find(END).expect("end marker") + start;
        let generated = reference_table();
        if text[start..end] != generated {
            if std::env::var_os("UNWIND_BLESS").is_some() {
                let updated = format!("{}{generated}{}", &text[..start], &text[end..]);
                std::fs::write(&path, updated).unwrap();
                return;
            }
            panic!(
                "{DOC}'s configuration reference is stale; run `UNWIND_BLESS=1 cargo test --lib config` to regenerate it"
            );
        }
    }
}
