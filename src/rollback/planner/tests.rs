//! Planner tests: the seed's figure, nearest-checkpoint tie breaks, order on siblings, diamonds
//! and chains, flags, cycles, a large workflow, and properties on random DAGs against naive
//! searches.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

use super::*;
use crate::dag::{DagNode, WorkflowGraph};

const AGENT_A: &str = "spiffe://example.org/agent/a";
const AGENT_B: &str = "spiffe://example.org/agent/b";
const AGENT_C: &str = "spiffe://example.org/agent/c";

fn act(jti: &str, iss: &str, iat: i64, parents: &[&str]) -> DagNode {
    DagNode {
        jti: jti.into(),
        iss: iss.into(),
        exec_act: "act".into(),
        iat,
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        ext: None,
    }
}

fn obj(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn cp_ext(jti: &str, iss: &str, iat: i64, parents: &[&str], ext: Value) -> DagNode {
    DagNode {
        exec_act: "checkpoint".into(),
        ext: obj(ext),
        ..act(jti, iss, iat, parents)
    }
}

/// A reversible checkpoint with a one-hour TTL.
fn cp(jti: &str, iss: &str, iat: i64, parents: &[&str]) -> DagNode {
    cp_ext(
        jti,
        iss,
        iat,
        parents,
        json!({
            "cascade.reversible": true,
            "cascade.rollback_uri": format!("https://rb.example/{jti}"),
            "cascade.ttl": 3600,
        }),
    )
}

fn wf(nodes: Vec<DagNode>) -> WorkflowGraph {
    WorkflowGraph::from_nodes(Some("wf-1".into()), nodes)
}

/// The seed's figure: Checkpoint A -> A1 -> Checkpoint B -> B1, B2.
fn figure_nodes() -> Vec<DagNode> {
    vec![
        cp("A", AGENT_A, 1000, &[]),
        act("A1", AGENT_A, 1010, &["A"]),
        cp("B", AGENT_B, 1020, &["A1"]),
        act("B1", AGENT_B, 1030, &["B"]),
        act("B2", AGENT_B, 1040, &["B"]),
    ]
}

fn figure() -> WorkflowGraph {
    wf(figure_nodes())
}

fn chk(id: &str) -> Target {
    Target::Checkpoint(id.into())
}

fn trig(id: &str) -> Target {
    Target::Trigger(id.into())
}

/// `(checkpoint_id, rank)` of every step, in plan order.
fn order(plan: &Plan) -> Vec<(&str, u32)> {
    plan.steps
        .iter()
        .map(|s| (s.checkpoint_id.as_str(), s.rank))
        .collect()
}

fn waits<'a>(plan: &'a Plan, id: &str) -> Vec<&'a str> {
    plan.step(id)
        .unwrap()
        .waits_for
        .iter()
        .map(String::as_str)
        .collect()
}

// --- the seed's figure -------------------------------------------------------------------

