//! Turning a rollback request into a stored rollback: validate it, check who may ask, plan it
//! over the workflow's graph, and let the store decide idempotency and conflicts atomically.

use std::collections::HashSet;

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::conflict;
use super::model::{
    CreateOutcome, ExecuteStatus, NewRollback, OnCannotPrepare, PrepareStatus, RollbackRecord,
    RollbackStatus, StepRecord,
};
use super::planner::{self, PlanError, Scope, Target};
use crate::dag::WorkflowGraph;
use crate::store::{Store, StoreError};

/// The body of `POST /v1/rollbacks`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// `urn:uuid:<uuid>`, lowercase; generated when absent. The idempotency key.
    pub rollback_id: Option<String>,
    /// The checkpoint to roll back to (exactly one of `checkpoint_id` / `trigger_ect`).
    pub checkpoint_id: Option<String>,
    /// A failing ECT; the rollback starts from its agent's nearest checkpoint above it.
    pub trigger_ect: Option<String>,
    /// `sub_dag` when absent.
    pub scope: Option<Scope>,
    pub reason: Option<String>,
    /// `auto` when absent; other values are for operators only.
    pub on_cannot_prepare: Option<OnCannotPrepare>,
}

/// Who asks: an operator, or an agent authenticated by its `Execution-Context`.
#[derive(Debug, Clone, PartialEq)]
pub enum Requester {
    Operator {
        principal: String,
    },
    Agent {
        iss: String,
        context_wids: Vec<Option<String>>,
    },
}

impl Requester {
    pub fn principal(&self) -> &str {
        match self {
            Requester::Operator { principal } => principal,
            Requester::Agent { iss, .. } => iss,
        }
    }
}

/// Why a request was refused, each with the API's status and code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotACheckpoint(String),
    #[error("{0}")]
    NoCheckpointFound(String),
    #[error("{0}")]
    Forbidden(String),
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::NotACheckpoint(_) => "not_a_checkpoint",
            Self::NoCheckpointFound(_) => "no_checkpoint_found",
            Self::Forbidden(_) => "forbidden",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Longest `reason` kept.
const MAX_REASON_CHARS: usize = 1000;

/// Validates, authorises, plans and submits a request. The store applies the idempotency and
/// conflict rules under the workflow's lock.
pub async fn submit(
    store: &dyn Store,
    request: &RollbackRequest,
    requester: &Requester,
) -> Result<CreateOutcome, SubmitError> {
    let CheckedRequest {
        rollback_id,
        target,
        scope,
        on_cannot_prepare,
        reason,
    } = check_request(request, requester)?;

    let named = target.jti().to_string();
    let Some(record) = store.get_ect(&named).await? else {
        return Err(RequestError::NotFound(format!("no ECT with jti {named}")).into());
    };
    let Some(wid) = record.wid.clone() else {
        return Err(RequestError::Invalid(format!("ECT {named} belongs to no workflow")).into());
    };
    let graph = WorkflowGraph::build(Some(wid.clone()), store.workflow_nodes(&wid).await?).await;
    let now = Utc::now();
    let plan = planner::plan(&graph, &target, scope, now.timestamp()).map_err(|e| match e {
        PlanError::NotFound(j) => RequestError::NotFound(format!("no ECT with jti {j}")),
        PlanError::NotACheckpoint(j) => {
            RequestError::NotACheckpoint(format!("{j} is not a checkpoint"))
        }
        PlanError::NoCheckpointFound(j) => RequestError::NoCheckpointFound(format!(
            "the agent of {j} recorded no checkpoint above it"
        )),
    })?;
    if let Requester::Agent { iss, context_wids } = requester {
        authorize_agent(&graph, &plan.checkpoint_id, &wid, iss, context_wids)?;
    }

    let request_hash = crate::ect::sha256_hex(
        json!({
            "requested_by": requester.principal(),
            "target": match &target { Target::Checkpoint(c) => json!({"checkpoint_id": c}), Target::Trigger(t) => json!({"trigger_ect": t}) },
            "scope": scope,
            "on_cannot_prepare": on_cannot_prepare,
        })
        .to_string()
        .as_bytes(),
    );
    let steps = plan
        .steps
        .iter()
        .map(|s| StepRecord {
            rollback_id: rollback_id.clone(),
            checkpoint_id: s.checkpoint_id.clone(),
            agent: s.agent.clone(),
            rollback_uri: s.rollback_uri.clone(),
            rank: s.rank,
            critical: s.critical,
            reversible: s.reversible,
            expired: s.expired,
            waits_for: s.waits_for.clone(),
            prepare_status: PrepareStatus::Pending,
            execute_status: ExecuteStatus::Pending,
            attempts: 0,
            next_attempt_at: None,
            error: None,
            response: None,
            reused_from: None,
            updated_at: now,
        })
        .collect();
    let new = NewRollback {
        record: RollbackRecord {
            rollback_id,
            wid,
            checkpoint_id: plan.checkpoint_id.clone(),
            trigger_ect: plan.trigger_ect.clone(),
            scope,
            status: RollbackStatus::Accepted,
            requested_by: requester.principal().to_string(),
            reason,
            on_cannot_prepare,
            request_hash,
            plan,
            failed_agents: Vec::new(),
            superseded_by: None,
            evidence_start: None,
            evidence_complete: None,
            result: json!({}),
            created_at: now,
            updated_at: now,
            version: 1,
        },
        steps,
    };
    let decide = |ctx: &super::model::CreateContext| conflict::decide(&new, ctx);
    Ok(store.create_rollback(&new, &decide).await?)
}

