//! The agents' answers (api.md, "Agent protocol") and how their bodies are read.

use serde::Deserialize;
use serde_json::Value;

/// The outcome of a prepare that reached a final answer. `CannotPrepare` is an answer, not an
/// error: the planner decides what a step that cannot prepare means for the rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareAnswer {
    Prepared,
    /// The agent's `cannot_prepare` (its `reason`), or any 4xx other than a redirect
    /// (`reason` = `http <status>: <short body>`). `ect` is the agent's signed error ECT, when
    /// the answer or the error body carried one (e.g. `checkpoint_expired`, a 401).
    CannotPrepare {
        reason: String,
        ect: Option<String>,
    },
}

/// What an agent says it did. The protocol's `partial` maps to `Failed`: a step that rolled
/// back only part of its state did not roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecuteResult {
    Completed,
    Compensated,
    Failed,
    Escalated,
}

impl ExecuteResult {
    /// The step's `execute_status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
            Self::Escalated => "escalated",
        }
    }

    /// True when the checkpoint's effects are undone (restored or compensated).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }

    fn from_wire(status: &str) -> Option<Self> {
        Some(match status {
            "completed" => Self::Completed,
            "compensated" => Self::Compensated,
            "failed" | "partial" => Self::Failed,
            "escalated" => Self::Escalated,
            _ => return None,
        })
    }
}

/// A 2xx execute answer with a known status. `raw` keeps the whole body for the step record.
/// The `ect` is passed on unverified: the caller records it only if it verifies and its `iss`
/// is the step's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteAnswer {
    pub status: ExecuteResult,
    pub state_hash_before: Option<String>,
    pub state_hash_after: Option<String>,
    pub ect: Option<String>,
    pub raw: Value,
}

#[derive(Deserialize)]
struct PrepareWire {
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ect: Option<String>,
}

#[derive(Deserialize)]
struct ExecuteWire {
    status: String,
    #[serde(default)]
    state_hash_before: Option<String>,
    #[serde(default)]
    state_hash_after: Option<String>,
    #[serde(default)]
    ect: Option<String>,
}

/// Reads a 2xx prepare body; `Err` describes why it is not an answer.
pub(crate) fn parse_prepare(body: &[u8]) -> Result<PrepareAnswer, String> {
    let wire: PrepareWire =
        serde_json::from_slice(body).map_err(|e| format!("prepare answer is not valid: {e}"))?;
    match wire.status.as_str() {
        "prepared" => Ok(PrepareAnswer::Prepared),
        "cannot_prepare" => Ok(PrepareAnswer::CannotPrepare {
            reason: wire
                .reason
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "no reason given".to_owned()),
            ect: wire.ect,
        }),
        other => Err(format!(
            "prepare answer has unknown status `{}`",
            short_text(other.as_bytes())
        )),
    }
}

/// Reads a 2xx execute body; `Err` describes why it is not an answer.
pub(crate) fn parse_execute(body: &[u8]) -> Result<ExecuteAnswer, String> {
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| format!("execute answer is not JSON: {e}"))?;
    let wire =
        ExecuteWire::deserialize(&raw).map_err(|e| format!("execute answer is not valid: {e}"))?;
    let status = ExecuteResult::from_wire(&wire.status).ok_or_else(|| {
        format!(
            "execute answer has unknown status `{}`",
            short_text(wire.status.as_bytes())
        )
    })?;
    Ok(ExecuteAnswer {
        status,
        state_hash_before: wire.state_hash_before,
        state_hash_after: wire.state_hash_after,
        ect: wire.ect,
        raw,
    })
}

/// The `ect` member of a JSON error body (the agents' problem+json carries their signed error
/// ECT there), if any.
pub(crate) fn body_ect(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("ect")?.as_str().map(str::to_owned)
}

/// Longest excerpt of a foreign body kept in reasons and error details.
const SHORT_TEXT_CHARS: usize = 200;

/// A one-line, bounded excerpt of a body for logs and step records: control characters and
/// runs of whitespace become one space, and long text is cut with an ellipsis.
pub(crate) fn short_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut chars = 0;
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if chars >= SHORT_TEXT_CHARS {
            out.push('…');
            return out;
        }
        if pending_space {
            out.push(' ');
            chars += 1;
            pending_space = false;
        }
        out.push(c);
        chars += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_answers() {
        assert_eq!(
            parse_prepare(br#"{"status":"prepared"}"#),
            Ok(PrepareAnswer::Prepared)
        );
        assert_eq!(
            parse_prepare(br#"{"status":"cannot_prepare","reason":"irreversible"}"#),
            Ok(PrepareAnswer::CannotPrepare {
                reason: "irreversible".into(),
                ect: None
            })
        );
        assert_eq!(
            parse_prepare(br#"{"status":"cannot_prepare","ect":"a.b.c"}"#),
            Ok(PrepareAnswer::CannotPrepare {
                reason: "no reason given".into(),
                ect: Some("a.b.c".into())
            })
        );
        for bad in [
            &b"not json"[..],
            br#"{"status":"maybe"}"#,
            br#"{"reason":"x"}"#,
            br#"{"status":"cannot_prepare","reason":7}"#,
            b"",
        ] {
            assert!(
                parse_prepare(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn execute_answers() {
        let a = parse_execute(
            br#"{"status":"completed","state_hash_before":"b","state_hash_after":"a","ect":"x.y.z","extra":1}"#,
        )
        .unwrap();
        assert_eq!(a.status, ExecuteResult::Completed);
        assert_eq!(a.state_hash_before.as_deref(), Some("b"));
        assert_eq!(a.state_hash_after.as_deref(), Some("a"));
        assert_eq!(a.ect.as_deref(), Some("x.y.z"));
        assert_eq!(a.raw["extra"], json!(1));
        assert_eq!(
            parse_execute(br#"{"status":"partial"}"#).unwrap().status,
            ExecuteResult::Failed
        );
        for (s, r) in [
            ("compensated", ExecuteResult::Compensated),
            ("failed", ExecuteResult::Failed),
            ("escalated", ExecuteResult::Escalated),
        ] {
            let body = json!({ "status": s }).to_string();
            assert_eq!(parse_execute(body.as_bytes()).unwrap().status, r);
            assert_eq!(r.as_str(), s);
        }
        for bad in [
            &b"<html>"[..],
            br#"{"status":"done"}"#,
            br#"{"status":"completed","ect":5}"#,
            br#"[]"#,
        ] {
            assert!(
                parse_execute(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            body_ect(br#"{"code":"unauthenticated","ect":"e.c.t"}"#).as_deref(),
            Some("e.c.t")
        );
        assert_eq!(body_ect(br#"{"ect":1}"#), None);
        assert_eq!(body_ect(b"oops"), None);
        assert_eq!(short_text(b"  not\n\tfound \r\n"), "not found");
        let long = "x".repeat(500);
        let cut = short_text(long.as_bytes());
        assert_eq!(cut.chars().count(), SHORT_TEXT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(short_text(&[0xff, b'a']), "\u{fffd}a");
    }
}
