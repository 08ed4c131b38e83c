//! The pages an on-call operator watches: escalations (with their decision buttons), circuit
//! breakers and cascade alerts.

use axum::extract::{Form, Path, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::page::{
    self, PageOptions, Section, UiError, agent_id, badge, csrf_field, enc, short_id, time,
};
use super::rollbacks::decision_form;
use super::session::Session;
use super::svg;
use crate::api::AppState;
use crate::rollback::model::RollbackStatus;
use crate::store::hitl::{Escalation, EscalationStatus};

/// Resolved escalations shown under the open ones.
const RESOLVED_SHOWN: usize = 50;

pub async fn escalations(
    session: Session,
    State(state): State<AppState>,
) -> Result<Response, UiError> {
    let open = all_escalations(&state, Some(EscalationStatus::Open), usize::MAX).await?;
    let resolved =
        all_escalations(&state, Some(EscalationStatus::Resolved), RESOLVED_SHOWN).await?;
    let mut awaiting = Vec::with_capacity(open.len());
    for e in &open {
        let waits = match &e.rollback_id {
            Some(id) => state
                .store
                .get_rollback(id)
                .await?
                .is_some_and(|(r, _)| r.status == RollbackStatus::AwaitingDecision),
            None => false,
        };
        awaiting.push(waits);
    }
    let body = html! {
        h1 { "Escalations" }
        h2 { "Open (" (open.len()) ")" }
        @if open.is_empty() { p.empty { "Nothing needs a person right now." } }
        @for (e, waits) in open.iter().zip(awaiting) {
            article.panel.escalation aria-labelledby={ "esc-" (e.id) } data-escalation=(e.id) {
                h3 id={ "esc-" (e.id) } { (e.kind.as_str().replace('_', " ")) " " (badge("open")) }
                dl {
                    dt { "workflow" } dd { a href={ "/ui/workflows/" (enc(&e.wid)) } { (e.wid) } }
                    @if let Some(id) = &e.rollback_id {
                        dt { "rollback" } dd { a href={ "/ui/rollbacks/" (enc(id)) } { (short_id(id)) } }
                    }
                    @if let Some(c) = &e.cascade_id { dt { "cascade" } dd { (short_id(c)) } }
                    dt { "raised" } dd { (time(e.created_at)) }
                }
                details { summary { "Details" } (page::json_block(&e.detail)) }
                @match (&e.rollback_id, waits) {
                    (Some(id), true) => { (decision_form(&session, id, "/ui/escalations")) }
                    _ => {
                        @if session.can_act() {
                            form method="post" action={ "/ui/escalations/" (enc(&e.id)) "/resolve" } {
                                (csrf_field(&session))
                                label for={ "resolve-" (e.id) } { "Comment" }
                                input type="text" id={ "resolve-" (e.id) } name="comment" maxlength="1000";
                                div.actions { button type="submit" { "Resolve" } }
                            }
                        } @else { (page::read_only_note()) }
                    }
                }
            }
        }
        h2 { "Recently resolved" }
        @if resolved.is_empty() { p.empty { "None." } } @else {
            table {
                thead { tr { th scope="col" { "Kind" } th scope="col" { "Workflow" } th scope="col" { "Decision" }
                             th scope="col" { "By" } th scope="col" { "Comment" } th scope="col" { "Resolved" } } }
                tbody {
                    @for e in resolved.iter().rev() {
                        tr {
                            td { (e.kind.as_str()) }
                            td { a href={ "/ui/workflows/" (enc(&e.wid)) } { (e.wid) } }
                            td { (e.decision.as_deref().unwrap_or("resolved")) }
                            td { (e.decided_by.as_deref().unwrap_or("")) }
                            td { (e.comment.as_deref().unwrap_or("")) }
                            td { @if let Some(t) = e.resolved_at { (time(t)) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page::page(
        &session,
        Section::Escalations,
        "Escalations",
        // No self-refresh here: it would wipe a comment being typed.
        PageOptions::default(),
        body,
    ))
}

/// Escalations with `status`, oldest first; at most the newest `keep`.
async fn all_escalations(
    state: &AppState,
    status: Option<EscalationStatus>,
    keep: usize,
) -> Result<Vec<Escalation>, UiError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .store
            .list_escalations(status, cursor.as_deref(), crate::store::MAX_LIMIT)
            .await?;
        out.extend(page.items);
        if out.len() > keep {
            let excess = out.len() - keep;
            out.drain(..excess);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ResolveForm {
    csrf: Option<String>,
    comment: Option<String>,
}

pub async fn resolve(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Result<Response, UiError> {
    session.check_csrf(form.csrf.as_deref())?;
    let comment = form.comment.filter(|c| !c.trim().is_empty());
    crate::api::escalations::resolve(&state, &session.caller(), &id, comment).await?;
    Ok(page::see_other("/ui/escalations"))
}

pub async fn circuits(
    session: Session,
    State(state): State<AppState>,
) -> Result<Response, UiError> {
    let circuits = match state
        .coordinator
        .as_ref()
        .and_then(|c| c.agents().circuits().cloned())
    {
        Some(circuits) => circuits.statuses().await,
        None => Vec::new(),
    };
    let body = html! {
        h1 { "Circuit breakers" }
        p.note { "One breaker per agent Unwind calls. An open breaker refuses calls until its cooldown ends, then lets one probe through (half open)." }
        @if circuits.is_empty() { p.empty { "Unwind has not called any agent yet." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Agent" } th scope="col" { "State" } th.num scope="col" { "Error rate" }
                    th.num scope="col" { "Window" } th.num scope="col" { "Cooldown left" }
                    th.num scope="col" { "p99 latency" } th scope="col" { "Last failure" }
                } }
                tbody {
                    @for c in &circuits {
                        tr data-agent=(c.downstream_agent) {
                            td { (agent_id(&c.downstream_agent)) }
                            td { (badge(&c.state)) @if c.latency_spike { " " span.badge.s-partial { "latency spike" } } }
                            td.num { (format!("{:.0} %", c.error_rate * 100.0)) }
                            td.num { (c.window_s) " s" }
                            td.num { (c.cooldown_remaining_s) " s" }
                            td.num { @if let Some(p) = c.latency_p99_ms { (format!("{p:.0} ms")) } }
                            td { @if let Some(j) = &c.last_failure_ect { a href={ "/ui/ects/" (enc(j)) } { (short_id(j)) } } }
                        }
                    }
                }
            }
        }
    };
    Ok(page::page(
        &session,
        Section::Circuits,
        "Circuit breakers",
        PageOptions {
            refresh_s: Some(10),
            script: false,
        },
        body,
    ))
}

pub async fn cascades(
    session: Session,
    State(state): State<AppState>,
) -> Result<Response, UiError> {
    let page_of = state
        .store
        .list_cascade_alerts(None, None, crate::store::MAX_LIMIT)
        .await?;
    let body = html! {
        h1 { "Cascades" }
        p.note { "Failures that spread: errors clustering in time, or propagating down (depth first) or across (breadth first) a workflow." }
        @if page_of.items.is_empty() { p.empty { "No cascade detected." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Detected" } th scope="col" { "Pattern" } th scope="col" { "Workflow" }
                    th scope="col" { "Root cause" } th scope="col" { "Agents" } th.num scope="col" { "Blast radius" }
                    th scope="col" { "Evidence" }
                } }
                tbody {
                    @for stored in page_of.items.iter().rev() {
                        @let a = &stored.alert;
                        tr {
                            td { (time(stored.detected_at)) }
                            td { (a.pattern.replace('_', " ")) }
                            td { @if let Some(w) = &a.wid { a href={ "/ui/workflows/" (enc(w)) } { (w) } } @else { "none" } }
                            td { @match &a.wid {
                                Some(w) => { a href=(svg::node_link(w, &a.root_cause_ect)) { (short_id(&a.root_cause_ect)) } }
                                None => { (short_id(&a.root_cause_ect)) }
                            } }
                            td { @for (i, ag) in a.affected_agents.iter().enumerate() {
                                @if i > 0 { ", " } (agent_id(ag)) } }
                            td.num { (a.blast_radius.len()) " nodes" }
                            td { a href={ "/ui/ects/" (enc(&a.ect)) } { (short_id(&a.ect)) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page::page(
        &session,
        Section::Cascades,
        "Cascades",
        PageOptions::default(),
        body,
    ))
}
