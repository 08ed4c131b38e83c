//! The workflow graph (petgraph): blast radius, batch ordering and renderings.
//!
//! Edges run parent -> child (the direction work flowed). Pure: no I/O; the store loads the
//! nodes of one workflow ([`DagNode`]) and this module answers questions about them.
//!
//! - [`WorkflowGraph`]: the graph of one workflow, its blast radius, ancestors and descendants.
//! - [`order_batch`]: the ingest order of a batch of new tokens (parents first) and its cycles.
//! - [`WorkflowGraph::to_json`], [`WorkflowGraph::to_dot`], [`WorkflowGraph::to_mermaid`]: the
//!   renderings served by `GET /v1/workflows/{wid}/dag`.
//! - [`layout::layered`]: node positions for the console's drawing of a workflow.

mod batch;
mod graph;
pub mod layout;
mod render;
pub mod synthetic;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use batch::{BatchOrder, order_batch};
pub use graph::{WorkflowGraph, checkpoint_view};
pub use render::{DagJson, DagJsonEdge, DagJsonNode};

/// What the graph needs of one ECT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagNode {
    pub jti: String,
    pub iss: String,
    pub exec_act: String,
    pub iat: i64,
    pub parents: Vec<String>,
    /// The `ext` object for checkpoints (needed for reversibility and expiry); `None` otherwise.
    pub ext: Option<Map<String, Value>>,
}

/// A checkpoint inside a blast radius.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointView {
    pub jti: String,
    pub agent: String,
    pub reversible: bool,
    pub rollback_uri: Option<String>,
    /// RFC 3339 time at which the checkpoint expires (`iat` + `cascade.ttl`), if it has a TTL.
    pub expires_at: Option<String>,
    pub expired: bool,
}

/// The answer to "what did this node touch?" (design.md §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlastRadius {
    pub root: String,
    pub wid: Option<String>,
    /// The root and every descendant (within `max_depth`), in breadth-first order.
    pub nodes: Vec<String>,
    /// Distinct issuers of those nodes, sorted.
    pub agents: Vec<String>,
    /// Checkpoints among the nodes, in the order of `nodes`.
    pub checkpoints: Vec<CheckpointView>,
    /// `jti`s of the irreversible checkpoints among them.
    pub irreversible: Vec<String>,
    /// Longest shortest-path distance from the root to a node in the set (0 = root alone).
    pub depth: u32,
}
