//! [`WorkflowGraph`]: one workflow's nodes in a petgraph `DiGraph`, with blast radius,
//! descendants and ancestors.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use chrono::{DateTime, SecondsFormat};
use hashbrown::HashTable;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{VisitMap, Visitable};

use super::{BlastRadius, CheckpointView, DagNode};
use crate::ect::claims::{CheckpointInfo, EXEC_ACT_CHECKPOINT};

/// The graph of one workflow. Edges run parent -> child.
///
/// Node `i` of the petgraph graph is `nodes()[i]`, so the graph itself carries no weights. The
/// jti index is a table of `u32` positions into `nodes` (the jti strings are not copied), and
/// issuers are interned, which keeps a 1,000,000-node workflow to little more than its input.
#[derive(Debug, Clone)]
pub struct WorkflowGraph {
    wid: Option<String>,
    nodes: Vec<DagNode>,
    graph: DiGraph<(), (), u32>,
    /// Positions into `nodes`, keyed by the hash of the jti. SipHash with a random key: jtis are
    /// chosen by agents, so the index must not be open to collision flooding.
    index: HashTable<u32>,
    hasher: RandomState,
    /// Distinct issuers, sorted, so that a set of issuer ids read in order is a sorted list.
    issuers: Vec<String>,
    /// `issuer_of[i]` is the position in `issuers` of `nodes[i].iss`.
    issuer_of: Vec<u32>,
}

impl WorkflowGraph {
    /// [`WorkflowGraph::from_nodes`] on a blocking thread: a workflow of a million nodes takes
    /// about a second of CPU to build, which must not stall the runtime's workers (every caller
    /// is a request or a task on them).
    pub async fn build(wid: Option<String>, nodes: Vec<DagNode>) -> Self {
        match tokio::task::spawn_blocking(move || Self::from_nodes(wid, nodes)).await {
            Ok(graph) => graph,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down, and so is the caller.
            Err(_) => Self::from_nodes(None, Vec::new()),
        }
    }

    /// Builds the graph of one workflow.
    ///
    /// A parent that is not among `nodes` is ignored (it belongs to no node of this workflow), a
    /// parent listed twice gives one edge, and a node whose jti was already seen is dropped (the
    /// store never holds two nodes with one jti; the first wins). Node order is kept and is the
    /// order of every listing below.
    ///
    /// # Panics
    /// With more than `u32::MAX - 1` nodes or edges (petgraph's index type).
    pub fn from_nodes(wid: Option<String>, nodes: Vec<DagNode>) -> Self {
        let hasher = RandomState::new();
        let (nodes, index) = index_nodes(nodes, &hasher);
        let (issuers, issuer_of) = intern_issuers(&nodes);

        let edge_count: usize = nodes.iter().map(|n| n.parents.len()).sum();
        let mut graph: DiGraph<(), (), u32> = DiGraph::with_capacity(nodes.len(), edge_count);
        for _ in 0..nodes.len() {
            graph.add_node(());
        }
        let lookup = |jti: &str| -> Option<u32> {
            let hash = hasher.hash_one(jti);
            index.find(hash, |&i| nodes[i as usize].jti == jti).copied()
        };
        let mut linked: Vec<u32> = Vec::new();
        for (child, node) in nodes.iter().enumerate() {
            linked.clear();
            for parent in &node.parents {
                let Some(p) = lookup(parent) else { continue };
                if linked.contains(&p) {
                    continue;
                }
                linked.push(p);
                graph.add_edge(NodeIndex::new(p as usize), NodeIndex::new(child), ());
            }
        }

        Self {
            wid,
            nodes,
            graph,
            index,
            hasher,
            issuers,
            issuer_of,
        }
    }

