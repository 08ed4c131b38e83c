//! The rollback plan (design.md §5, §6): which checkpoints a rollback calls, in what order, and
//! which of them are on its critical path. Pure: it reads a [`WorkflowGraph`] and the time.
//!
//! Orientation: edges run parent -> child, and a checkpoint precedes the actions it guards. A
//! checkpoint may run only after every planned checkpoint downstream of it, so each step waits
//! for its *nearest* planned descendants ([`PlannedStep::waits_for`]) and its
//! [`PlannedStep::rank`] is the length of the longest chain of planned checkpoints below it
//! (rank 0 runs first).
//!
//! Cost: one depth-first pass over the nodes in scope, then one pass in topological order that
//! carries each node's nearest planned descendants (shared between nodes that have the same
//! set, dropped once every parent has read it). No descendant set is built per node: the cost is
//! the nodes and edges in scope plus the total length of the `waits_for` lists.
//!
//! Decisions the specifications leave open:
//! - A graph without a `wid` (tokens that belong to no workflow) cannot be planned: a rollback
//!   belongs to a workflow. The target is then [`PlanError::NotFound`].
//! - The ledger cannot store a cycle (a parent must be recorded before its child), but the graph
//!   is built from stored rows, so planning must still terminate on one. Scope and critical path
//!   use plain reachability, which is cycle-safe. For the order, the back edges found by the
//!   depth-first pass (those closing a cycle) are ignored: every step still gets a rank and a
//!   dependency list, and no step ever waits for itself.

use std::collections::BTreeSet;
use std::rc::Rc;

use petgraph::Direction;
use serde::{Deserialize, Serialize};

use crate::dag::{DagNode, WorkflowGraph, checkpoint_view};
use crate::ect::claims::EXEC_ACT_CHECKPOINT;

/// How much of the workflow a rollback undoes. The derived order is breadth:
/// `Single < SubDag < FullWorkflow` (a broader rollback may take over a narrower one).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The checkpoint alone.
    Single,
    /// The checkpoint and every checkpoint downstream of it.
    #[default]
    SubDag,
    /// Every checkpoint of the workflow (operators only).
    FullWorkflow,
}

impl Scope {
    /// 0 for `Single`, 1 for `SubDag`, 2 for `FullWorkflow`: larger is broader.
    pub fn breadth(self) -> u8 {
        match self {
            Scope::Single => 0,
            Scope::SubDag => 1,
            Scope::FullWorkflow => 2,
        }
    }

    /// The name used on the wire (`single`, `sub_dag`, `full_workflow`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Single => "single",
            Scope::SubDag => "sub_dag",
            Scope::FullWorkflow => "full_workflow",
        }
    }
}

/// What a rollback request names: exactly one of `checkpoint_id` or `trigger_ect`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A checkpoint, named directly (`checkpoint_id`).
    Checkpoint(String),
    /// A failing ECT (`trigger_ect`); the rollback starts from [`nearest_checkpoint`].
    Trigger(String),
}

impl Target {
    /// The jti the request names.
    pub fn jti(&self) -> &str {
        match self {
            Target::Checkpoint(jti) | Target::Trigger(jti) => jti,
        }
    }
}

/// One checkpoint to call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub checkpoint_id: String,
    /// The `iss` of the checkpoint: the agent that is called.
    pub agent: String,
    pub rollback_uri: Option<String>,
    /// Length of the longest chain of planned checkpoints below this one; 0 runs first.
    pub rank: u32,
    /// `false` also when the checkpoint's `ext` does not parse: it cannot be called safely.
    pub reversible: bool,
    /// `iat + cascade.ttl <= now`: the agent is not called (`checkpoint_expired`).
    pub expired: bool,
    /// On the critical path: failing to prepare it escalates instead of skipping it.
    pub critical: bool,
    /// Planned checkpoints that must finish (or be skipped) before this one: its nearest planned
    /// descendants (planned checkpoints reachable without passing another planned checkpoint).
    /// Sorted.
    pub waits_for: Vec<String>,
}

