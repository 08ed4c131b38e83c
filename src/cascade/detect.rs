//! The three propagation patterns of the cascade draft ("Propagation Tracking via ECT DAG
//! Analysis"), as pure functions over the neighbourhood of one newly ingested node.
//!
//! Each function looks only at what the new node can complete — the circuit-breaker reports
//! near it in time, its ancestors, its siblings — so detection costs a few indexed reads per
//! ingested error, never a scan of the ledger. A detection names its root cause; the caller
//! raises one alert per (workflow, pattern, root cause), so the second and later nodes of the
//! same cascade find it already raised.
//!
//! Error nodes are those of [`crate::ect::claims::is_error_node`]. Every pattern windows by
//! `iat`: only nodes issued within `window_s` of the new node count.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ect::claims::is_error_node;

/// `exec_act` of the reports error clustering counts.
pub const CIRCUIT_BREAKER_OPEN: &str = "circuit_breaker_open";
/// The `ext` key naming the agent a breaker opened towards.
pub const DOWNSTREAM_AGENT: &str = "cascade.downstream_agent";
/// Error nodes of this many distinct agents along one parent chain make a depth-first cascade.
pub const DEPTH_FIRST_AGENTS: usize = 3;
/// This many failing children of one node make a breadth-first cascade.
pub const BREADTH_FIRST_SIBLINGS: usize = 3;
/// How far up a parent chain depth-first detection looks.
pub const MAX_ANCESTOR_DEPTH: u32 = 64;

/// The patterns, named as in `cascade.pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    ErrorClustering,
    DepthFirst,
    BreadthFirst,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ErrorClustering => "error_clustering",
            Self::DepthFirst => "depth_first",
            Self::BreadthFirst => "breadth_first",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::ErrorClustering, Self::DepthFirst, Self::BreadthFirst]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// What the detectors read of a ledger node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub exec_act: String,
    pub iat: i64,
    pub parents: Vec<String>,
    pub ext: Map<String, Value>,
}

impl Node {
    pub fn is_error(&self) -> bool {
        is_error_node(&self.exec_act, &self.ext)
    }

    /// The agent a `circuit_breaker_open` report names, if it is one.
    pub fn breaker_downstream(&self) -> Option<&str> {
        (self.exec_act == CIRCUIT_BREAKER_OPEN)
            .then(|| self.ext.get(DOWNSTREAM_AGENT).and_then(Value::as_str))
            .flatten()
    }

    fn near(&self, other: &Node, window_s: i64) -> bool {
        (self.iat - other.iat).abs() <= window_s
    }
}

/// A cascade found around a new node.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub pattern: Pattern,
    /// The root cause's workflow.
    pub wid: Option<String>,
    pub root_cause: String,
    /// Distinct agents involved, sorted.
    pub affected_agents: Vec<String>,
}

/// Error clustering: reports of at least `min_reporters` distinct issuers that a breaker
/// opened towards the same downstream agent, within the window of the new report. The root
/// cause is the earliest of them (then the smallest `jti`); the affected agents are the
/// reporters and the downstream agent.
pub fn error_clustering(
    new: &Node,
    recent_reports: &[Node],
    window_s: i64,
    min_reporters: usize,
) -> Option<Detection> {
    let downstream = new.breaker_downstream()?;
    let mut cluster: Vec<&Node> = recent_reports
        .iter()
        .chain(std::iter::once(new))
        .filter(|n| n.breaker_downstream() == Some(downstream) && n.near(new, window_s))
        .collect();
    cluster.sort_by(|a, b| (a.iat, &a.jti).cmp(&(b.iat, &b.jti)));
    cluster.dedup_by(|a, b| a.jti == b.jti);
    let reporters: BTreeSet<&str> = cluster.iter().map(|n| n.iss.as_str()).collect();
    if reporters.len() < min_reporters.max(1) {
        return None;
    }
    let root = cluster.first()?;
    let mut affected: BTreeSet<String> = reporters.iter().map(|s| s.to_string()).collect();
    affected.insert(downstream.to_string());
    Some(Detection {
        pattern: Pattern::ErrorClustering,
        wid: root.wid.clone(),
        root_cause: root.jti.clone(),
        affected_agents: affected.into_iter().collect(),
    })
}

