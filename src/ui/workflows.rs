//! Workflows: the list, one workflow's DAG with a selected node's blast radius and the form that
//! starts a rollback from it, and one ECT.

use std::collections::HashSet;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{
    self, PageOptions, Section, UiError, agent_id, badge, csrf_field, enc, short_id, time, word,
};
use super::session::Session;
use super::svg::{self, Kind, Look};
use crate::api::AppState;
use crate::dag::{BlastRadius, DagNode, WorkflowGraph, layout};
use crate::ect::claims::{EXEC_ACT_CHECKPOINT, is_error_node};
use crate::rollback::model::{ExecuteStatus, RollbackFilter, RollbackRecord, StepRecord};
use crate::store::{EctFilter, MAX_LIMIT};

/// Above this many nodes the page lists the workflow instead of drawing it: a browser would
/// struggle, and so would a reader.
const MAX_DRAWN: usize = 1500;
/// Rollbacks of one workflow read to colour its nodes.
const MAX_ROLLBACKS: usize = 200;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
}

pub async fn list(
    session: Session,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, UiError> {
    let page_of = state.store.list_workflows(q.cursor.as_deref(), 100).await?;
    let body = html! {
        h1 { "Workflows" }
        @if page_of.items.is_empty() {
            p.empty { "No workflow yet: agents' ECTs appear here once they are ingested." }
        } @else {
            table {
                caption.note { "Workflows in the order they first appeared." }
                thead { tr {
                    th scope="col" { "Workflow" } th.num scope="col" { "Nodes" }
                    th.num scope="col" { "Agents" } th.num scope="col" { "Checkpoints" }
                    th scope="col" { "First seen" } th scope="col" { "Last seen" }
                } }
                tbody {
                    @for w in &page_of.items {
                        tr {
                            td { a href={ "/ui/workflows/" (enc(&w.wid)) } { (w.wid) } }
                            td.num { (w.nodes) } td.num { (w.agents) } td.num { (w.checkpoints) }
                            td { (time(w.first_seen)) } td { (time(w.last_seen)) }
                        }
                    }
                }
            }
            @if let Some(next) = &page_of.next_cursor {
                p.pager { a href={ "/ui/workflows?cursor=" (enc(next)) } { "Next page" } }
            }
        }
    };
    Ok(page::page(
        &session,
        Section::Workflows,
        "Workflows",
        PageOptions::default(),
        body,
    ))
}

#[derive(Debug, Deserialize)]
pub struct ShowQuery {
    node: Option<String>,
}

/// What the rollbacks of a workflow did to its checkpoints.
#[derive(Default)]
struct RollbackMarks {
    rolled_back: HashSet<String>,
    escalated: HashSet<String>,
}

impl RollbackMarks {
    fn from(rollbacks: &[(RollbackRecord, Vec<StepRecord>)]) -> Self {
        let mut marks = Self::default();
        for step in rollbacks.iter().flat_map(|(_, steps)| steps) {
            if step.execute_status.is_undone() {
                marks.rolled_back.insert(step.checkpoint_id.clone());
            } else if step.execute_status == ExecuteStatus::Escalated {
                marks.escalated.insert(step.checkpoint_id.clone());
            }
        }
        marks
    }
}

pub async fn show(
    session: Session,
    State(state): State<AppState>,
    Path(wid): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, UiError> {
    let Some(summary) = state.store.get_workflow(&wid).await? else {
        return Err(UiError::not_found(format!("There is no workflow {wid}.")));
    };
    let nodes = state.store.workflow_nodes(&wid).await?;
    let drawable = nodes.len() <= MAX_DRAWN;
    let errors = if drawable {
        error_nodes(&state, &wid).await?
    } else {
        HashSet::new()
    };
    let rollbacks = workflow_rollbacks(&state, &wid).await?;
    let marks = RollbackMarks::from(&rollbacks);
    let graph = WorkflowGraph::build(Some(wid.clone()), nodes).await;
    let now = chrono::Utc::now().timestamp();
    let selected = q.node.as_deref().filter(|jti| graph.contains(jti));
    let blast = selected.and_then(|jti| graph.blast_radius(jti, None, now));
    let in_blast: HashSet<&str> = blast
        .as_ref()
        .map(|b| b.nodes.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let coordinator = state.config.coordinator_id.as_str();
    let looks: Vec<Look> = graph
        .nodes()
        .iter()
        .map(|n| Look {
            kind: kind_of(n, &errors, coordinator, now),
            rolled_back: marks.rolled_back.contains(&n.jti),
            escalated: marks.escalated.contains(&n.jti),
            in_blast: in_blast.contains(n.jti.as_str()),
            selected: selected == Some(n.jti.as_str()),
        })
        .collect();

    let body = html! {
        h1 { "Workflow " span.id { (wid) } }
        p.note {
            (summary.nodes) " nodes from " (summary.agents) " agents, " (summary.checkpoints)
            " checkpoints; first seen " (time(summary.first_seen)) ", last " (time(summary.last_seen)) "."
        }
        div.layout {
            section aria-labelledby="dag-title" {
                h2 #dag-title { "DAG" }
                @if drawable {
                    p.note { "Select a node (click, or Tab then Enter) to see what its failure affects." }
                    div.dag-frame #dag {
                        (svg::draw(&graph, &layout::layered(&graph), &looks, |jti| svg::node_link(&wid, jti)))
                    }
                    (svg::legend())
                } @else {
                    p { "This workflow has " (graph.len()) " nodes, more than the console draws ("
                        (MAX_DRAWN) "). Use " code { "unwind dag --wid " (wid) " --format dot" }
                        " for a drawing, or select a node by its jti in the address." }
                }
                details {
                    summary { "Nodes as a table" }
                    (node_table(&graph, &looks, &wid))
                }
            }
            aside.panel aria-labelledby="node-title" {
                @match (selected.and_then(|jti| graph.node(jti)), &blast) {
                    (Some(node), Some(blast)) => {
                        @let look = looks.iter().zip(graph.nodes()).find(|(_, n)| n.jti == node.jti).map(|(l, _)| *l);
                        (node_panel(&session, node, look.map(|l| l.kind), blast, &wid))
                    }
                    _ => {
                        h2 #node-title { "No node selected" }
                        p { "Select a node in the drawing to see its blast radius and to start a rollback from it." }
                    }
                }
            }
        }
        section aria-labelledby="rollbacks-title" {
            h2 #rollbacks-title { "Rollbacks of this workflow" }
            (rollback_table(&rollbacks))
        }
    };
    Ok(page::page(
        &session,
        Section::Workflows,
        &format!("Workflow {wid}"),
        PageOptions::default(),
        body,
    ))
}

fn kind_of(node: &DagNode, errors: &HashSet<String>, coordinator: &str, now: i64) -> Kind {
    if node.iss == coordinator {
        Kind::Evidence
    } else if errors.contains(&node.jti) {
        Kind::Error
    } else if node.exec_act == EXEC_ACT_CHECKPOINT {
        if crate::dag::checkpoint_view(node, now).reversible {
            Kind::Checkpoint
        } else {
            Kind::Irreversible
        }
    } else {
        Kind::Task
    }
}

/// The workflow's error nodes (the spec's predicate needs each node's `ext`, which the graph
/// keeps for checkpoints only).
async fn error_nodes(state: &AppState, wid: &str) -> Result<HashSet<String>, UiError> {
    let filter = EctFilter {
        wid: Some(wid.to_string()),
        ..EctFilter::default()
    };
    let mut errors = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut read = 0usize;
    loop {
        let page = state
            .store
            .list_ects(&filter, cursor.as_deref(), MAX_LIMIT)
            .await?;
        read += page.items.len();
        errors.extend(
            page.items
                .into_iter()
                .filter(|r| is_error_node(&r.exec_act, &r.ext))
                .map(|r| r.jti),
        );
        match page.next_cursor {
            Some(next) if read < MAX_DRAWN => cursor = Some(next),
            _ => return Ok(errors),
        }
    }
}

/// The workflow's rollbacks (up to [`MAX_ROLLBACKS`]), oldest first, with their steps.
pub(super) async fn workflow_rollbacks(
    state: &AppState,
    wid: &str,
) -> Result<Vec<(RollbackRecord, Vec<StepRecord>)>, UiError> {
    let filter = RollbackFilter {
        wid: Some(wid.to_string()),
        status: None,
    };
    let page = state
        .store
        .list_rollbacks(&filter, None, MAX_ROLLBACKS as u32)
        .await?;
    let mut out = Vec::with_capacity(page.items.len());
    for r in page.items {
        if let Some(found) = state.store.get_rollback(&r.rollback_id).await? {
            out.push(found);
        }
    }
    Ok(out)
}

fn node_panel(
    session: &Session,
    node: &DagNode,
    kind: Option<Kind>,
    blast: &BlastRadius,
    wid: &str,
) -> Markup {
    let is_checkpoint = node.exec_act == EXEC_ACT_CHECKPOINT;
    html! {
        h2 #node-title { (node.exec_act) }
        dl {
            dt { "jti" } dd.id { a href={ "/ui/ects/" (enc(&node.jti)) } { (node.jti) } }
            dt { "agent" } dd { (agent_id(&node.iss)) }
            dt { "issued" } dd { (page::unix_time(node.iat)) }
            dt { "kind" } dd { (kind.map_or("task", |k| match k {
                Kind::Task => "task", Kind::Checkpoint => "checkpoint",
                Kind::Irreversible => "irreversible checkpoint", Kind::Error => "error",
                Kind::Evidence => "Unwind evidence" })) }
        }
        h3 { "Blast radius" }
        p #blast-summary {
            (blast.nodes.len()) " nodes, " (blast.agents.len()) " agents, "
            (blast.checkpoints.len()) " checkpoints (" (blast.irreversible.len()) " irreversible), depth "
            (blast.depth) "."
        }
        @if !blast.agents.is_empty() {
            p { "Agents: " @for (i, a) in blast.agents.iter().enumerate() {
                @if i > 0 { ", " } (agent_id(a))
            } }
        }
        @if !blast.irreversible.is_empty() {
            p.error { "Irreversible inside: "
                @for jti in &blast.irreversible { a href=(svg::node_link(wid, jti)) { (short_id(jti)) } " " } }
        }
        h3 { "Roll back" }
        @if !session.can_act() {
            (page::read_only_note())
        } @else {
            form method="post" action="/ui/rollbacks" {
                (csrf_field(session))
                input type="hidden" name=(if is_checkpoint { "checkpoint_id" } else { "trigger_ect" }) value=(node.jti);
                p.note { @if is_checkpoint { "Rolls back to this checkpoint." }
                         @else { "Rolls back from the nearest checkpoint of this node's agent above it." } }
                label for="scope" { "Scope" }
                select #scope name="scope" {
                    option value="sub_dag" selected { "sub_dag: this checkpoint and what depends on it" }
                    option value="single" { "single: this checkpoint only" }
                    option value="full_workflow" { "full_workflow: the whole workflow" }
                }
                label for="on_cannot_prepare" { "If a step cannot prepare" }
                select #on_cannot_prepare name="on_cannot_prepare" {
                    option value="auto" selected { "auto: ask on the critical path, skip elsewhere" }
                    option value="escalate" { "escalate: always ask a person" }
                    option value="partial" { "partial: skip it" }
                    option value="abort" { "abort the rollback" }
                }
                label for="reason" { "Reason" }
                input #reason type="text" name="reason" maxlength="500" placeholder="what went wrong";
                div.actions { button type="submit" { "Start rollback" } }
            }
        }
    }
}