/// A rollback plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub wid: String,
    /// The resolved checkpoint the rollback starts from.
    pub checkpoint_id: String,
    pub trigger_ect: Option<String>,
    pub scope: Scope,
    /// Sorted by `(rank, checkpoint_id)`.
    pub steps: Vec<PlannedStep>,
    /// Checkpoint ids of the critical steps, sorted.
    pub critical_path: Vec<String>,
}

impl Plan {
    /// The step for this checkpoint, if planned.
    pub fn step(&self, id: &str) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.checkpoint_id == id)
    }

    /// The agents called, sorted and distinct.
    pub fn agents(&self) -> Vec<String> {
        let agents: BTreeSet<&str> = self.steps.iter().map(|s| s.agent.as_str()).collect();
        agents.into_iter().map(str::to_owned).collect()
    }

    /// The steps grouped by rank: `levels()[r]` holds the steps of rank `r`, by checkpoint id.
    /// Ranks are contiguous (a step of rank `r > 0` waits for one of rank `r - 1`), so no level
    /// is empty.
    pub fn levels(&self) -> Vec<Vec<&PlannedStep>> {
        let mut levels: Vec<Vec<&PlannedStep>> = Vec::new();
        for step in &self.steps {
            let rank = step.rank as usize;
            if levels.len() <= rank {
                levels.resize_with(rank + 1, Vec::new);
            }
            levels[rank].push(step);
        }
        levels
    }
}

/// Why a rollback cannot be planned. [`PlanError::code`] is the API's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No ECT with this jti, or it belongs to no workflow (a graph without `wid`).
    #[error("ECT {0} not found in any workflow")]
    NotFound(String),
    /// `checkpoint_id` names an ECT that is not a checkpoint.
    #[error("ECT {0} is not a checkpoint")]
    NotACheckpoint(String),
    /// The trigger's agent has no checkpoint above the trigger.
    #[error("the agent of ECT {0} has no checkpoint above it")]
    NoCheckpointFound(String),
}

impl PlanError {
    /// `not_found`, `not_a_checkpoint` or `no_checkpoint_found`.
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::NotFound(_) => "not_found",
            PlanError::NotACheckpoint(_) => "not_a_checkpoint",
            PlanError::NoCheckpointFound(_) => "no_checkpoint_found",
        }
    }
}

fn is_checkpoint(node: &DagNode) -> bool {
    node.exec_act == EXEC_ACT_CHECKPOINT
}

/// The checkpoint a rollback for `trigger` starts from (design.md §5): `trigger` itself if it is a
/// checkpoint; else the nearest `checkpoint` ancestor issued by the trigger's own agent
/// (fewest hops, then latest iat, then smallest jti).
///
/// Another agent's checkpoint is never chosen: an agent's actions are undone by its own
/// checkpoint, and the rollback reaches downstream agents through the scope.
pub fn nearest_checkpoint(graph: &WorkflowGraph, trigger: &str) -> Result<String, PlanError> {
    let not_found = || PlanError::NotFound(trigger.to_owned());
    let node = graph.node(trigger).ok_or_else(not_found)?;
    if is_checkpoint(node) {
        return Ok(node.jti.clone());
    }
    graph
        .distances(trigger, Direction::Incoming)
        .ok_or_else(not_found)?
        .into_iter()
        .filter(|(n, hops)| *hops > 0 && is_checkpoint(n) && n.iss == node.iss)
        .min_by(|(a, hops_a), (b, hops_b)| {
            hops_a
                .cmp(hops_b)
                .then(b.iat.cmp(&a.iat))
                .then_with(|| a.jti.cmp(&b.jti))
        })
        .map(|(n, _)| n.jti.clone())
        .ok_or_else(|| PlanError::NoCheckpointFound(trigger.to_owned()))
}

