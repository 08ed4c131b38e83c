//! The workflow DAG as SVG: boxes placed by [`crate::dag::layout`], coloured by kind and state,
//! each a link (so keyboard users can tab through the nodes) that selects the node and shows its
//! blast radius.

use maud::{Markup, html};

use super::page::{enc, middle_ellipsis, visible};
use crate::dag::WorkflowGraph;
use crate::dag::layout::{Layout, NODE_HEIGHT, NODE_WIDTH};

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Task,
    Checkpoint,
    Irreversible,
    Error,
    /// Signed by Unwind itself (rollback and breaker evidence, cascade alerts, decisions).
    Evidence,
}

impl Kind {
    pub fn class(self) -> &'static str {
        match self {
            Kind::Task => "k-task",
            Kind::Checkpoint => "k-checkpoint",
            Kind::Irreversible => "k-irreversible",
            Kind::Error => "k-error",
            Kind::Evidence => "k-evidence",
        }
    }

    /// The word shown on the node, so the kind never rests on colour alone.
    pub fn mark(self) -> &'static str {
        match self {
            Kind::Task => "",
            Kind::Checkpoint => "CHECKPOINT",
            Kind::Irreversible => "IRREVERSIBLE",
            Kind::Error => "ERROR",
            Kind::Evidence => "UNWIND",
        }
    }
}

/// How one node is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub kind: Kind,
    /// A rollback undid this checkpoint.
    pub rolled_back: bool,
    /// A rollback step on this checkpoint was escalated to a person.
    pub escalated: bool,
    /// Inside the selected node's blast radius.
    pub in_blast: bool,
    pub selected: bool,
}

impl Look {
    fn classes(&self) -> String {
        let mut c = format!("node {}", self.kind.class());
        for (on, class) in [
            (self.rolled_back, " st-rolled-back"),
            (self.escalated, " st-escalated"),
            (self.in_blast, " in-blast"),
            (self.selected, " selected"),
        ] {
            if on {
                c.push_str(class);
            }
        }
        c
    }

    /// What a screen reader says for the node.
    fn description(&self) -> String {
        let mut words = vec![match self.kind {
            Kind::Task => "task",
            Kind::Checkpoint => "checkpoint",
            Kind::Irreversible => "irreversible checkpoint",
            Kind::Error => "error",
            Kind::Evidence => "Unwind evidence",
        }];
        if self.rolled_back {
            words.push("rolled back");
        }
        if self.escalated {
            words.push("escalated");
        }
        if self.in_blast && !self.selected {
            words.push("in the blast radius");
        }
        if self.selected {
            words.push("selected");
        }
        words.join(", ")
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The agent on a node's second line: its whole id shortened in the middle to fit (the
/// `spiffe://` scheme left out for room), never only its last segment; the node's title and
/// label carry the full id.
fn node_agent(iss: &str) -> String {
    let id = visible(iss);
    let shown = id.strip_prefix("spiffe://").unwrap_or(&id);
    middle_ellipsis(shown, 18)
}

/// The drawing. `looks[i]` describes `graph.nodes()[i]`; `link` is the page URL selecting a node.
pub fn draw(
    graph: &WorkflowGraph,
    layout: &Layout,
    looks: &[Look],
    link: impl Fn(&str) -> String,
) -> Markup {
    let nodes = graph.nodes();
    let label = format!(
        "Workflow DAG: {} nodes, {} edges, work flows from top to bottom",
        nodes.len(),
        graph.edge_count()
    );
    html! {
        svg.dag xmlns="http://www.w3.org/2000/svg" role="group" aria-label=(label)
            width=(layout.width) height=(layout.height)
            viewBox={ "0 0 " (layout.width) " " (layout.height) } {
            g.edges aria-hidden="true" {
                @for (from, to) in graph.edge_positions() {
                    @let (x1, y1) = layout.out_port(from);
                    @let (x2, y2) = layout.in_port(to);
                    @let mid = (y1 + y2) / 2.0;
                    @let hot = looks[from].in_blast && looks[to].in_blast;
                    path class=(if hot { "edge in-blast" } else { "edge" })
                        d={ "M" (x1) "," (y1) " C" (x1) "," (mid) " " (x2) "," (mid) " " (x2) "," (y2) } {}
                }
            }
            @for (i, node) in nodes.iter().enumerate() {
                @let p = layout.placed[i];
                @let look = looks[i];
                a href=(link(&node.jti)) data-jti=(node.jti)
                    aria-label={ (node.exec_act) " by " (visible(&node.iss)) ", " (look.description()) } {
                    g class=(look.classes()) transform={ "translate(" (p.x) "," (p.y) ")" } {
                        title { (node.exec_act) " by " (visible(&node.iss)) " (" (look.description()) "), jti " (node.jti) }
                        rect width=(NODE_WIDTH) height=(NODE_HEIGHT) rx="5" {}
                        text x="8" y="17" { (truncate(&node.exec_act, 22)) }
                        text.sub x="8" y="34" { (node_agent(&node.iss)) }
                        @if !look.kind.mark().is_empty() {
                            text.mark x=(NODE_WIDTH - 6.0) y="34" text-anchor="end" { (look.kind.mark()) }
                        }
                        @if look.rolled_back {
                            text.mark x=(NODE_WIDTH - 6.0) y="14" text-anchor="end" { "ROLLED BACK" }
                        } @else if look.escalated {
                            text.mark x=(NODE_WIDTH - 6.0) y="14" text-anchor="end" { "ESCALATED" }
                        }
                    }
                }
            }
        }
    }
}

/// The page link that selects a node of workflow `wid`.
pub fn node_link(wid: &str, jti: &str) -> String {
    format!("/ui/workflows/{}?node={}#dag", enc(wid), enc(jti))
}

/// The legend under the drawing.
pub fn legend() -> Markup {
    let entries = [
        ("k-task", "task"),
        ("k-checkpoint", "checkpoint"),
        ("k-irreversible", "irreversible checkpoint"),
        ("k-error", "error"),
        ("st-rolled-back", "rolled back"),
        ("st-escalated", "escalated"),
        ("k-evidence", "Unwind evidence"),
        ("in-blast", "blast radius of the selected node"),
    ];
    html! {
        ul.legend aria-label="Legend" {
            @for (class, text) in entries {
                li { span class={ "swatch " (class) } aria-hidden="true" {} (text) }
            }
        }
    }
}