fn node_table(graph: &WorkflowGraph, looks: &[Look], wid: &str) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Node" } th scope="col" { "Agent" } th scope="col" { "Kind" }
                         th scope="col" { "Parents" } } }
            tbody {
                @for (node, look) in graph.nodes().iter().zip(looks) {
                    tr {
                        td { a href=(svg::node_link(wid, &node.jti)) { (node.exec_act) } " " (short_id(&node.jti)) }
                        td { (agent_id(&node.iss)) }
                        td { (look.kind.mark().to_lowercase())
                             @if look.rolled_back { " rolled back" } @if look.escalated { " escalated" } }
                        td { @for p in &node.parents { (short_id(p)) " " } }
                    }
                }
            }
        }
    }
}

pub(super) fn rollback_table(rollbacks: &[(RollbackRecord, Vec<StepRecord>)]) -> Markup {
    html! {
        @if rollbacks.is_empty() {
            p.empty { "No rollback." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Rollback" } th scope="col" { "Status" } th scope="col" { "Scope" }
                    th.num scope="col" { "Steps" } th scope="col" { "Requested by" } th scope="col" { "Reason" }
                    th scope="col" { "Created" }
                } }
                tbody {
                    @for (r, steps) in rollbacks.iter().rev() {
                        tr {
                            td { a href={ "/ui/rollbacks/" (enc(&r.rollback_id)) } { (short_id(&r.rollback_id)) } }
                            td { (badge(&word(&r.status))) }
                            td { (word(&r.scope)) }
                            td.num { (steps.len()) }
                            td { (r.requested_by) }
                            td { (r.reason.as_deref().unwrap_or("")) }
                            td { (time(r.created_at)) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn ect(
    session: Session,
    State(state): State<AppState>,
    Path(jti): Path<String>,
) -> Result<Response, UiError> {
    let Some(record) = state.store.get_ect(&jti).await? else {
        return Err(UiError::not_found(format!("There is no ECT {jti}.")));
    };
    let body = html! {
        h1 { (record.exec_act) " " span.id { (record.jti) } }
        div.panel {
            dl {
                dt { "agent" } dd { (agent_id(&record.iss)) }
                dt { "workflow" } dd { @if let Some(wid) = &record.wid {
                    a href=(svg::node_link(wid, &record.jti)) { (wid) } } @else { "none" } }
                dt { "issued" } dd { (page::unix_time(record.iat)) }
                dt { "received" } dd { (time(record.received_at)) }
                dt { "key" } dd.id { (record.kid) }
                dt { "parents" } dd { @for p in &record.parents {
                    a href={ "/ui/ects/" (enc(p)) } { (short_id(p)) } " " } }
            }
        }
        h2 { "Claims" }
        (page::json_block(&serde_json::Value::Object(record.claims.clone())))
        h2 { "Token as received" }
        pre.json { (record.token) }
    };
    Ok(page::page(
        &session,
        Section::Workflows,
        &format!("ECT {jti}"),
        PageOptions::default(),
        body,
    ))
}
