//! Rollbacks: the list, one rollback with live step progress, starting one from a node, and
//! deciding one that awaits a decision. Actions go through the API's own functions.

use axum::extract::{Form, Path, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{
    self, PageOptions, Section, UiError, agent_id, badge, csrf_field, enc, short_id, word,
};
use super::session::Session;
use super::svg;
use crate::api::AppState;
use crate::api::rollbacks::{Decision, DecisionRequest, RollbackView};
use crate::rollback::model::{OnCannotPrepare, RollbackFilter, RollbackStatus};
use crate::rollback::planner::Scope;
use crate::rollback::request::RollbackRequest;
use crate::store::MAX_LIMIT;

/// Newest rollbacks shown on the list page.
const LIST_SHOWN: usize = 200;

pub async fn list(session: Session, State(state): State<AppState>) -> Result<Response, UiError> {
    // The store lists oldest first; the console shows the newest, so read to the end.
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .store
            .list_rollbacks(&RollbackFilter::default(), cursor.as_deref(), MAX_LIMIT)
            .await?;
        records.extend(page.items);
        if records.len() > LIST_SHOWN {
            let excess = records.len() - LIST_SHOWN;
            records.drain(..excess);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut rollbacks = Vec::with_capacity(records.len());
    for r in records {
        if let Some(found) = state.store.get_rollback(&r.rollback_id).await? {
            rollbacks.push(found);
        }
    }
    let body = html! {
        h1 { "Rollbacks" }
        p.note { "Newest first. Start a rollback from a node of a workflow's DAG." }
        (super::workflows::rollback_table(&rollbacks))
    };
    Ok(page::page(
        &session,
        Section::Rollbacks,
        "Rollbacks",
        PageOptions::default(),
        body,
    ))
}

async fn view(state: &AppState, id: &str) -> Result<RollbackView, UiError> {
    match state.store.get_rollback(id).await? {
        Some((r, steps)) => Ok(RollbackView::new(r, steps)),
        None => Err(UiError::not_found(format!("There is no rollback {id}."))),
    }
}

pub async fn show(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let r = view(&state, &id).await?;
    let status = word(&r.status);
    let terminal = r.status.is_terminal();
    let live = !terminal;
    let mut steps: Vec<_> = r.steps.iter().collect();
    steps.sort_by_key(|s| s.rank);
    let events = format!("/ui/rollbacks/{}/events", enc(&r.rollback_id));
    let body = html! {
        div data-events=[live.then_some(events.as_str())] data-status=(status) {
            h1 { "Rollback " span.id { (r.rollback_id) } }
            p { "Status: " span #rollback-status aria-live="polite" { (badge(&status)) } }
            @if live { p #live .live aria-live="off" { "Live: following the rollback as it runs." } }
            div.panel {
                dl {
                    dt { "workflow" } dd { a href={ "/ui/workflows/" (enc(&r.wid)) } { (r.wid) } }
                    dt { "checkpoint" } dd { a href=(svg::node_link(&r.wid, &r.checkpoint_id)) { (short_id(&r.checkpoint_id)) } }
                    @if let Some(t) = &r.trigger_ect {
                        dt { "trigger" } dd { a href=(svg::node_link(&r.wid, t)) { (short_id(t)) } }
                    }
                    dt { "scope" } dd { (word(&r.scope)) }
                    dt { "reason" } dd { (r.reason.as_deref().unwrap_or("none given")) }
                    dt { "requested by" } dd { (r.requested_by) }
                    dt { "created" } dd { (r.created_at) }
                    dt { "updated" } dd { (r.updated_at) }
                    @if let Some(by) = &r.superseded_by {
                        dt { "superseded by" } dd { a href={ "/ui/rollbacks/" (enc(by)) } { (short_id(by)) } }
                    }
                    @if !r.failed_agents.is_empty() {
                        dt { "failed agents" } dd { @for (i, a) in r.failed_agents.iter().enumerate() {
                            @if i > 0 { ", " } (agent_id(a)) } }
                    }
                    @if let Some(d) = &r.decision {
                        dt { "decision" } dd { (d.get("decision").and_then(|v| v.as_str()).unwrap_or(""))
                            " by " (d.get("decided_by").and_then(|v| v.as_str()).unwrap_or("")) }
                    }
                    dt { "evidence" } dd {
                        @if let Some(s) = &r.evidence.rollback_start { a href={ "/ui/ects/" (enc(s)) } { "rollback_start" } " " }
                        @if let Some(c) = &r.evidence.rollback_complete { a href={ "/ui/ects/" (enc(c)) } { "rollback_complete" } }
                        @if r.evidence.rollback_start.is_none() && r.evidence.rollback_complete.is_none() { "not signed yet" }
                    }
                }
            }
            @if r.status == RollbackStatus::AwaitingDecision {
                (decision_form(&session, &r.rollback_id, &format!("/ui/rollbacks/{}", enc(&r.rollback_id))))
            }
            h2 { "Steps" }
            p.note { "Rank 0 executes first; a step waits for the steps of lower rank that depend on it." }
            table #steps {
                thead { tr {
                    th.num scope="col" { "Rank" } th scope="col" { "Checkpoint" } th scope="col" { "Agent" }
                    th scope="col" { "Prepare" } th scope="col" { "Execute" } th.num scope="col" { "Attempts" }
                    th scope="col" { "Error" }
                } }
                tbody {
                    @for s in steps {
                        tr data-checkpoint=(s.checkpoint_id) {
                            td.num { (s.rank) }
                            td { a href=(svg::node_link(&r.wid, &s.checkpoint_id)) { (short_id(&s.checkpoint_id)) } }
                            td { (agent_id(&s.agent)) }
                            td data-field="prepare_status" { (badge(&word(&s.prepare_status))) }
                            td data-field="execute_status" { (badge(&word(&s.execute_status))) }
                            td.num data-field="attempts" { (s.attempts) }
                            td data-field="error" { @if let Some(e) = &s.error { (e.code) ": " (e.detail) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page::page(
        &session,
        Section::Rollbacks,
        &format!("Rollback {}", r.rollback_id),
        PageOptions {
            refresh_s: live.then_some(3),
            script: live,
        },
        body,
    ))
}

/// The three decisions on a rollback awaiting one; `back` is where the browser returns.
pub(super) fn decision_form(session: &Session, rollback_id: &str, back: &str) -> Markup {
    let form_id = format!("decide-{}", rollback_id.trim_start_matches("urn:uuid:"));
    html! {
        section.decision.panel aria-label="Decision" {
            h2 { "This rollback awaits your decision" }
            @if !session.can_act() {
                (page::read_only_note())
            } @else {
                form method="post" action={ "/ui/rollbacks/" (enc(rollback_id)) "/decision" } id=(form_id) {
                    (csrf_field(session))
                    input type="hidden" name="back" value=(back);
                    label for={ (form_id) "-comment" } { "Comment (kept with the decision)" }
                    textarea id={ (form_id) "-comment" } name="comment" maxlength="1000" {}
                    div.actions {
                        button type="submit" name="decision" value="proceed_partial" { "Proceed with what is prepared" }
                        button.secondary type="submit" name="decision" value="retry" { "Retry preparing" }
                        button.danger type="submit" name="decision" value="abort" { "Abort the rollback" }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CreateForm {
    csrf: Option<String>,
    checkpoint_id: Option<String>,
    trigger_ect: Option<String>,
    scope: Option<String>,
    reason: Option<String>,
    on_cannot_prepare: Option<String>,
}

fn parse_choice<T: serde::de::DeserializeOwned>(
    field: &str,
    value: Option<&str>,
) -> Result<Option<T>, UiError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => serde_json::from_value(serde_json::Value::String(v.to_string()))
            .map(Some)
            .map_err(|_| {
                UiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                    format!("{field} {v:?} is not one of the offered choices"),
                )
            }),
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub async fn create(
    session: Session,
    State(state): State<AppState>,
    Form(form): Form<CreateForm>,
) -> Result<Response, UiError> {
    session.check_csrf(form.csrf.as_deref())?;
    let request = RollbackRequest {
        rollback_id: None,
        checkpoint_id: non_empty(form.checkpoint_id),
        trigger_ect: non_empty(form.trigger_ect),
        scope: parse_choice::<Scope>("scope", form.scope.as_deref())?,
        reason: non_empty(form.reason),
        on_cannot_prepare: parse_choice::<OnCannotPrepare>(
            "on_cannot_prepare",
            form.on_cannot_prepare.as_deref(),
        )?,
    };
    let (_, created) =
        crate::api::rollbacks::request_rollback(&state, &session.caller(), &request).await?;
    Ok(page::see_other(&format!(
        "/ui/rollbacks/{}",
        enc(&created.rollback_id)
    )))
}

pub async fn events(
    _session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    Ok(crate::api::rollbacks::events(state, id).await?)
}

#[derive(Debug, Deserialize)]
pub struct DecideForm {
    csrf: Option<String>,
    decision: Option<String>,
    comment: Option<String>,
    back: Option<String>,
}

pub async fn decide(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<DecideForm>,
) -> Result<Response, UiError> {
    session.check_csrf(form.csrf.as_deref())?;
    // Where to go afterwards is checked before the decision is applied: a target that cannot
    // be followed refuses the form instead of failing once the decision stands.
    let back = match form.back.as_deref().filter(|b| !b.is_empty()) {
        None => format!("/ui/rollbacks/{}", enc(&id)),
        Some(b) => match page::console_path(b) {
            Some(path) => path.to_string(),
            None => {
                return Err(UiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                    "the page to return to is not a console path",
                ));
            }
        },
    };
    let Some(decision) = parse_choice::<Decision>("decision", form.decision.as_deref())? else {
        return Err(UiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "choose a decision",
        ));
    };
    let body = DecisionRequest {
        decision,
        comment: non_empty(form.comment),
    };
    crate::api::rollbacks::apply_decision(&state, &session.caller(), &id, body).await?;
    Ok(page::see_other(&back))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_choices_parse_as_the_api_words_and_refuse_anything_else() {
        let scope: Option<Scope> = parse_choice("scope", Some("full_workflow")).unwrap();
        assert_eq!(scope, Some(Scope::FullWorkflow));
        assert!(parse_choice::<Scope>("scope", Some("everything")).is_err());
        assert_eq!(parse_choice::<Scope>("scope", Some("  ")).unwrap(), None);
        let d: Option<Decision> = parse_choice("decision", Some("proceed_partial")).unwrap();
        assert_eq!(d, Some(Decision::ProceedPartial));
    }
}
