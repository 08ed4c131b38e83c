//! The outcomes `unwind demo --script` expects, read back from the API after the tour (not
//! from what the tour believes happened), and the signature check of the evidence against the
//! keys the coordinator serves.

use std::sync::Arc;

use serde_json::Value;

use super::{Demo, Story, coordinator, str_of};
use crate::cli::CliError;
use crate::cli::audit::{self, Audit, ExportArgs};
use crate::ect::{TrustConfig, TrustStore, Verifier, VerifyPolicy};

pub fn is_terminal(status: &str) -> bool {
    matches!(
        status,
        "completed" | "partial" | "failed" | "aborted" | "superseded"
    )
}

/// The rollback's expected end: the notice cannot be unsent, so `partial`.
const EXPECTED_END: &str = "partial";

/// One expected outcome: what was seen, or why it is missing.
pub struct Check {
    name: &'static str,
    result: Result<String, String>,
}

pub struct Checklist(Vec<Check>);

impl Checklist {
    pub fn print(&self) {
        println!("\nChecklist");
        for c in &self.0 {
            match &c.result {
                Ok(seen) => println!("  [ok]      {}: {seen}", c.name),
                Err(why) => println!("  [missing] {}: {why}", c.name),
            }
        }
    }

    /// Exit 0 only when every outcome happened; else a failure naming the missing ones.
    pub fn verdict(&self) -> Result<(), CliError> {
        let missing: Vec<&str> = self
            .0
            .iter()
            .filter(|c| c.result.is_err())
            .map(|c| c.name)
            .collect();
        if missing.is_empty() {
            println!("demo: every expected outcome happened");
            Ok(())
        } else {
            Err(CliError::Failed(format!(
                "demo: missing: {}",
                missing.join("; ")
            )))
        }
    }
}

/// Reads every expected outcome back from the coordinator.
pub async fn run(demo: &Demo, story: &Story) -> Checklist {
    let breaker = async {
        let router = demo.agent("router").map_err(|e| e.to_string())?.id();
        let open = demo
            .coordinator_ects(&story.wid, "circuit_breaker_open")
            .await
            .map_err(|e| e.to_string())?;
        open.iter()
            .find(|e| e["ext"]["cascade.downstream_agent"] == router)
            .map(|e| format!("toward {router} (ECT {})", str_of(&e["jti"])))
            .ok_or_else(|| "Unwind signed no circuit_breaker_open toward the router".to_string())
    };
    let cascade = async {
        let page = demo
            .client
            .get(&["v1", "cascades"], &[("wid", &story.wid)])
            .await
            .map_err(|e| e.to_string())?;
        page["items"]
            .as_array()
            .and_then(|a| a.first())
            .map(|c| {
                format!(
                    "{} (root cause {})",
                    str_of(&c["pattern"]),
                    str_of(&c["root_cause_ect"])
                )
            })
            .ok_or_else(|| format!("GET /v1/cascades?wid={} is empty", story.wid))
    };
    let rollback = match &story.rollback_id {
        Some(id) => demo.rollback(id).await.map_err(|e| e.to_string()),
        None => Err("no rollback was requested".to_string()),
    };
    let checks = vec![
        Check {
            name: "breaker opened",
            result: breaker.await,
        },
        Check {
            name: "cascade alert listed",
            result: cascade.await,
        },
        Check {
            name: "escalation raised and decided",
            result: escalation(demo, story).await,
        },
        Check {
            name: "rollback reached its expected end",
            result: rollback
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|r| ended(demo, r)),
        },
        Check {
            name: "evidence present and verifying with the served JWKS",
            result: match &rollback {
                Ok(r) => evidence(demo, story, r).await,
                Err(e) => Err(e.clone()),
            },
        },
        Check {
            name: "workflow export audits clean",
            result: audit_export(demo, story).await,
        },
    ];
    Checklist(checks)
}