/// Depth-first propagation: error nodes of at least [`DEPTH_FIRST_AGENTS`] distinct agents
/// along one parent chain ending at the new error node (other nodes may sit between them).
/// `ancestors` holds the new node's ancestors (any order). Of the chains above the new node,
/// the one with the most distinct failing agents is taken (ties: the first parent listed);
/// the root cause is the topmost error node on it.
pub fn depth_first(new: &Node, ancestors: &[Node], window_s: i64) -> Option<Detection> {
    if !new.is_error() {
        return None;
    }
    let by_jti: HashMap<&str, &Node> = ancestors.iter().map(|n| (n.jti.as_str(), n)).collect();
    let mut memo: HashMap<&str, Chain> = HashMap::new();
    let chain = best_chain(new, &by_jti, new, window_s, &mut memo);
    if chain.agents.len() < DEPTH_FIRST_AGENTS {
        return None;
    }
    let root = chain
        .top
        .and_then(|jti| by_jti.get(jti).copied())
        .unwrap_or(new);
    Some(Detection {
        pattern: Pattern::DepthFirst,
        wid: root.wid.clone(),
        root_cause: root.jti.clone(),
        affected_agents: chain.agents.into_iter().map(str::to_string).collect(),
    })
}

/// The failing agents along the best chain above (and including) a node, and the topmost
/// error node of that chain.
#[derive(Clone, Default)]
struct Chain<'a> {
    agents: BTreeSet<&'a str>,
    top: Option<&'a str>,
}

fn best_chain<'a>(
    node: &'a Node,
    by_jti: &HashMap<&'a str, &'a Node>,
    new: &Node,
    window_s: i64,
    memo: &mut HashMap<&'a str, Chain<'a>>,
) -> Chain<'a> {
    if let Some(done) = memo.get(node.jti.as_str()) {
        return done.clone();
    }
    let mut best = Chain::default();
    for parent in node.parents.iter().filter_map(|p| by_jti.get(p.as_str())) {
        let above = best_chain(parent, by_jti, new, window_s, memo);
        if above.agents.len() > best.agents.len() {
            best = above;
        }
    }
    if node.is_error() && node.near(new, window_s) {
        best.agents.insert(node.iss.as_str());
        if best.top.is_none() {
            best.top = Some(node.jti.as_str());
        }
    }
    memo.insert(node.jti.as_str(), best.clone());
    best
}