/// The plan: steps in scope (Single = that checkpoint; SubDag = it and every checkpoint
/// downstream of it; FullWorkflow = every checkpoint of the workflow), their order, ranks and
/// the critical path (with a trigger: planned checkpoints that are descendants-or-self of the
/// resolved checkpoint and ancestors-or-self of the trigger; with a checkpoint id: that
/// checkpoint alone). `now` (Unix seconds) decides which checkpoints have expired.
pub fn plan(
    graph: &WorkflowGraph,
    target: &Target,
    scope: Scope,
    now: i64,
) -> Result<Plan, PlanError> {
    let (checkpoint_id, trigger_ect) = match target {
        Target::Checkpoint(id) => {
            let node = graph
                .node(id)
                .ok_or_else(|| PlanError::NotFound(id.clone()))?;
            if !is_checkpoint(node) {
                return Err(PlanError::NotACheckpoint(id.clone()));
            }
            (id.clone(), None)
        }
        Target::Trigger(jti) => (nearest_checkpoint(graph, jti)?, Some(jti.clone())),
    };
    let wid = graph
        .wid()
        .ok_or_else(|| PlanError::NotFound(target.jti().to_owned()))?
        .to_owned();

    let (steps, critical_path) = match scope {
        Scope::Single => single_step(graph, &checkpoint_id, now)?,
        Scope::SubDag | Scope::FullWorkflow => {
            let nodes = graph.nodes();
            let root = position(nodes, &checkpoint_id)?;
            let trigger = match &trigger_ect {
                Some(jti) => Some(position(nodes, jti)?),
                None => None,
            };
            let adjacency = Adjacency::new(graph);
            let starts: Vec<u32> = match scope {
                Scope::SubDag => vec![root],
                _ => (0..nodes.len() as u32).collect(),
            };
            let order = Order::new(&adjacency, &starts);
            // sub_dag: the scope is exactly what is downstream of the root.
            let scope_is_downstream = scope == Scope::SubDag;
            planned_steps(
                graph,
                &adjacency,
                &order,
                root,
                trigger,
                scope_is_downstream,
                now,
            )
        }
    };

    Ok(Plan {
        wid,
        checkpoint_id,
        trigger_ect,
        scope,
        steps,
        critical_path,
    })
}

/// The plan of a `single` rollback: the checkpoint alone, which is always critical (it is both
/// the requested checkpoint and an ancestor-or-self of any trigger that resolved to it).
fn single_step(
    graph: &WorkflowGraph,
    checkpoint_id: &str,
    now: i64,
) -> Result<(Vec<PlannedStep>, Vec<String>), PlanError> {
    let node = graph
        .node(checkpoint_id)
        .ok_or_else(|| PlanError::NotFound(checkpoint_id.to_owned()))?;
    let step = step_for(node, now, 0, true, Vec::new());
    Ok((vec![step], vec![checkpoint_id.to_owned()]))
}

fn step_for(
    node: &DagNode,
    now: i64,
    rank: u32,
    critical: bool,
    waits_for: Vec<String>,
) -> PlannedStep {
    let view = checkpoint_view(node, now);
    PlannedStep {
        checkpoint_id: view.jti,
        agent: view.agent,
        rollback_uri: view.rollback_uri,
        rank,
        reversible: view.reversible,
        expired: view.expired,
        critical,
        waits_for,
    }
}

/// Position of `jti` in `nodes` (the graph's node order).
fn position(nodes: &[DagNode], jti: &str) -> Result<u32, PlanError> {
    nodes
        .iter()
        .position(|n| n.jti == jti)
        .map(|i| i as u32)
        .ok_or_else(|| PlanError::NotFound(jti.to_owned()))
}

/// Children and parents of every node by position (compressed rows), built once per plan from
/// the graph's edge list.
struct Adjacency {
    child_start: Vec<u32>,
    children: Vec<u32>,
    parent_start: Vec<u32>,
    parents: Vec<u32>,
}

impl Adjacency {
    fn new(graph: &WorkflowGraph) -> Self {
        let n = graph.len();
        let edges: Vec<(u32, u32)> = graph
            .edge_positions()
            .map(|(p, c)| (p as u32, c as u32))
            .collect();
        let (child_start, children) = rows(n, edges.iter().map(|&(p, c)| (p, c)));
        let (parent_start, parents) = rows(n, edges.iter().map(|&(p, c)| (c, p)));
        Self {
            child_start,
            children,
            parent_start,
            parents,
        }
    }