#[test]
fn sub_dag_from_a_calls_b_then_a() {
    let plan = plan(&figure(), &chk("A"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.wid, "wf-1");
    assert_eq!(plan.checkpoint_id, "A");
    assert_eq!(plan.trigger_ect, None);
    assert_eq!(plan.scope, Scope::SubDag);
    assert_eq!(order(&plan), [("B", 0), ("A", 1)]);
    assert!(waits(&plan, "B").is_empty());
    assert_eq!(waits(&plan, "A"), ["B"]);
    assert_eq!(plan.critical_path, ["A"]);
    assert!(plan.step("A").unwrap().critical);
    assert!(!plan.step("B").unwrap().critical);
    assert_eq!(plan.agents(), [AGENT_A, AGENT_B]);
    let levels: Vec<Vec<&str>> = plan
        .levels()
        .iter()
        .map(|l| l.iter().map(|s| s.checkpoint_id.as_str()).collect())
        .collect();
    assert_eq!(levels, [vec!["B"], vec!["A"]]);
    let a = plan.step("A").unwrap();
    assert_eq!(a.agent, AGENT_A);
    assert_eq!(a.rollback_uri.as_deref(), Some("https://rb.example/A"));
    assert!(a.reversible && !a.expired);
}

#[test]
fn single_from_b_is_b_alone() {
    let plan = plan(&figure(), &chk("B"), Scope::Single, 0).unwrap();
    assert_eq!(order(&plan), [("B", 0)]);
    assert!(waits(&plan, "B").is_empty());
    assert_eq!(plan.critical_path, ["B"]);
    assert!(plan.step("B").unwrap().critical);
    assert_eq!(plan.step("A"), None);
}

#[test]
fn single_from_a_ignores_b_downstream() {
    let plan = plan(&figure(), &chk("A"), Scope::Single, 0).unwrap();
    assert_eq!(order(&plan), [("A", 0)]);
    assert!(waits(&plan, "A").is_empty());
}

#[test]
fn trigger_b1_resolves_to_b() {
    let g = figure();
    assert_eq!(nearest_checkpoint(&g, "B1").unwrap(), "B");
    let plan = plan(&g, &trig("B1"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "B");
    assert_eq!(plan.trigger_ect.as_deref(), Some("B1"));
    assert_eq!(order(&plan), [("B", 0)]);
    assert_eq!(plan.critical_path, ["B"]);
}

#[test]
fn trigger_a1_resolves_to_a_and_b_is_not_critical() {
    let g = figure();
    assert_eq!(nearest_checkpoint(&g, "A1").unwrap(), "A");
    let plan = plan(&g, &trig("A1"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "A");
    assert_eq!(order(&plan), [("B", 0), ("A", 1)]);
    // B is downstream of A but not upstream of A1.
    assert_eq!(plan.critical_path, ["A"]);
    assert!(!plan.step("B").unwrap().critical);
}

#[test]
fn trigger_b2_resolves_to_b_alone_on_the_critical_path() {
    let plan = plan(&figure(), &trig("B2"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "B");
    assert_eq!(plan.critical_path, ["B"]);
}

#[test]
fn trigger_that_is_a_checkpoint_is_its_own_start() {
    let g = figure();
    assert_eq!(nearest_checkpoint(&g, "B").unwrap(), "B");
    let plan = plan(&g, &trig("B"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "B");
    assert_eq!(plan.trigger_ect.as_deref(), Some("B"));
    assert_eq!(plan.critical_path, ["B"]);
}

#[test]
fn full_workflow_from_b_plans_both() {
    let plan = plan(&figure(), &chk("B"), Scope::FullWorkflow, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "B");
    assert_eq!(order(&plan), [("B", 0), ("A", 1)]);
    assert_eq!(waits(&plan, "A"), ["B"]);
    assert_eq!(plan.critical_path, ["B"]);
}

#[test]
fn trigger_of_agent_a_below_b_makes_a_and_b_critical() {
    let mut nodes = figure_nodes();
    nodes.push(act("X", AGENT_A, 1050, &["B1"]));
    let g = wf(nodes);
    assert_eq!(nearest_checkpoint(&g, "X").unwrap(), "A");

    let plan = plan(&g, &trig("X"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "A");
    assert_eq!(order(&plan), [("B", 0), ("A", 1)]);
    assert_eq!(plan.critical_path, ["A", "B"]);
    assert!(plan.steps.iter().all(|s| s.critical));

    let full = super::plan(&g, &trig("X"), Scope::FullWorkflow, 0).unwrap();
    assert_eq!(full.critical_path, ["A", "B"]);

    let single = super::plan(&g, &trig("X"), Scope::Single, 0).unwrap();
    assert_eq!(order(&single), [("A", 0)]);
    assert_eq!(single.critical_path, ["A"]);
}

#[test]
fn critical_path_excludes_a_branch_beside_the_trigger() {
    // A -> a1 -> B (b) -> b1 (trigger of agent a); A -> a2 -> C (c): C is downstream of A but
    // not upstream of the trigger.
    let g = wf(vec![
        cp("A", AGENT_A, 1, &[]),
        act("a1", AGENT_A, 2, &["A"]),
        cp("B", AGENT_B, 3, &["a1"]),
        act("b1", AGENT_A, 4, &["B"]),
        act("a2", AGENT_A, 2, &["A"]),
        cp("C", AGENT_C, 3, &["a2"]),
    ]);
    let plan = plan(&g, &trig("b1"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "A");
    assert_eq!(order(&plan), [("B", 0), ("C", 0), ("A", 1)]);
    assert_eq!(plan.critical_path, ["A", "B"]);
    assert!(!plan.step("C").unwrap().critical);
}

// --- nearest checkpoint ------------------------------------------------------------------

#[test]
fn nearest_prefers_fewest_hops_over_a_later_iat() {
    let g = wf(vec![
        cp("far", AGENT_A, 100, &[]),
        act("q", AGENT_A, 101, &["far"]),
        cp("near", AGENT_A, 5, &[]),
        act("x", AGENT_A, 200, &["near", "q"]),
    ]);
    assert_eq!(nearest_checkpoint(&g, "x").unwrap(), "near");
}

#[test]
fn nearest_breaks_a_hop_tie_by_latest_iat() {
    let g = wf(vec![
        cp("older", AGENT_A, 10, &[]),
        cp("newer", AGENT_A, 20, &[]),
        act("x", AGENT_A, 30, &["older", "newer"]),
    ]);
    assert_eq!(nearest_checkpoint(&g, "x").unwrap(), "newer");
}

#[test]
fn nearest_breaks_a_hop_and_iat_tie_by_smallest_jti() {
    let g = wf(vec![
        cp("c-b", AGENT_A, 10, &[]),
        cp("c-a", AGENT_A, 10, &[]),
        cp("c-c", AGENT_A, 10, &[]),
        act("x", AGENT_A, 30, &["c-b", "c-c", "c-a"]),
    ]);
    assert_eq!(nearest_checkpoint(&g, "x").unwrap(), "c-a");
}

#[test]
fn nearest_skips_another_agents_closer_checkpoint() {
    let g = wf(vec![
        cp("own", AGENT_A, 1, &[]),
        act("a1", AGENT_A, 2, &["own"]),
        cp("theirs", AGENT_B, 3, &["a1"]),
        act("x", AGENT_A, 4, &["theirs"]),
        act("y", AGENT_B, 4, &["theirs"]),
    ]);
    assert_eq!(nearest_checkpoint(&g, "x").unwrap(), "own");
    assert_eq!(nearest_checkpoint(&g, "y").unwrap(), "theirs");
}

#[test]
fn no_own_checkpoint_above_is_refused() {
    let g = wf(vec![
        cp("theirs", AGENT_B, 1, &[]),
        act("x", AGENT_A, 2, &["theirs"]),
        // An own checkpoint below the trigger does not count.
        cp("below", AGENT_A, 3, &["x"]),
    ]);
    let err = nearest_checkpoint(&g, "x").unwrap_err();
    assert_eq!(err, PlanError::NoCheckpointFound("x".into()));
    assert_eq!(err.code(), "no_checkpoint_found");
    let err = plan(&g, &trig("x"), Scope::SubDag, 0).unwrap_err();
    assert_eq!(err.code(), "no_checkpoint_found");
}

#[test]
fn unknown_trigger_is_not_found() {
    let err = nearest_checkpoint(&figure(), "nope").unwrap_err();
    assert_eq!(err, PlanError::NotFound("nope".into()));
    assert_eq!(err.code(), "not_found");
}

// --- errors ------------------------------------------------------------------------------

#[test]
fn checkpoint_id_of_an_action_is_not_a_checkpoint() {
    let err = plan(&figure(), &chk("A1"), Scope::SubDag, 0).unwrap_err();
    assert_eq!(err, PlanError::NotACheckpoint("A1".into()));
    assert_eq!(err.code(), "not_a_checkpoint");
    assert!(err.to_string().contains("A1"));
}

#[test]
fn unknown_jtis_are_not_found() {
    for target in [chk("nope"), trig("nope")] {
        for scope in [Scope::Single, Scope::SubDag, Scope::FullWorkflow] {
            let err = plan(&figure(), &target, scope, 0).unwrap_err();
            assert_eq!(err, PlanError::NotFound("nope".into()));
            assert_eq!(err.code(), "not_found");
        }
    }
}

#[test]
fn a_graph_without_wid_cannot_be_planned() {
    let g = WorkflowGraph::from_nodes(None, figure_nodes());
    for target in [chk("A"), trig("B1")] {
        let err = plan(&g, &target, Scope::SubDag, 0).unwrap_err();
        assert_eq!(err, PlanError::NotFound(target.jti().to_owned()));
    }
    // Resolving the checkpoint needs no workflow.
    assert_eq!(nearest_checkpoint(&g, "B1").unwrap(), "B");
}

// --- order -------------------------------------------------------------------------------

#[test]
fn sibling_checkpoints_have_no_order_between_them() {
    let g = wf(vec![
        cp("P", AGENT_A, 1, &[]),
        act("p1", AGENT_A, 2, &["P"]),
        act("p2", AGENT_A, 2, &["P"]),
        cp("C1", AGENT_B, 3, &["p1"]),
        cp("C2", AGENT_C, 3, &["p2"]),
    ]);
    let plan = plan(&g, &chk("P"), Scope::SubDag, 0).unwrap();
    assert_eq!(order(&plan), [("C1", 0), ("C2", 0), ("P", 1)]);
    assert!(waits(&plan, "C1").is_empty());
    assert!(waits(&plan, "C2").is_empty());
    assert_eq!(waits(&plan, "P"), ["C1", "C2"]);
    assert_eq!(plan.levels().len(), 2);
    assert_eq!(plan.levels()[0].len(), 2);
}

fn diamond(shortcut: bool) -> WorkflowGraph {
    let mut nodes = vec![
        cp("P", AGENT_A, 1, &[]),
        act("x1", AGENT_A, 2, &["P"]),
        act("x2", AGENT_A, 2, &["P"]),
        cp("C1", AGENT_B, 3, &["x1"]),
        cp("C2", AGENT_C, 3, &["x2"]),
        act("y1", AGENT_B, 4, &["C1"]),
        act("y2", AGENT_C, 4, &["C2"]),
        cp("D", AGENT_A, 5, &["y1", "y2"]),
        act("d1", AGENT_A, 6, &["D"]),
    ];
    if shortcut {
        nodes.push(act("s", AGENT_A, 2, &["P"]));
        nodes.push(cp("D2", AGENT_A, 7, &["s", "d1"]));
    }
    wf(nodes)
}

#[test]
fn diamond_waits_for_the_middle_only() {
    let plan = plan(&diamond(false), &chk("P"), Scope::SubDag, 0).unwrap();
    assert_eq!(order(&plan), [("D", 0), ("C1", 1), ("C2", 1), ("P", 2)]);
    assert_eq!(waits(&plan, "C1"), ["D"]);
    assert_eq!(waits(&plan, "C2"), ["D"]);
    assert_eq!(waits(&plan, "P"), ["C1", "C2"]);
}

#[test]
fn a_path_around_planned_checkpoints_makes_a_nearest_descendant() {
    // P -> s -> D2 passes no planned checkpoint, so P waits for D2 directly as well; D2 is
    // also below D, which keeps the ranks a longest chain.
    let plan = plan(&diamond(true), &chk("P"), Scope::SubDag, 0).unwrap();
    assert_eq!(
        order(&plan),
        [("D2", 0), ("D", 1), ("C1", 2), ("C2", 2), ("P", 3)]
    );
    assert_eq!(waits(&plan, "P"), ["C1", "C2", "D2"]);
    assert_eq!(waits(&plan, "D"), ["D2"]);
}

#[test]
fn rank_is_the_longest_chain_below() {
    // P -> C1 -> C3 -> C4 and P -> C2 (through actions).
    let g = wf(vec![
        cp("P", AGENT_A, 1, &[]),
        act("a", AGENT_A, 2, &["P"]),
        cp("C1", AGENT_B, 3, &["a"]),
        cp("C2", AGENT_B, 3, &["a"]),
        act("b", AGENT_B, 4, &["C1"]),
        cp("C3", AGENT_C, 5, &["b"]),
        cp("C4", AGENT_C, 6, &["C3"]),
    ]);
    let plan = plan(&g, &chk("P"), Scope::SubDag, 0).unwrap();
    assert_eq!(
        order(&plan),
        [("C2", 0), ("C4", 0), ("C3", 1), ("C1", 2), ("P", 3)]
    );
    assert_eq!(waits(&plan, "P"), ["C1", "C2"]);
    assert_eq!(waits(&plan, "C1"), ["C3"]);
    assert_eq!(waits(&plan, "C3"), ["C4"]);
}

#[test]
fn long_chain_ranks_count_down() {
    const N: usize = 300;
    let mut nodes = Vec::new();
    for i in 0..N {
        let parents: Vec<String> = if i == 0 {
            vec![]
        } else {
            vec![format!("a{:03}", i - 1)]
        };
        let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
        nodes.push(cp(&format!("c{i:03}"), AGENT_A, i as i64, &parents));
        nodes.push(act(
            &format!("a{i:03}"),
            AGENT_A,
            i as i64,
            &[&format!("c{i:03}")],
        ));
    }
    let plan = plan(&wf(nodes), &chk("c000"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.steps.len(), N);
    for i in 0..N {
        let step = plan.step(&format!("c{i:03}")).unwrap();
        assert_eq!(step.rank as usize, N - 1 - i);
        let expected: Vec<String> = if i + 1 < N {
            vec![format!("c{:03}", i + 1)]
        } else {
            vec![]
        };
        assert_eq!(step.waits_for, expected);
    }
    assert_eq!(plan.levels().len(), N);
}

#[test]
fn a_very_deep_chain_does_not_exhaust_the_stack() {
    const N: usize = 60_000;
    let mut nodes = vec![cp("n0", AGENT_A, 0, &[])];
    for i in 1..N {
        let parent = format!("n{}", i - 1);
        nodes.push(act(&format!("n{i}"), AGENT_A, 0, &[&parent]));
    }
    nodes.push(cp("last", AGENT_B, 0, &[&format!("n{}", N - 1)]));
    let plan = plan(&wf(nodes), &chk("n0"), Scope::SubDag, 0).unwrap();
    assert_eq!(order(&plan), [("last", 0), ("n0", 1)]);
}

// --- scope and flags ---------------------------------------------------------------------

#[test]
fn out_of_scope_checkpoints_never_appear() {
    // U -> u1 -> A -> a1 -> B, and u1 -> Z beside A.
    let g = wf(vec![
        cp("U", AGENT_A, 1, &[]),
        act("u1", AGENT_A, 2, &["U"]),
        cp("A", AGENT_B, 3, &["u1"]),
        act("a1", AGENT_B, 4, &["A"]),
        cp("B", AGENT_C, 5, &["a1"]),
        cp("Z", AGENT_C, 3, &["u1"]),
    ]);
    let sub = plan(&g, &chk("A"), Scope::SubDag, 0).unwrap();
    assert_eq!(order(&sub), [("B", 0), ("A", 1)]);
    assert_eq!(sub.step("U"), None);
    assert_eq!(sub.step("Z"), None);

    let full = plan(&g, &chk("A"), Scope::FullWorkflow, 0).unwrap();
    assert_eq!(order(&full), [("B", 0), ("Z", 0), ("A", 1), ("U", 2)]);
    assert_eq!(waits(&full, "U"), ["A", "Z"]);
    assert_eq!(full.critical_path, ["A"]);
}

#[test]
fn expired_and_irreversible_checkpoints_are_flagged() {
    let g = wf(vec![
        cp_ext(
            "ttl",
            AGENT_A,
            1000,
            &[],
            json!({"cascade.reversible": true, "cascade.rollback_uri": "https://rb.example/t", "cascade.ttl": 100}),
        ),
        act("t1", AGENT_A, 1001, &["ttl"]),
        cp_ext(
            "irr",
            AGENT_B,
            1002,
            &["t1"],
            json!({"cascade.reversible": false}),
        ),
        cp_ext(
            "bad",
            AGENT_B,
            1002,
            &["t1"],
            json!({"cascade.reversible": "yes"}),
        ),
        cp_ext("none", AGENT_B, 1002, &["t1"], Value::Null),
        cp_ext(
            "forever",
            AGENT_C,
            1002,
            &["t1"],
            json!({"cascade.reversible": true, "cascade.rollback_uri": "https://rb.example/f"}),
        ),
    ]);
    let before = plan(&g, &chk("ttl"), Scope::SubDag, 1099).unwrap();
    let at = plan(&g, &chk("ttl"), Scope::SubDag, 1100).unwrap();
    assert!(!before.step("ttl").unwrap().expired);
    assert!(at.step("ttl").unwrap().expired);
    assert!(at.step("ttl").unwrap().reversible);
    assert!(!at.step("forever").unwrap().expired);
    assert_eq!(
        at.step("forever").unwrap().rollback_uri.as_deref(),
        Some("https://rb.example/f")
    );
    for id in ["irr", "bad", "none"] {
        let step = at.step(id).unwrap();
        assert!(!step.reversible, "{id}");
        assert!(!step.expired, "{id}");
        assert_eq!(step.rollback_uri, None, "{id}");
        assert_eq!(step.agent, AGENT_B);
    }
    assert_eq!(waits(&at, "ttl"), ["bad", "forever", "irr", "none"]);
}

#[test]
fn scopes_order_by_breadth_and_use_wire_names() {
    assert!(Scope::Single < Scope::SubDag && Scope::SubDag < Scope::FullWorkflow);
    assert_eq!(Scope::default(), Scope::SubDag);
    for (scope, breadth) in [
        (Scope::Single, 0),
        (Scope::SubDag, 1),
        (Scope::FullWorkflow, 2),
    ] {
        assert_eq!(scope.breadth(), breadth);
        assert_eq!(serde_json::to_value(scope).unwrap(), json!(scope.as_str()));
        let back: Scope = serde_json::from_value(json!(scope.as_str())).unwrap();
        assert_eq!(back, scope);
    }
    assert_eq!(Scope::SubDag.as_str(), "sub_dag");
}

#[test]
fn plans_round_trip_through_json() {
    let plan = plan(&figure(), &trig("B1"), Scope::FullWorkflow, 0).unwrap();
    let text = serde_json::to_string(&plan).unwrap();
    let back: Plan = serde_json::from_str(&text).unwrap();
    assert_eq!(back, plan);
    assert_eq!(
        serde_json::to_value(&plan).unwrap()["scope"],
        json!("full_workflow")
    );
}

#[test]
fn a_cycle_in_stored_data_still_terminates() {
    // R -> X, and X <-> Y: a cycle the ledger would never store.
    let g = wf(vec![
        cp("R", AGENT_A, 1, &[]),
        cp("X", AGENT_B, 2, &["R", "Y"]),
        cp("Y", AGENT_C, 3, &["X"]),
        act("p", AGENT_A, 4, &["q"]),
        act("q", AGENT_A, 4, &["p"]),
    ]);
    for scope in [Scope::SubDag, Scope::FullWorkflow] {
        let plan = plan(&g, &chk("R"), scope, 0).unwrap();
        let ids: BTreeSet<&str> = plan
            .steps
            .iter()
            .map(|s| s.checkpoint_id.as_str())
            .collect();
        assert_eq!(ids, BTreeSet::from(["R", "X", "Y"]));
        for step in &plan.steps {
            assert!(!step.waits_for.contains(&step.checkpoint_id));
            for w in &step.waits_for {
                assert!(plan.step(w).unwrap().rank < step.rank);
            }
        }
        assert_eq!(plan.step("R").unwrap().rank, 2);
    }
    let plan = plan(&g, &trig("Y"), Scope::SubDag, 0).unwrap();
    assert_eq!(plan.checkpoint_id, "Y");
    assert_eq!(
        nearest_checkpoint(&g, "p").unwrap_err().code(),
        "no_checkpoint_found"
    );
}

// --- a large workflow --------------------------------------------------------------------

/// A deterministic 10,000-node workflow with 1,000 checkpoints, every node reachable from the
/// first. Each node has one parent among the 60 before it, plus up to two more when `dense`
/// (then most checkpoints can be reached around others, and `waits_for` lists are long).
fn large_workflow(dense: bool) -> WorkflowGraph {
    const N: usize = 10_000;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let agents: Vec<String> = (0..7)
        .map(|i| format!("spiffe://example.org/agent/{i}"))
        .collect();
    let mut nodes = Vec::with_capacity(N);
    for i in 0..N {
        let mut parents = Vec::new();
        if i > 0 {
            let extra = if dense {
                next() % 3
            } else {
                usize::from(next() % 10 == 0)
            };
            for _ in 0..1 + extra {
                let back = 1 + next() % i.min(60);
                parents.push(format!("n{}", i - back));
            }
        }
        let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
        let iss = &agents[next() % agents.len()];
        let jti = format!("n{i}");
        nodes.push(if i % 10 == 0 {
            cp(&jti, iss, i as i64, &parents)
        } else {
            act(&jti, iss, i as i64, &parents)
        });
    }
    wf(nodes)
}

fn assert_consistent(plan: &Plan) {
    let ranks: BTreeMap<&str, u32> = plan
        .steps
        .iter()
        .map(|s| (s.checkpoint_id.as_str(), s.rank))
        .collect();
    assert_eq!(ranks.len(), plan.steps.len(), "distinct steps");
    for pair in plan.steps.windows(2) {
        assert!((pair[0].rank, &pair[0].checkpoint_id) < (pair[1].rank, &pair[1].checkpoint_id));
    }
    for step in &plan.steps {
        let below: Vec<u32> = step.waits_for.iter().map(|w| ranks[w.as_str()]).collect();
        assert_eq!(step.rank, below.iter().max().map_or(0, |r| r + 1));
        assert!(step.waits_for.windows(2).all(|w| w[0] < w[1]));
    }
    let mut sorted = plan.critical_path.clone();
    sorted.sort();
    assert_eq!(sorted, plan.critical_path);
    for id in &plan.critical_path {
        assert!(plan.step(id).unwrap().critical);
    }
    assert_eq!(
        plan.steps.iter().filter(|s| s.critical).count(),
        plan.critical_path.len()
    );
    let levels = plan.levels();
    assert!(levels.iter().all(|l| !l.is_empty()));
    assert_eq!(levels.iter().map(Vec::len).sum::<usize>(), plan.steps.len());
}

#[test]
fn plans_a_thousand_checkpoints_in_ten_thousand_nodes() {
    for dense in [false, true] {
        plan_large(&large_workflow(dense));
    }
}

fn plan_large(g: &WorkflowGraph) {
    let sub = plan(g, &chk("n0"), Scope::SubDag, 0).unwrap();
    assert_eq!(sub.steps.len(), 1_000);
    assert_consistent(&sub);
    assert_eq!(sub.steps.last().unwrap().checkpoint_id, "n0");

    let full = plan(g, &chk("n5000"), Scope::FullWorkflow, 0).unwrap();
    assert_eq!(full.steps.len(), 1_000);
    assert_consistent(&full);

    let triggered = plan(g, &trig("n9999"), Scope::SubDag, 0).unwrap();
    assert_consistent(&triggered);
    assert!(triggered.critical_path.contains(&triggered.checkpoint_id));
}

// --- properties --------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct GenNode {
    parents: Vec<usize>,
    agent: usize,
    checkpoint: bool,
    iat: i64,
    ttl: Option<u32>,
}

fn gen_node(i: usize) -> impl Strategy<Value = GenNode> {
    let parents = if i == 0 {
        Just(Vec::new()).boxed()
    } else {
        proptest::collection::vec(0..i, 0..4).boxed()
    };
    (
        parents,
        0usize..3,
        proptest::bool::weighted(0.3),
        0i64..20,
        proptest::option::of(1u32..30),
    )
        .prop_map(|(parents, agent, checkpoint, iat, ttl)| GenNode {
            parents,
            agent,
            checkpoint,
            iat,
            ttl,
        })
}

fn gen_dag() -> impl Strategy<Value = Vec<GenNode>> {
    (1usize..40).prop_flat_map(|n| (0..n).map(gen_node).collect::<Vec<_>>())
}

fn jti(i: usize) -> String {
    format!("n{i:02}")
}

fn build(dag: &[GenNode]) -> WorkflowGraph {
    let nodes = dag
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let parents: Vec<String> = g.parents.iter().map(|&p| jti(p)).collect();
            let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
            let iss = format!("agent-{}", g.agent);
            if g.checkpoint {
                let mut ext = json!({"cascade.reversible": true, "cascade.rollback_uri": "https://rb.example/x"});
                if let Some(ttl) = g.ttl {
                    ext["cascade.ttl"] = json!(ttl);
                }
                cp_ext(&jti(i), &iss, g.iat, &parents, ext)
            } else {
                act(&jti(i), &iss, g.iat, &parents)
            }
        })
        .collect();
    wf(nodes)
}

/// `reach[i]`: every node strictly downstream of `i`, by a naive fixpoint over parent lists.
fn descendants(dag: &[GenNode]) -> Vec<BTreeSet<usize>> {
    let n = dag.len();
    let mut ancestors: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for i in 0..n {
        for &p in &dag[i].parents {
            let above = ancestors[p].clone();
            ancestors[i].insert(p);
            ancestors[i].extend(above);
        }
    }
    let mut down = vec![BTreeSet::new(); n];
    for (i, above) in ancestors.iter().enumerate() {
        for &a in above {
            down[a].insert(i);
        }
    }
    down
}

/// The naive nearest own checkpoint: breadth-first over parents, all candidates at each
/// distance, then the tie breaks.
fn naive_nearest(dag: &[GenNode], t: usize) -> Option<usize> {
    if dag[t].checkpoint {
        return Some(t);
    }
    let mut dist = vec![usize::MAX; dag.len()];
    dist[t] = 0;
    let mut queue = VecDeque::from([t]);
    while let Some(v) = queue.pop_front() {
        for &p in &dag[v].parents {
            if dist[p] == usize::MAX {
                dist[p] = dist[v] + 1;
                queue.push_back(p);
            }
        }
    }
    (0..dag.len())
        .filter(|&i| {
            i != t && dist[i] != usize::MAX && dag[i].checkpoint && dag[i].agent == dag[t].agent
        })
        .min_by_key(|&i| (dist[i], std::cmp::Reverse(dag[i].iat), jti(i)))
}

/// Planned checkpoints reachable from `s` through unplanned nodes only.
fn naive_nearest_planned(dag: &[GenNode], planned: &BTreeSet<usize>, s: usize) -> BTreeSet<usize> {
    let children: Vec<Vec<usize>> = (0..dag.len())
        .map(|v| {
            (0..dag.len())
                .filter(|&c| dag[c].parents.contains(&v))
                .collect()
        })
        .collect();
    let mut seen = BTreeSet::from([s]);
    let mut found = BTreeSet::new();
    let mut stack = vec![s];
    while let Some(v) = stack.pop() {
        for &c in &children[v] {
            if !seen.insert(c) {
                continue;
            }
            if planned.contains(&c) {
                found.insert(c);
            } else {
                stack.push(c);
            }
        }
    }
    found
}

fn index_of(id: &str) -> usize {
    id[1..].parse().unwrap()
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::Single),
        Just(Scope::SubDag),
        Just(Scope::FullWorkflow)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn plans_match_naive_searches(
        dag in gen_dag(),
        at in any::<Index>(),
        use_trigger in any::<bool>(),
        scope in scope(),
        now in 0i64..60,
    ) {
        let g = build(&dag);
        let n = dag.len();
        let t = at.index(n);
        let down = descendants(&dag);
        let target = if use_trigger { trig(&jti(t)) } else { chk(&jti(t)) };

        let expected_root = if use_trigger {
            naive_nearest(&dag, t)
        } else {
            dag[t].checkpoint.then_some(t)
        };
        let result = plan(&g, &target, scope, now);
        let Some(root) = expected_root else {
            let code = if use_trigger { "no_checkpoint_found" } else { "not_a_checkpoint" };
            prop_assert_eq!(result.unwrap_err().code(), code);
            return Ok(());
        };
        let plan = result.unwrap();
        prop_assert_eq!(&plan.checkpoint_id, &jti(root));
        prop_assert_eq!(plan.trigger_ect.clone(), use_trigger.then(|| jti(t)));
        prop_assert_eq!(plan.wid.as_str(), "wf-1");

        let checkpoints: BTreeSet<usize> = (0..n).filter(|&i| dag[i].checkpoint).collect();
        let expected_steps: BTreeSet<usize> = match scope {
            Scope::Single => BTreeSet::from([root]),
            Scope::SubDag => checkpoints
                .iter()
                .copied()
                .filter(|&c| c == root || down[root].contains(&c))
                .collect(),
            Scope::FullWorkflow => checkpoints.clone(),
        };
        let planned: BTreeSet<usize> =
            plan.steps.iter().map(|s| index_of(&s.checkpoint_id)).collect();
        prop_assert_eq!(&planned, &expected_steps);
        prop_assert_eq!(planned.len(), plan.steps.len());

        let rank_of: BTreeMap<usize, u32> =
            plan.steps.iter().map(|s| (index_of(&s.checkpoint_id), s.rank)).collect();
        for step in &plan.steps {
            let s = index_of(&step.checkpoint_id);
            let planned_below: BTreeSet<usize> =
                down[s].intersection(&planned).copied().collect();
            if scope == Scope::Single {
                prop_assert!(step.waits_for.is_empty());
                prop_assert_eq!(step.rank, 0);
                continue;
            }
            // Every planned descendant runs strictly earlier.
            for d in &planned_below {
                prop_assert!(rank_of[d] < step.rank);
            }
            // waits_for: planned descendants, exactly the nearest ones.
            let waits: BTreeSet<usize> = step.waits_for.iter().map(|w| index_of(w)).collect();
            prop_assert!(waits.is_subset(&planned_below));
            prop_assert_eq!(&waits, &naive_nearest_planned(&dag, &planned, s));
            // Its transitive closure is every planned descendant.
            let mut closure = BTreeSet::new();
            let mut stack: Vec<usize> = waits.iter().copied().collect();
            while let Some(w) = stack.pop() {
                if closure.insert(w) {
                    let next = plan.step(&jti(w)).unwrap();
                    stack.extend(next.waits_for.iter().map(|x| index_of(x)));
                }
            }
            prop_assert_eq!(&closure, &planned_below);
            prop_assert_eq!(step.rank == 0, step.waits_for.is_empty());
            // Rank is the longest chain below (one more than the highest rank waited for).
            let highest = waits.iter().map(|w| rank_of[w] + 1).max().unwrap_or(0);
            prop_assert_eq!(step.rank, highest);

            let g_node = &dag[s];
            prop_assert_eq!(&step.agent, &format!("agent-{}", g_node.agent));
            prop_assert_eq!(
                step.expired,
                g_node.ttl.is_some_and(|ttl| now >= g_node.iat + i64::from(ttl))
            );
        }

        let expected_critical: BTreeSet<usize> = if use_trigger {
            planned
                .iter()
                .copied()
                .filter(|&c| (c == root || down[root].contains(&c)) && (c == t || down[c].contains(&t)))
                .collect()
        } else {
            BTreeSet::from([root])
        };
        let critical: BTreeSet<usize> = plan.critical_path.iter().map(|c| index_of(c)).collect();
        prop_assert_eq!(&critical, &expected_critical);
        for step in &plan.steps {
            prop_assert_eq!(step.critical, critical.contains(&index_of(&step.checkpoint_id)));
        }
        assert_consistent(&plan);
    }

    #[test]
    fn nearest_checkpoint_matches_a_naive_search(dag in gen_dag(), at in any::<Index>()) {
        let g = build(&dag);
        let t = at.index(dag.len());
        match naive_nearest(&dag, t) {
            Some(c) => prop_assert_eq!(nearest_checkpoint(&g, &jti(t)).unwrap(), jti(c)),
            None => prop_assert_eq!(
                nearest_checkpoint(&g, &jti(t)).unwrap_err(),
                PlanError::NoCheckpointFound(jti(t))
            ),
        }
    }
}