    /// The workflow id the graph was built for.
    pub fn wid(&self) -> Option<&str> {
        self.wid.as_deref()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the workflow has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether a node with this jti is in the graph.
    pub fn contains(&self, jti: &str) -> bool {
        self.position(jti).is_some()
    }

    /// The node with this jti.
    pub fn node(&self, jti: &str) -> Option<&DagNode> {
        self.position(jti).map(|i| &self.nodes[i.index()])
    }

    /// All nodes, in the order given to [`WorkflowGraph::from_nodes`] (duplicates dropped).
    pub fn nodes(&self) -> &[DagNode] {
        &self.nodes
    }

    /// Every edge as `(parent_jti, child_jti)`, grouped by child in node order, each child's
    /// parents in the order it lists them.
    pub fn edges(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.graph.raw_edges().iter().map(|e| {
            (
                self.nodes[e.source().index()].jti.as_str(),
                self.nodes[e.target().index()].jti.as_str(),
            )
        })
    }

    /// Every edge as `(parent, child)` positions in [`WorkflowGraph::nodes`], same order as
    /// [`WorkflowGraph::edges`].
    pub fn edge_positions(&self) -> impl ExactSizeIterator<Item = (usize, usize)> + '_ {
        self.graph
            .raw_edges()
            .iter()
            .map(|e| (e.source().index(), e.target().index()))
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// The blast radius of `root` (design.md §5): the root and everything downstream of it,
    /// within `max_depth` edges when given. `None` when `root` is not in the graph. `now` (Unix
    /// seconds) decides which checkpoints have expired.
    pub fn blast_radius(
        &self,
        root: &str,
        max_depth: Option<u32>,
        now: i64,
    ) -> Option<BlastRadius> {
        let start = self.position(root)?;
        let (order, depth) = self.bfs(start, Direction::Outgoing, max_depth);

        let mut seen_issuer = vec![false; self.issuers.len()];
        let mut nodes = Vec::with_capacity(order.len());
        let mut checkpoints = Vec::new();
        for &i in &order {
            let node = &self.nodes[i as usize];
            nodes.push(node.jti.clone());
            seen_issuer[self.issuer_of[i as usize] as usize] = true;
            if node.exec_act == EXEC_ACT_CHECKPOINT {
                checkpoints.push(checkpoint_view(node, now));
            }
        }
        let agents = self
            .issuers
            .iter()
            .zip(&seen_issuer)
            .filter(|(_, seen)| **seen)
            .map(|(iss, _)| iss.clone())
            .collect();
        let irreversible = checkpoints
            .iter()
            .filter(|c| !c.reversible)
            .map(|c| c.jti.clone())
            .collect();

        Some(BlastRadius {
            root: root.to_owned(),
            wid: self.wid.clone(),
            nodes,
            agents,
            checkpoints,
            irreversible,
            depth,
        })
    }

    /// Every node downstream of `root` (not `root` itself), nearest first. `None` when `root`
    /// is not in the graph.
    pub fn descendants(&self, root: &str) -> Option<Vec<String>> {
        self.reach(root, Direction::Outgoing)
    }

    /// Every node upstream of `jti` (not `jti` itself), nearest first: what rollback planning
    /// searches for the checkpoint guarding a failed action. `None` when `jti` is not in the
    /// graph.
    pub fn ancestors(&self, jti: &str) -> Option<Vec<String>> {
        self.reach(jti, Direction::Incoming)
    }

    /// Like [`WorkflowGraph::descendants`] (`Outgoing`) or [`WorkflowGraph::ancestors`]
    /// (`Incoming`), with each node's distance in edges from `jti`, nearest first; `jti` itself
    /// comes first at distance 0. Rollback planning picks the nearest checkpoint from this.
    pub fn distances(&self, jti: &str, dir: Direction) -> Option<Vec<(&DagNode, u32)>> {
        let start = self.position(jti)?;
        let (order, levels) = self.bfs_levels(start, dir, None);
        let mut out = Vec::with_capacity(order.len());
        let mut level = 0u32;
        for (k, &i) in order.iter().enumerate() {
            while levels.get(level as usize).is_some_and(|&end| k >= end) {
                level += 1;
            }
            out.push((&self.nodes[i as usize], level));
        }
        Some(out)
    }

    fn reach(&self, jti: &str, dir: Direction) -> Option<Vec<String>> {
        let start = self.position(jti)?;
        let (order, _) = self.bfs(start, dir, None);
        Some(
            order
                .iter()
                .skip(1)
                .map(|&i| self.nodes[i as usize].jti.clone())
                .collect(),
        )
    }

    fn position(&self, jti: &str) -> Option<NodeIndex<u32>> {
        let hash = self.hasher.hash_one(jti);
        self.index
            .find(hash, |&i| self.nodes[i as usize].jti == jti)
            .map(|&i| NodeIndex::new(i as usize))
    }

    /// Breadth-first order from `start` (included) and the largest distance reached.
    fn bfs(
        &self,
        start: NodeIndex<u32>,
        dir: Direction,
        max_depth: Option<u32>,
    ) -> (Vec<u32>, u32) {
        let (order, levels) = self.bfs_levels(start, dir, max_depth);
        (order, levels.len().saturating_sub(1) as u32)
    }

    /// Breadth-first order from `start` and, for each distance `d`, the end (exclusive) of the
    /// nodes at distance `d` in that order. The order doubles as the queue; a node's
    /// neighbours are visited in edge insertion order, so that listings follow node order.
    fn bfs_levels(
        &self,
        start: NodeIndex<u32>,
        dir: Direction,
        max_depth: Option<u32>,
    ) -> (Vec<u32>, Vec<usize>) {
        let mut visited = self.graph.visit_map();
        visited.visit(start);
        let mut order: Vec<u32> = vec![start.index() as u32];
        let mut levels: Vec<usize> = Vec::new();
        let mut neighbours: Vec<NodeIndex<u32>> = Vec::new();
        let mut level_start = 0;
        loop {
            let level_end = order.len();
            levels.push(level_end);
            if max_depth.is_some_and(|max| levels.len() > max as usize) {
                break;
            }
            for k in level_start..level_end {
                neighbours.clear();
                neighbours.extend(
                    self.graph
                        .neighbors_directed(NodeIndex::new(order[k] as usize), dir),
                );
                // petgraph lists the most recently added edge first.
                for &n in neighbours.iter().rev() {
                    if visited.visit(n) {
                        order.push(n.index() as u32);
                    }
                }
            }
            if order.len() == level_end {
                break;
            }
            level_start = level_end;
        }
        (order, levels)
    }
}

/// The jti index of `nodes`, after dropping any node whose jti came earlier. The nodes are
/// not moved unless there is a duplicate, so building never holds two copies of the list.
fn index_nodes(mut nodes: Vec<DagNode>, hasher: &RandomState) -> (Vec<DagNode>, HashTable<u32>) {
    loop {
        let mut index: HashTable<u32> = HashTable::with_capacity(nodes.len());
        let mut duplicate: Option<Vec<bool>> = None;
        for (i, node) in nodes.iter().enumerate() {
            let hash = hasher.hash_one(node.jti.as_str());
            if index
                .find(hash, |&k| nodes[k as usize].jti == node.jti)
                .is_some()
            {
                duplicate.get_or_insert_with(|| vec![false; nodes.len()])[i] = true;
                continue;
            }
            index.insert_unique(hash, i as u32, |&k| {
                hasher.hash_one(nodes[k as usize].jti.as_str())
            });
        }
        let Some(duplicate) = duplicate else {
            return (nodes, index);
        };
        let mut position = 0;
        nodes.retain(|_| {
            position += 1;
            !duplicate[position - 1]
        });
    }
}

/// Distinct issuers sorted, and each node's position among them.
fn intern_issuers(nodes: &[DagNode]) -> (Vec<String>, Vec<u32>) {
    let mut first_seen: HashMap<&str, u32> = HashMap::new();
    let mut distinct: Vec<&str> = Vec::new();
    let mut issuer_of: Vec<u32> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let id = *first_seen.entry(node.iss.as_str()).or_insert_with(|| {
            distinct.push(node.iss.as_str());
            (distinct.len() - 1) as u32
        });
        issuer_of.push(id);
    }
    let mut by_name: Vec<u32> = (0..distinct.len() as u32).collect();
    by_name.sort_unstable_by_key(|&id| distinct[id as usize]);
    let mut rank = vec![0u32; distinct.len()];
    for (r, &id) in by_name.iter().enumerate() {
        rank[id as usize] = r as u32;
    }
    for id in &mut issuer_of {
        *id = rank[*id as usize];
    }
    let issuers = by_name
        .iter()
        .map(|&id| distinct[id as usize].to_owned())
        .collect();
    (issuers, issuer_of)
}

/// How a checkpoint node looks in a blast radius or a rollback plan.
///
/// A checkpoint whose `ext` is missing or does not parse as a checkpoint cannot be rolled back:
/// it is shown irreversible, with no rollback URI and no expiry. `expired` is `now >= iat + ttl`.
pub fn checkpoint_view(node: &DagNode, now: i64) -> CheckpointView {
    let info = node
        .ext
        .as_ref()
        .and_then(|ext| CheckpointInfo::from_ext(ext).ok());
    let (reversible, rollback_uri, expires) = match info {
        Some(info) => {
            let expires = info.expires_at(node.iat);
            (info.reversible, info.rollback_uri, expires)
        }
        None => (false, None, None),
    };
    CheckpointView {
        jti: node.jti.clone(),
        agent: node.iss.clone(),
        reversible,
        rollback_uri,
        expires_at: expires.and_then(rfc3339),
        expired: expires.is_some_and(|at| now >= at),
    }
}

/// Unix seconds as RFC 3339 UTC with a `Z` suffix; `None` beyond chrono's range.
fn rfc3339(secs: i64) -> Option<String> {
    DateTime::from_timestamp(secs, 0).map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}