    /// Positions in `children` of the child slots of `v`.
    fn child_slots(&self, v: u32) -> std::ops::Range<usize> {
        self.child_start[v as usize] as usize..self.child_start[v as usize + 1] as usize
    }

    fn parents_of(&self, v: u32) -> &[u32] {
        let v = v as usize;
        &self.parents[self.parent_start[v] as usize..self.parent_start[v + 1] as usize]
    }

    /// `from` and every node reachable from it along `dir`, as a membership table.
    fn reach(&self, from: u32, dir: Direction) -> Vec<bool> {
        let mut seen = vec![false; self.child_start.len() - 1];
        seen[from as usize] = true;
        let mut queue = vec![from];
        while let Some(v) = queue.pop() {
            let next = match dir {
                Direction::Outgoing => &self.children[self.child_slots(v)],
                Direction::Incoming => self.parents_of(v),
            };
            for &w in next {
                if !seen[w as usize] {
                    seen[w as usize] = true;
                    queue.push(w);
                }
            }
        }
        seen
    }
}

/// Counting sort of `(row, value)` pairs into row starts and values, keeping input order
/// within a row.
fn rows(n: usize, pairs: impl Iterator<Item = (u32, u32)> + Clone) -> (Vec<u32>, Vec<u32>) {
    let mut start = vec![0u32; n + 1];
    for (row, _) in pairs.clone() {
        start[row as usize + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut next = start.clone();
    let mut values = vec![0u32; start[n] as usize];
    for (row, value) in pairs {
        let at = &mut next[row as usize];
        values[*at as usize] = value;
        *at += 1;
    }
    (start, values)
}

/// The nodes in scope in post-order (every node after all its children, back edges aside),
/// from a depth-first search started at each of `starts` in turn.
struct Order {
    post: Vec<u32>,
    /// `in_scope[v]`: reached by the search.
    in_scope: Vec<bool>,
    /// `back[slot]`: the child edge at this slot closes a cycle and is ignored for the order.
    back: Vec<bool>,
}

impl Order {
    fn new(adjacency: &Adjacency, starts: &[u32]) -> Self {
        const NEW: u8 = 0;
        const OPEN: u8 = 1;
        const DONE: u8 = 2;
        let n = adjacency.child_start.len() - 1;
        let mut state = vec![NEW; n];
        let mut back = vec![false; adjacency.children.len()];
        let mut post = Vec::new();
        // (node, next child slot): an explicit stack, so deep chains cannot overflow.
        let mut stack: Vec<(u32, usize)> = Vec::new();
        for &start in starts {
            if state[start as usize] != NEW {
                continue;
            }
            state[start as usize] = OPEN;
            stack.push((start, adjacency.child_slots(start).start));
            while let Some(top) = stack.last_mut() {
                let (v, slot) = *top;
                if slot < adjacency.child_slots(v).end {
                    top.1 += 1;
                    let c = adjacency.children[slot];
                    match state[c as usize] {
                        NEW => {
                            state[c as usize] = OPEN;
                            stack.push((c, adjacency.child_slots(c).start));
                        }
                        OPEN => back[slot] = true,
                        _ => {}
                    }
                } else {
                    state[v as usize] = DONE;
                    post.push(v);
                    stack.pop();
                }
            }
        }
        Self {
            post,
            in_scope: state.into_iter().map(|s| s == DONE).collect(),
            back,
        }
    }
}

/// Steps and critical path of a `sub_dag` or `full_workflow` plan: every checkpoint in scope,
/// with ranks and nearest planned descendants computed children-first along `order`.
fn planned_steps(
    graph: &WorkflowGraph,
    adjacency: &Adjacency,
    order: &Order,
    root: u32,
    trigger: Option<u32>,
    scope_is_downstream: bool,
    now: i64,
) -> (Vec<PlannedStep>, Vec<String>) {
    let nodes = graph.nodes();
    let n = nodes.len();
    let planned = |v: u32| order.in_scope[v as usize] && is_checkpoint(&nodes[v as usize]);

    // How many parents in scope will still read a node's frontier (back edges aside), so that
    // a frontier is dropped as soon as it is no longer needed.
    let mut readers = vec![0u32; n];
    for &v in &order.post {
        for slot in adjacency.child_slots(v) {
            if !order.back[slot] {
                readers[adjacency.children[slot] as usize] += 1;
            }
        }
    }

    // frontier[v]: the nearest planned descendants-or-self of v (just v when v is planned).
    let mut frontier: Vec<Option<Rc<[u32]>>> = vec![None; n];
    // below[v]: 1 + the largest rank of a planned descendant-or-self of v; 0 when none.
    let mut below = vec![0u32; n];
    let mut rank = vec![0u32; n];
    let mut waits: Vec<Option<Rc<[u32]>>> = vec![None; n];
    let mut sets: Vec<Rc<[u32]>> = Vec::new();

    for &v in &order.post {
        let mut highest = 0u32;
        sets.clear();
        for slot in adjacency.child_slots(v) {
            if order.back[slot] {
                continue;
            }
            let c = adjacency.children[slot] as usize;
            highest = highest.max(below[c]);
            if let Some(set) = &frontier[c]
                && !sets.iter().any(|s| Rc::ptr_eq(s, set))
            {
                sets.push(Rc::clone(set));
            }
            readers[c] -= 1;
            if readers[c] == 0 {
                frontier[c] = None;
            }
        }
        let nearest = union(&sets);
        let v_at = v as usize;
        if planned(v) {
            rank[v_at] = highest;
            below[v_at] = highest.saturating_add(1);
            waits[v_at] = nearest;
            frontier[v_at] = Some(Rc::from([v]));
        } else {
            below[v_at] = highest;
            frontier[v_at] = nearest;
        }
    }

    let critical: Vec<bool> = match trigger {
        Some(t) => {
            let upstream = adjacency.reach(t, Direction::Incoming);
            let reached;
            let downstream = if scope_is_downstream {
                &order.in_scope
            } else {
                reached = adjacency.reach(root, Direction::Outgoing);
                &reached
            };
            (0..n).map(|v| downstream[v] && upstream[v]).collect()
        }
        None => (0..n).map(|v| v == root as usize).collect(),
    };

    let mut steps: Vec<PlannedStep> = Vec::new();
    let mut critical_path: Vec<String> = Vec::new();
    for &v in &order.post {
        if !planned(v) {
            continue;
        }
        let v_at = v as usize;
        let mut waits_for: Vec<String> = waits[v_at]
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|&w| nodes[w as usize].jti.clone())
            .collect();
        waits_for.sort_unstable();
        let node = &nodes[v_at];
        if critical[v_at] {
            critical_path.push(node.jti.clone());
        }
        steps.push(step_for(node, now, rank[v_at], critical[v_at], waits_for));
    }
    steps.sort_unstable_by(|a, b| {
        a.rank
            .cmp(&b.rank)
            .then_with(|| a.checkpoint_id.cmp(&b.checkpoint_id))
    });
    critical_path.sort_unstable();
    (steps, critical_path)
}

/// The union of sorted, distinct position sets, by linear merges; shares the set when there is
/// only one.
fn union(sets: &[Rc<[u32]>]) -> Option<Rc<[u32]>> {
    let (first, rest) = sets.split_first()?;
    if rest.is_empty() {
        return Some(Rc::clone(first));
    }
    let mut acc: Vec<u32> = first.to_vec();
    let mut merged: Vec<u32> = Vec::new();
    for set in rest {
        merged.clear();
        merged.reserve(acc.len() + set.len());
        let (mut i, mut j) = (0, 0);
        while i < acc.len() && j < set.len() {
            let (a, b) = (acc[i], set[j]);
            merged.push(a.min(b));
            i += usize::from(a <= b);
            j += usize::from(b <= a);
        }
        merged.extend_from_slice(&acc[i..]);
        merged.extend_from_slice(&set[j..]);
        std::mem::swap(&mut acc, &mut merged);
    }
    Some(Rc::from(acc))
}

#[cfg(test)]
mod tests;
