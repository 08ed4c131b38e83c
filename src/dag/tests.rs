//! Unit tests: the seed's figure, checkpoint views, batch ordering and escaping.

use petgraph::Direction;
use serde_json::{Map, Value, json};

use super::render::{issuer_label, push_dot_escaped, push_mermaid_escaped};
use super::*;

fn node(jti: &str, iss: &str, exec_act: &str, iat: i64, parents: &[&str]) -> DagNode {
    DagNode {
        jti: jti.into(),
        iss: iss.into(),
        exec_act: exec_act.into(),
        iat,
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        ext: None,
    }
}

fn ext(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn checkpoint(jti: &str, iss: &str, iat: i64, parents: &[&str], e: Value) -> DagNode {
    DagNode {
        ext: ext(e),
        ..node(jti, iss, "checkpoint", iat, parents)
    }
}

/// The seed's figure: Checkpoint A -> A1 -> Checkpoint B -> B1, B2.
fn figure() -> WorkflowGraph {
    let nodes = vec![
        checkpoint(
            "A",
            "spiffe://example.org/agent/a",
            1000,
            &[],
            json!({"cascade.reversible": true, "cascade.rollback_uri": "https://a.example/rb", "cascade.ttl": 3600}),
        ),
        node("A1", "spiffe://example.org/agent/a", "act", 1010, &["A"]),
        checkpoint(
            "B",
            "spiffe://example.org/agent/b",
            1020,
            &["A1"],
            json!({"cascade.reversible": false}),
        ),
        node("B1", "spiffe://example.org/agent/b", "act", 1030, &["B"]),
        node(
            "B2",
            "spiffe://example.org/agent/c",
            "write_failed",
            1040,
            &["B"],
        ),
    ];
    WorkflowGraph::from_nodes(Some("wf-1".into()), nodes)
}

#[test]
fn blast_radius_of_the_first_checkpoint_is_the_whole_figure() {
    let g = figure();
    let br = g.blast_radius("A", None, 0).unwrap();
    assert_eq!(br.root, "A");
    assert_eq!(br.wid.as_deref(), Some("wf-1"));
    assert_eq!(br.nodes, ["A", "A1", "B", "B1", "B2"]);
    assert_eq!(
        br.agents,
        [
            "spiffe://example.org/agent/a",
            "spiffe://example.org/agent/b",
            "spiffe://example.org/agent/c"
        ]
    );
    assert_eq!(br.depth, 3);
    let ids: Vec<_> = br.checkpoints.iter().map(|c| c.jti.as_str()).collect();
    assert_eq!(ids, ["A", "B"]);
    assert_eq!(br.irreversible, ["B"]);
    let a = &br.checkpoints[0];
    assert!(a.reversible);
    assert_eq!(a.rollback_uri.as_deref(), Some("https://a.example/rb"));
    assert_eq!(a.expires_at.as_deref(), Some("1970-01-01T01:16:40Z"));
    assert!(!a.expired);
    let b = &br.checkpoints[1];
    assert_eq!(b.agent, "spiffe://example.org/agent/b");
    assert_eq!((b.expires_at.as_deref(), b.expired), (None, false));
}

#[test]
fn blast_radius_of_the_second_checkpoint_is_b_and_its_children() {
    let br = figure().blast_radius("B", None, 0).unwrap();
    assert_eq!(br.nodes, ["B", "B1", "B2"]);
    assert_eq!(br.depth, 1);
    assert_eq!(br.irreversible, ["B"]);
    assert_eq!(
        br.agents,
        [
            "spiffe://example.org/agent/b",
            "spiffe://example.org/agent/c"
        ]
    );
}

#[test]
fn blast_radius_respects_max_depth() {
    let g = figure();
    let br = g.blast_radius("A", Some(0), 0).unwrap();
    assert_eq!((br.nodes.as_slice(), br.depth), (&["A".to_owned()][..], 0));
    let br = g.blast_radius("A", Some(2), 0).unwrap();
    assert_eq!(br.nodes, ["A", "A1", "B"]);
    assert_eq!(br.depth, 2);
    let br = g.blast_radius("A", Some(10), 0).unwrap();
    assert_eq!(br.depth, 3);
    let leaf = g.blast_radius("B2", None, 0).unwrap();
    assert_eq!((leaf.nodes.len(), leaf.depth), (1, 0));
    assert!(leaf.checkpoints.is_empty());
}

#[test]
fn unknown_root_has_no_blast_radius() {
    let g = figure();
    assert!(g.blast_radius("nope", None, 0).is_none());
    assert!(g.descendants("nope").is_none());
    assert!(g.ancestors("nope").is_none());
    assert!(g.distances("nope", Direction::Incoming).is_none());
    assert!(
        WorkflowGraph::from_nodes(None, vec![])
            .blast_radius("A", None, 0)
            .is_none()
    );
}

#[test]
fn checkpoint_expires_exactly_at_iat_plus_ttl() {
    let g = figure();
    // A: iat 1000, ttl 3600 -> expires at 4600.
    let at = |now| g.blast_radius("A", Some(0), now).unwrap().checkpoints[0].expired;
    assert!(!at(4599));
    assert!(at(4600));
    assert!(at(4601));
}

#[test]
fn fractional_ttl_rounds_up_and_bad_ext_is_irreversible() {
    let nodes = vec![
        checkpoint(
            "c1",
            "a",
            100,
            &[],
            json!({"cascade.reversible": true, "cascade.rollback_uri": "https://x/rb", "cascade.ttl": 0.5}),
        ),
        // Reversible without a rollback URI: not a valid checkpoint.
        checkpoint("c2", "a", 100, &["c1"], json!({"cascade.reversible": true})),
        // No ext at all.
        node("c3", "a", "checkpoint", 100, &["c2"]),
    ];
    let g = WorkflowGraph::from_nodes(None, nodes);
    let br = g.blast_radius("c1", None, 100).unwrap();
    assert_eq!(
        br.checkpoints[0].expires_at.as_deref(),
        Some("1970-01-01T00:01:41Z")
    );
    assert!(!br.checkpoints[0].expired);
    for c in &br.checkpoints[1..] {
        assert!(!c.reversible);
        assert_eq!(
            (c.rollback_uri.as_deref(), c.expires_at.as_deref()),
            (None, None)
        );
    }
    assert_eq!(br.irreversible, ["c2", "c3"]);
}

#[test]
fn ancestors_and_descendants_are_nearest_first_without_the_start() {
    let g = figure();
    assert_eq!(g.descendants("A").unwrap(), ["A1", "B", "B1", "B2"]);
    assert_eq!(g.descendants("B1").unwrap(), Vec::<String>::new());
    assert_eq!(g.ancestors("B2").unwrap(), ["B", "A1", "A"]);
    assert_eq!(g.ancestors("A").unwrap(), Vec::<String>::new());
    let d: Vec<_> = g
        .distances("B1", Direction::Incoming)
        .unwrap()
        .into_iter()
        .map(|(n, d)| (n.jti.as_str(), d))
        .collect();
    assert_eq!(d, [("B1", 0), ("B", 1), ("A1", 2), ("A", 3)]);
}

#[test]
fn from_nodes_ignores_unknown_parents_duplicate_parents_and_duplicate_jtis() {
    let nodes = vec![
        node("b", "x", "act", 2, &["a", "ghost", "a"]),
        node("a", "x", "act", 1, &[]),
        node("a", "y", "act", 9, &["b"]),
    ];
    let g = WorkflowGraph::from_nodes(None, nodes);
    assert_eq!(g.len(), 2);
    assert!(!g.is_empty());
    assert_eq!(g.node("a").unwrap().iss, "x");
    assert!(g.node("ghost").is_none());
    assert!(g.contains("b"));
    assert_eq!(g.edges().collect::<Vec<_>>(), [("a", "b")]);
    assert_eq!(g.edge_count(), 1);
    assert_eq!(g.nodes()[0].jti, "b");
    assert_eq!(g.wid(), None);
}

#[test]
fn cycles_in_stored_data_do_not_hang_traversals() {
    let nodes = vec![
        node("a", "x", "act", 1, &["c"]),
        node("b", "x", "act", 1, &["a"]),
        node("c", "x", "act", 1, &["b", "c"]),
    ];
    let g = WorkflowGraph::from_nodes(None, nodes);
    let br = g.blast_radius("a", None, 0).unwrap();
    assert_eq!(br.nodes, ["a", "b", "c"]);
    assert_eq!(br.depth, 2);
    assert_eq!(g.ancestors("a").unwrap(), ["c", "b"]);
}

#[test]
fn json_lists_nodes_and_parent_to_child_edges() {
    let json = serde_json::to_value(figure().to_json()).unwrap();
    assert_eq!(json["wid"], "wf-1");
    assert_eq!(
        json["nodes"][1],
        json!({"jti": "A1", "iss": "spiffe://example.org/agent/a", "exec_act": "act", "iat": 1010})
    );
    assert_eq!(json["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(
        json["edges"],
        json!([
            {"from": "A", "to": "A1"},
            {"from": "A1", "to": "B"},
            {"from": "B", "to": "B1"},
            {"from": "B", "to": "B2"}
        ])
    );
    let none = serde_json::to_value(WorkflowGraph::from_nodes(None, vec![]).to_json()).unwrap();
    assert_eq!(none, json!({"wid": null, "nodes": [], "edges": []}));
}

#[test]
fn dot_of_the_figure() {
    let dot = figure().to_dot();
    let expected = r#"digraph "wf-1" {
  node [shape=ellipse];
  "A" [label="checkpoint\nspiffe://example.org/agent/a", shape=box];
  "A1" [label="act\nspiffe://example.org/agent/a"];
  "B" [label="checkpoint\nspiffe://example.org/agent/b", shape=box];
  "B1" [label="act\nspiffe://example.org/agent/b"];
  "B2" [label="write_failed\nspiffe://example.org/agent/c", color=red, fontcolor=red];
  "A" -> "A1";
  "A1" -> "B";
  "B" -> "B1";
  "B" -> "B2";
}
"#;
    assert_eq!(dot, expected);
    assert!(
        WorkflowGraph::from_nodes(None, vec![])
            .to_dot()
            .starts_with("digraph workflow {")
    );
}

#[test]
fn mermaid_of_the_figure() {
    let mermaid = figure().to_mermaid();
    let expected = "flowchart TD
  n0[\"checkpoint<br/>A<br/>spiffe://example.org/agent/a\"]:::checkpoint
  n1(\"act<br/>A1<br/>spiffe://example.org/agent/a\")
  n2[\"checkpoint<br/>B<br/>spiffe://example.org/agent/b\"]:::checkpoint
  n3(\"act<br/>B1<br/>spiffe://example.org/agent/b\")
  n4(\"write_failed<br/>B2<br/>spiffe://example.org/agent/c\"):::error
  n0 --> n1
  n1 --> n2
  n2 --> n3
  n2 --> n4
  classDef checkpoint fill:#e8f0fe,stroke:#1a73e8;
  classDef error fill:#fde8e8,stroke:#d93025,color:#d93025;
";
    assert_eq!(mermaid, expected);
}

fn dot_escaped(s: &str) -> String {
    let mut out = String::new();
    push_dot_escaped(&mut out, s);
    out
}

fn mermaid_escaped(s: &str) -> String {
    let mut out = String::new();
    push_mermaid_escaped(&mut out, s);
    out
}

#[test]
fn dot_escaping_rules() {
    assert_eq!(dot_escaped("plain-id_1.2"), "plain-id_1.2");
    assert_eq!(dot_escaped(r#"a"b"#), r#"a\"b"#);
    assert_eq!(dot_escaped(r"a\b"), r"a\\b");
    // A trailing backslash must not swallow the closing quote.
    assert_eq!(dot_escaped("x\\"), "x\\\\");
    assert_eq!(dot_escaped("x\\\""), "x\\\\\\\"");
    assert_eq!(dot_escaped("l1\nl2"), r"l1\nl2");
    // A literal backslash-n stays distinct from a line feed.
    assert_eq!(dot_escaped(r"l1\nl2"), r"l1\\nl2");
    assert_eq!(dot_escaped("a\rb\0"), r"a\x0db\x00");
    assert_eq!(dot_escaped("{ } -> ; [ ]"), "{ } -> ; [ ]");
    assert_eq!(dot_escaped("é→"), "é→");
}

#[test]
fn mermaid_escaping_rules() {
    assert_eq!(mermaid_escaped("plain-id_1.2"), "plain-id_1.2");
    assert_eq!(mermaid_escaped(r#"a"b"#), "a#quot;b");
    assert_eq!(mermaid_escaped("#quot;"), "#35;quot;");
    assert_eq!(mermaid_escaped("a-->b"), "a--#gt;b");
    assert_eq!(mermaid_escaped("<b>&"), "#lt;b#gt;#amp;");
    assert_eq!(mermaid_escaped("`md`"), "#96;md#96;");
    assert_eq!(mermaid_escaped("l1\nl2\r"), "l1#65533;l2#65533;");
    assert_eq!(mermaid_escaped("{[()]}|;"), "{[()]}|;");
}

#[test]
fn issuer_labels_show_the_whole_id_and_shorten_only_visibly() {
    for id in [
        "spiffe://example.org/agent/a",
        "spiffe://evil.example/agent/a",
        "spiffe://example.com/agent/../admin",
        "urn:agent:planner",
        "",
    ] {
        assert_eq!(issuer_label(id), id);
    }
    let long = format!("spiffe://example.org/{}/router", "team/".repeat(20));
    let label = issuer_label(&long);
    assert_eq!(label.chars().count(), 63, "{label}");
    assert!(label.starts_with("spiffe://example.org/") && label.ends_with("/router"));
    assert!(label.contains('…'), "{label}");
}

fn batch(items: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    items
        .iter()
        .map(|(j, ps)| {
            (
                (*j).to_owned(),
                ps.iter().map(|p| (*p).to_owned()).collect(),
            )
        })
        .collect()
}

#[test]
fn order_batch_puts_parents_first_and_keeps_input_order_among_ready_items() {
    let items = batch(&[("c", &["b"]), ("x", &["stored"]), ("b", &["a"]), ("a", &[])]);
    let order = order_batch(&items);
    assert_eq!(order.order, [1, 3, 2, 0]);
    assert!(order.cyclic.is_empty());

    let sorted = batch(&[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])]);
    assert_eq!(order_batch(&sorted).order, [0, 1, 2]);
    assert_eq!(order_batch(&[]), BatchOrder::default());
}

#[test]
fn order_batch_reports_cycles_and_what_hangs_below_them() {
    let items = batch(&[
        ("a", &["c"]),
        ("b", &["a"]),
        ("c", &["b"]),
        ("d", &["c"]),
        ("e", &[]),
        ("s", &["s"]),
    ]);
    let order = order_batch(&items);
    assert_eq!(order.order, [4]);
    assert_eq!(order.cyclic, [0, 1, 2, 3, 5]);
}

#[test]
fn order_batch_tolerates_duplicates() {
    // The second "a" is its own item; "b" waits only for the first one.
    let items = batch(&[("b", &["a", "a"]), ("a", &[]), ("a", &["b"])]);
    let order = order_batch(&items);
    assert_eq!(order.order, [1, 0, 2]);
    assert!(order.cyclic.is_empty());
}