/// What `unwind export` writes for the workflow passes every check of `unwind verify`.
async fn audit_export(demo: &Demo, story: &Story) -> Result<String, String> {
    let path = demo.data_dir.join(format!("{}.export.json", story.wid));
    audit::export(ExportArgs {
        wid: story.wid.clone(),
        out: Some(path.clone()),
        client: demo.client_args.clone(),
    })
    .await
    .map_err(|e| e.to_string())?;
    let (file, skew) = (path.clone(), demo.ect_config.clock_skew_s);
    // Signature checks are CPU work: off the async threads, as `unwind verify` does.
    let (audited, findings) = tokio::task::spawn_blocking(move || {
        Audit::load(&file, None, skew).map(|a| {
            let findings = audit::checks::run(&a);
            (a, findings)
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if let Some(f) = findings.first() {
        return Err(format!(
            "{} finding(s), first: {} {} {}",
            findings.len(),
            f.check,
            f.jti,
            f.detail
        ));
    }
    Ok(format!(
        "{} tokens, {} rollback(s), no findings ({})",
        audited.tokens.len(),
        audited.rollbacks.len(),
        path.display()
    ))
}

async fn escalation(demo: &Demo, story: &Story) -> Result<String, String> {
    let id = story.rollback_id.as_deref().ok_or("no rollback")?;
    let page = demo
        .client
        .get(&["v1", "escalations"], &[("status", "resolved")])
        .await
        .map_err(|e| e.to_string())?;
    let found = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["rollback_id"] == id && e["kind"] == "irreversible_checkpoint")
        .ok_or("no resolved irreversible_checkpoint escalation for the rollback")?;
    if found["decision"].is_null() {
        return Err(format!(
            "escalation {} was resolved without a decision",
            str_of(&found["id"])
        ));
    }
    Ok(format!(
        "irreversible_checkpoint {}, decided {} by {}",
        str_of(&found["id"]),
        decision_text(&found["decision"]),
        str_of(&found["decided_by"])
    ))
}

fn decision_text(d: &Value) -> String {
    match d {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("decision")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string(),
        other => other.to_string(),
    }
}

/// `partial`, with the router and DNS restored once each and notify never called.
fn ended(demo: &Demo, r: &Value) -> Result<String, String> {
    let status = str_of(&r["status"]);
    if status != EXPECTED_END {
        return Err(format!("status {status}, expected {EXPECTED_END}"));
    }
    let step = |agent: &str| {
        r["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["agent"] == agent)
            .map(|s| str_of(&s["execute_status"]))
            .unwrap_or_else(|| "absent".into())
    };
    let mut seen = Vec::new();
    for (name, want, restores) in [
        ("router", "completed", 1),
        ("dns", "completed", 1),
        ("notify", "escalated", 0),
    ] {
        let agent = demo.agent(name).map_err(|e| e.to_string())?;
        let got = step(agent.id());
        if got != want || agent.restores() != restores {
            return Err(format!(
                "{name}: step {got} with {} restores, expected {want} with {restores}",
                agent.restores()
            ));
        }
        seen.push(format!("{name} {got}"));
    }
    Ok(format!("{status} ({})", seen.join(", ")))
}

/// Every evidence ECT of the story exists and verifies with the keys Unwind serves at
/// `/.well-known/jwks.json`, issued by the coordinator.
async fn evidence(demo: &Demo, story: &Story, rollback: &Value) -> Result<String, String> {
    let decisions = demo
        .coordinator_ects(&story.wid, "hitl_decision")
        .await
        .map_err(|e| e.to_string())?;
    let wanted = [
        (
            "rollback_start",
            rollback["evidence"]["rollback_start"].as_str(),
        ),
        ("circuit_breaker_open", story.breaker_ect.as_deref()),
        ("cascade_detected", story.cascade_ect.as_deref()),
        (
            "hitl_decision",
            decisions.first().and_then(|d| d["jti"].as_str()),
        ),
        (
            "rollback_complete",
            rollback["evidence"]["rollback_complete"].as_str(),
        ),
    ];
    let jwks = coordinator::served_jwks(&demo.http, &demo.base)
        .await
        .map_err(|e| e.to_string())?;
    let mut trust = TrustStore::from_config(&TrustConfig::default()).map_err(|e| e.to_string())?;
    trust.add_static_issuer(&demo.coordinator_id, jwks);
    let policy = VerifyPolicy::from_config(&demo.ect_config)?;
    let verifier = Verifier::new(Arc::new(trust), policy);
    let now = chrono::Utc::now().timestamp();
    for (exec_act, jti) in wanted {
        let jti = jti.ok_or_else(|| format!("no {exec_act} ECT"))?;
        let record = demo
            .client
            .get(&["v1", "ects", jti], &[])
            .await
            .map_err(|e| format!("{exec_act} {jti}: {e}"))?;
        let token = record["token"]
            .as_str()
            .ok_or_else(|| format!("{exec_act} {jti}: no token"))?;
        let ect = verifier
            .verify(token, now)
            .await
            .map_err(|e| format!("{exec_act} {jti} does not verify: {e}"))?;
        if ect.exec_act != exec_act || ect.iss != demo.coordinator_id {
            return Err(format!(
                "{jti} is {} by {}, expected {exec_act} by Unwind",
                ect.exec_act, ect.iss
            ));
        }
    }
    Ok(format!(
        "{} ({})",
        wanted.len(),
        wanted.map(|(k, _)| k).join(", ")
    ))
}