/// A request that passed the checks needing no store: defaults applied, the id canonical.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRequest {
    pub rollback_id: String,
    pub target: Target,
    pub scope: Scope,
    pub on_cannot_prepare: OnCannotPrepare,
    pub reason: Option<String>,
}

/// The checks of a request that need no store: the id's form, exactly one target, the reason's
/// length, and what only operators may ask for.
pub fn check_request(
    request: &RollbackRequest,
    requester: &Requester,
) -> Result<CheckedRequest, RequestError> {
    let rollback_id = match &request.rollback_id {
        Some(id) => canonical_rollback_id(id)?,
        None => format!("urn:uuid:{}", uuid::Uuid::new_v4()),
    };
    let target = match (&request.checkpoint_id, &request.trigger_ect) {
        (Some(c), None) => Target::Checkpoint(c.clone()),
        (None, Some(t)) => Target::Trigger(t.clone()),
        _ => {
            return Err(RequestError::Invalid(
                "give exactly one of checkpoint_id and trigger_ect".into(),
            ));
        }
    };
    let scope = request.scope.unwrap_or_default();
    let on_cannot_prepare = request.on_cannot_prepare.unwrap_or_default();
    let reason = request.reason.clone();
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(RequestError::Invalid(format!(
            "reason is over {MAX_REASON_CHARS} characters"
        )));
    }
    // PostgreSQL refuses U+0000 in text: refused here, it is a 422 rather than a store failure.
    if target.jti().contains('\0') || reason.as_ref().is_some_and(|r| r.contains('\0')) {
        return Err(RequestError::Invalid(
            "checkpoint_id, trigger_ect and reason must not contain U+0000".into(),
        ));
    }
    if let Requester::Agent { .. } = requester {
        if scope == Scope::FullWorkflow {
            return Err(RequestError::Forbidden(
                "agents may not request full_workflow rollbacks".into(),
            ));
        }
        if on_cannot_prepare != OnCannotPrepare::Auto {
            return Err(RequestError::Forbidden(
                "only operators may set on_cannot_prepare".into(),
            ));
        }
    }

    Ok(CheckedRequest {
        rollback_id,
        target,
        scope,
        on_cannot_prepare,
        reason,
    })
}