/// Breadth-first propagation: at least [`BREADTH_FIRST_SIBLINGS`] children of `parent`
/// (the new error node among them) failing within the window. The root cause is the parent
/// they share; the affected agents are the failing children's.
pub fn breadth_first(
    new: &Node,
    parent: &Node,
    children: &[Node],
    window_s: i64,
) -> Option<Detection> {
    if !new.is_error() {
        return None;
    }
    let failing: BTreeSet<(&str, &str)> = children
        .iter()
        .chain(std::iter::once(new))
        .filter(|c| c.parents.contains(&parent.jti) && c.is_error() && c.near(new, window_s))
        .map(|c| (c.jti.as_str(), c.iss.as_str()))
        .collect();
    if failing.len() < BREADTH_FIRST_SIBLINGS {
        return None;
    }
    let agents: BTreeSet<String> = failing.iter().map(|(_, iss)| iss.to_string()).collect();
    Some(Detection {
        pattern: Pattern::BreadthFirst,
        wid: parent.wid.clone(),
        root_cause: parent.jti.clone(),
        affected_agents: agents.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(jti: &str, iss: &str, exec_act: &str, iat: i64, parents: &[&str]) -> Node {
        Node {
            jti: jti.into(),
            wid: Some("w".into()),
            iss: format!("spiffe://x/{iss}"),
            exec_act: exec_act.into(),
            iat,
            parents: parents.iter().map(|p| p.to_string()).collect(),
            ext: Map::new(),
        }
    }

    fn report(jti: &str, iss: &str, downstream: &str, iat: i64) -> Node {
        let mut n = node(jti, iss, CIRCUIT_BREAKER_OPEN, iat, &[]);
        n.ext.insert(DOWNSTREAM_AGENT.into(), json!(downstream));
        n
    }

    #[test]
    fn clustering_needs_distinct_reporters_about_one_agent_within_the_window() {
        let new = report("r3", "b", "spiffe://x/db", 1000);
        // The same reporter twice is one reporter.
        let same = [report("r1", "b", "spiffe://x/db", 990)];
        assert_eq!(error_clustering(&new, &same, 60, 2), None);
        // Another agent, but too long ago.
        let old = [report("r1", "a", "spiffe://x/db", 900)];
        assert_eq!(error_clustering(&new, &old, 60, 2), None);
        // Another agent about another downstream agent.
        let other = [report("r1", "a", "spiffe://x/cache", 999)];
        assert_eq!(error_clustering(&new, &other, 60, 2), None);

        let near = [
            report("r2", "a", "spiffe://x/db", 995),
            report("r1", "c", "spiffe://x/db", 980),
        ];
        let d = error_clustering(&new, &near, 60, 2).unwrap();
        assert_eq!(d.pattern, Pattern::ErrorClustering);
        assert_eq!(d.root_cause, "r1", "the earliest report");
        assert_eq!(
            d.affected_agents,
            [
                "spiffe://x/a",
                "spiffe://x/b",
                "spiffe://x/c",
                "spiffe://x/db"
            ]
        );
        assert_eq!(error_clustering(&new, &near, 60, 4), None);
        // The new node must itself be a report.
        let plain = node("e", "a", "error", 1000, &[]);
        assert_eq!(error_clustering(&plain, &near, 60, 2), None);
    }

    #[test]
    fn depth_first_counts_distinct_failing_agents_along_one_chain() {
        // e1(a) -> ok(b) -> e2(b) -> e3(c): three agents on one chain, a healthy node between.
        let e1 = node("e1", "a", "fetch_failed", 100, &[]);
        let ok = node("ok", "b", "transform", 101, &["e1"]);
        let e2 = node("e2", "b", "error", 102, &["ok"]);
        let e3 = node("e3", "c", "write_failed", 103, &["e2"]);
        let d = depth_first(&e3, &[e1.clone(), ok.clone(), e2.clone()], 60).unwrap();
        assert_eq!(d.pattern, Pattern::DepthFirst);
        assert_eq!(d.root_cause, "e1");
        assert_eq!(
            d.affected_agents,
            ["spiffe://x/a", "spiffe://x/b", "spiffe://x/c"]
        );
        // Two agents are not enough.
        assert_eq!(depth_first(&e3, &[ok.clone(), e2.clone()], 60), None);
        // Outside the window, e1 does not count.
        assert_eq!(depth_first(&e3, &[e1.clone(), ok, e2], 2), None);
        // A healthy new node starts nothing.
        let fine = node("f", "c", "write", 103, &["e2"]);
        assert_eq!(depth_first(&fine, &[e1], 60), None);
    }

    #[test]
    fn depth_first_takes_the_chain_with_the_most_agents_not_the_union_of_branches() {
        // Two branches of one agent each above the new node: no chain has three agents.
        let l = node("l", "a", "error", 10, &[]);
        let r = node("r", "b", "error", 10, &[]);
        let new = node("n", "c", "error", 11, &["l", "r"]);
        assert_eq!(depth_first(&new, &[l, r], 60), None);
    }

    #[test]
    fn breadth_first_needs_three_failing_children_of_one_parent() {
        let p = node("p", "o", "dispatch", 0, &[]);
        let c1 = node("c1", "a", "error", 5, &["p"]);
        let c2 = node("c2", "a", "call_failed", 6, &["p"]);
        let ok = node("c3", "b", "call", 6, &["p"]);
        let new = node("c4", "b", "error", 7, &["p"]);
        assert_eq!(breadth_first(&new, &p, &[c1.clone(), ok.clone()], 60), None);
        let d = breadth_first(&new, &p, &[c1.clone(), c2.clone(), ok], 60).unwrap();
        assert_eq!(d.pattern, Pattern::BreadthFirst);
        assert_eq!(d.root_cause, "p");
        assert_eq!(d.affected_agents, ["spiffe://x/a", "spiffe://x/b"]);
        // Out of the window.
        assert_eq!(breadth_first(&new, &p, &[c1, c2], 1), None);
    }

    #[test]
    fn patterns_round_trip_their_names() {
        for p in [
            Pattern::ErrorClustering,
            Pattern::DepthFirst,
            Pattern::BreadthFirst,
        ] {
            assert_eq!(Pattern::parse(p.as_str()), Some(p));
        }
        assert_eq!(Pattern::parse("sideways"), None);
    }
}
