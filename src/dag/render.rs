//! Renderings of a workflow graph for `GET /v1/workflows/{wid}/dag`: JSON, Graphviz DOT and
//! Mermaid.
//!
//! jtis, issuers and `exec_act` values are chosen by agents, so every one of them is escaped
//! before it reaches DOT or Mermaid text: a hostile jti must not be able to end a string, add
//! a statement or merge two nodes.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::WorkflowGraph;
use crate::ect::claims::EXEC_ACT_CHECKPOINT;

/// The JSON form of a workflow graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DagJson {
    pub wid: Option<String>,
    pub nodes: Vec<DagJsonNode>,
    pub edges: Vec<DagJsonEdge>,
}

/// One node of [`DagJson`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DagJsonNode {
    pub jti: String,
    pub iss: String,
    pub exec_act: String,
    pub iat: i64,
}

/// One edge of [`DagJson`], parent -> child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DagJsonEdge {
    /// The parent's jti.
    pub from: String,
    /// The child's jti.
    pub to: String,
}

/// Error nodes by `exec_act` alone (the rest of the predicate needs `ext`, which the graph only
/// keeps for checkpoints); see [`crate::ect::is_error_node`].
fn looks_like_error(exec_act: &str) -> bool {
    exec_act == "error" || exec_act.ends_with("_failed")
}

impl WorkflowGraph {
    /// The JSON form: nodes in node order, edges as in [`WorkflowGraph::edges`].
    pub fn to_json(&self) -> DagJson {
        DagJson {
            wid: self.wid().map(str::to_owned),
            nodes: self
                .nodes()
                .iter()
                .map(|n| DagJsonNode {
                    jti: n.jti.clone(),
                    iss: n.iss.clone(),
                    exec_act: n.exec_act.clone(),
                    iat: n.iat,
                })
                .collect(),
            edges: self
                .edges()
                .map(|(from, to)| DagJsonEdge {
                    from: from.to_owned(),
                    to: to.to_owned(),
                })
                .collect(),
        }
    }

    /// Graphviz `digraph`: nodes are identified by their quoted jti and labelled with
    /// `exec_act` and the short issuer; checkpoints are boxes, error nodes red.
    pub fn to_dot(&self) -> String {
        let mut out = String::with_capacity(64 * (self.len() + self.edge_count()) + 64);
        out.push_str("digraph ");
        match self.wid() {
            Some(wid) => push_dot_string(&mut out, wid),
            None => out.push_str("workflow"),
        }
        out.push_str(" {\n  node [shape=ellipse];\n");
        for node in self.nodes() {
            out.push_str("  ");
            push_dot_string(&mut out, &node.jti);
            out.push_str(" [label=\"");
            push_dot_escaped(&mut out, &node.exec_act);
            out.push_str("\\n");
            push_dot_escaped(&mut out, &issuer_label(&node.iss));
            out.push('"');
            if node.exec_act == EXEC_ACT_CHECKPOINT {
                out.push_str(", shape=box");
            }
            if looks_like_error(&node.exec_act) {
                out.push_str(", color=red, fontcolor=red");
            }
            out.push_str("];\n");
        }
        for (parent, child) in self.edges() {
            out.push_str("  ");
            push_dot_string(&mut out, parent);
            out.push_str(" -> ");
            push_dot_string(&mut out, child);
            out.push_str(";\n");
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid `flowchart TD`: node `i` is `n{i}` (jtis are not valid Mermaid ids), labelled
    /// with `exec_act`, jti and short issuer; checkpoints are boxes, error nodes red.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::with_capacity(80 * (self.len() + self.edge_count()) + 128);
        out.push_str("flowchart TD\n");
        for (i, node) in self.nodes().iter().enumerate() {
            let checkpoint = node.exec_act == EXEC_ACT_CHECKPOINT;
            let (open, close) = if checkpoint {
                ("[\"", "\"]")
            } else {
                ("(\"", "\")")
            };
            let _ = write!(out, "  n{i}{open}");
            push_mermaid_escaped(&mut out, &node.exec_act);
            out.push_str("<br/>");
            push_mermaid_escaped(&mut out, &node.jti);
            out.push_str("<br/>");
            push_mermaid_escaped(&mut out, &issuer_label(&node.iss));
            out.push_str(close);
            if checkpoint {
                out.push_str(":::checkpoint");
            } else if looks_like_error(&node.exec_act) {
                out.push_str(":::error");
            }
            out.push('\n');
        }
        for (parent, child) in self.edge_positions() {
            let _ = writeln!(out, "  n{parent} --> n{child}");
        }
        out.push_str("  classDef checkpoint fill:#e8f0fe,stroke:#1a73e8;\n");
        out.push_str("  classDef error fill:#fde8e8,stroke:#d93025,color:#d93025;\n");
        out
    }
}

/// An issuer as a picture shows it: the whole id, so two agents of different domains (or
/// `…/agent/../admin` and `…/admin`) never read alike. Ids over 64 characters keep their first
/// and last 31 with a visible `…` between.
pub(crate) fn issuer_label(iss: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 64;
    const KEEP: usize = 31;
    let n = iss.chars().count();
    if n <= MAX {
        return iss.into();
    }
    let head: String = iss.chars().take(KEEP).collect();
    let tail: String = iss.chars().skip(n - KEEP).collect();
    format!("{head}…{tail}").into()
}

/// Appends `s` as a quoted DOT string.
fn push_dot_string(out: &mut String, s: &str) {
    out.push('"');
    push_dot_escaped(out, s);
    out.push('"');
}

/// Escapes text for the inside of a quoted DOT string.
///
/// `"` becomes `\"` and `\` becomes `\\` (Graphviz reads a backslash pair as a unit, so a
/// string can only end at our closing quote); a line feed becomes `\n`, and other control
/// characters `\xHH`. Every backslash in the input is doubled, so two different strings never
/// escape to the same text, and two hostile jtis cannot become one node.
pub(crate) fn push_dot_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Escapes text for the inside of a quoted Mermaid label.
///
/// Mermaid has no backslash escapes; it has entity codes (`#quot;`, `#35;`), so `"` and `#`
/// (which starts an entity) are written as entities, as are `<`, `>` and `&` (labels are HTML)
/// and a backquote (which would turn the label into Markdown). Control characters, line feeds
/// included, become U+FFFD so that each node stays on one line.
pub(crate) fn push_mermaid_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '`' => out.push_str("#96;"),
            c if c.is_control() => out.push_str("#65533;"),
            c => out.push(c),
        }
    }
}