/// `urn:uuid:<uuid>` in canonical lowercase form, or `invalid_request`.
pub fn canonical_rollback_id(id: &str) -> Result<String, RequestError> {
    let invalid = || {
        RequestError::Invalid(format!(
            "rollback_id must be urn:uuid:<uuid> in lowercase, not {id:?}"
        ))
    };
    let rest = id.strip_prefix("urn:uuid:").ok_or_else(invalid)?;
    let uuid = uuid::Uuid::parse_str(rest).map_err(|_| invalid())?;
    let canonical = format!("urn:uuid:{}", uuid.hyphenated());
    if canonical != id {
        return Err(invalid());
    }
    Ok(canonical)
}

/// An agent may ask only within its own workflow, and only for a checkpoint it has standing
/// over ([`has_standing`]).
fn authorize_agent(
    graph: &WorkflowGraph,
    checkpoint: &str,
    wid: &str,
    iss: &str,
    context_wids: &[Option<String>],
) -> Result<(), RequestError> {
    if context_wids.iter().any(|w| w.as_deref() != Some(wid)) {
        return Err(RequestError::Forbidden(
            "the Execution-Context belongs to another workflow than the checkpoint".into(),
        ));
    }
    if has_standing(graph, checkpoint, iss) {
        Ok(())
    } else {
        Err(RequestError::Forbidden(format!(
            "{iss} has no ECT linked to checkpoint {checkpoint} in this workflow"
        )))
    }
}

/// The standing rule: `iss` issued the checkpoint, or an ECT that is an ancestor or a
/// descendant of it, recorded before the request (the graph is read for the request). A root
/// ECT posted into the workflow without any link to the checkpoint does not count. Which nodes
/// an agent may link to at all is the trust entry's `link_to` (checked at ingest); inside one
/// trust domain an agent can still attach a child to a checkpoint and so gain standing
/// (docs/security.md).
pub fn has_standing(graph: &WorkflowGraph, checkpoint: &str, iss: &str) -> bool {
    let mut related: HashSet<String> = HashSet::new();
    related.insert(checkpoint.to_string());
    related.extend(graph.ancestors(checkpoint).unwrap_or_default());
    related.extend(graph.descendants(checkpoint).unwrap_or_default());
    related
        .iter()
        .filter_map(|jti| graph.node(jti))
        .any(|node| node.iss == iss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_ids_are_lowercase_urn_uuids() {
        let id = "urn:uuid:6f1c1b7e-1111-4222-8333-944455556666";
        assert_eq!(canonical_rollback_id(id).unwrap(), id);
        for bad in [
            "6f1c1b7e-1111-4222-8333-944455556666",
            "urn:uuid:6F1C1B7E-1111-4222-8333-944455556666",
            "urn:uuid:not-a-uuid",
            "urn:uuid:6f1c1b7e111142228333944455556666",
            "",
        ] {
            assert_eq!(
                canonical_rollback_id(bad).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }

    #[test]
    fn text_with_nul_is_an_invalid_request() {
        let operator = Requester::Operator {
            principal: "operator:o".into(),
        };
        let request =
            |checkpoint: &str, trigger: Option<&str>, reason: Option<&str>| RollbackRequest {
                rollback_id: None,
                checkpoint_id: trigger.is_none().then(|| checkpoint.to_string()),
                trigger_ect: trigger.map(str::to_string),
                scope: None,
                reason: reason.map(str::to_string),
                on_cannot_prepare: None,
            };
        for r in [
            request("cp\0", None, None),
            request("", Some("t\0"), None),
            request("cp", None, Some("bad\0deploy")),
        ] {
            let e = check_request(&r, &operator).unwrap_err();
            assert_eq!(e.code(), "invalid_request", "{r:?}");
        }
        assert!(check_request(&request("cp", None, Some("bad deploy")), &operator).is_ok());
    }
}
