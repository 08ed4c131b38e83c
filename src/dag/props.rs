//! Property tests: blast radius against a naive fixpoint search, batch ordering on shuffled and
//! cyclic batches, and renderings of graphs with hostile jtis, parsed back.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::Direction;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

use super::render::issuer_label;
use super::*;

const ISSUERS: [&str; 5] = [
    "spiffe://example.org/agent/a",
    "spiffe://example.org/agent/b",
    "b\"\\\n-->",
    "urn:x:c{}#quot;<br/>",
    "`md`&;|%%",
];

#[derive(Debug, Clone)]
struct GenNode {
    jti: String,
    /// Indices of lower-numbered nodes, so the generated graph is acyclic.
    parents: Vec<usize>,
    /// A parent that is not in the workflow.
    ghost_parent: bool,
    iss: usize,
    kind: Kind,
    iat: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Act,
    Error,
    Checkpoint {
        reversible: bool,
        ttl: Option<u32>,
        malformed: bool,
    },
}

impl GenNode {
    fn exec_act(&self) -> &'static str {
        match self.kind {
            Kind::Act => "act\"{x}",
            Kind::Error => "tool_failed",
            Kind::Checkpoint { .. } => "checkpoint",
        }
    }

    fn ext(&self) -> Option<Map<String, Value>> {
        let Kind::Checkpoint {
            reversible,
            ttl,
            malformed,
        } = self.kind
        else {
            return None;
        };
        let mut ext = Map::new();
        if malformed {
            ext.insert("cascade.reversible".into(), json!("yes"));
            return Some(ext);
        }
        ext.insert("cascade.reversible".into(), json!(reversible));
        if reversible {
            ext.insert("cascade.rollback_uri".into(), json!("https://rb.example/x"));
        }
        if let Some(ttl) = ttl {
            ext.insert("cascade.ttl".into(), json!(ttl));
        }
        Some(ext)
    }

    /// What a blast radius should say about this checkpoint: (reversible, expires at).
    fn expected_checkpoint(&self) -> Option<(bool, Option<i64>)> {
        match self.kind {
            Kind::Checkpoint {
                reversible,
                ttl,
                malformed,
            } => Some(if malformed {
                (false, None)
            } else {
                (reversible, ttl.map(|t| self.iat + i64::from(t)))
            }),
            _ => None,
        }
    }
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{0,4}",
        "[a-z\"\\\\\n\r{}\\[\\]<>#;&`:|%() -]{0,8}",
        Just("-->".to_owned()),
        Just("\"] ; x [\"".to_owned()),
        Just("\\".to_owned()),
        Just("#quot;".to_owned()),
        Just("}\ndigraph {".to_owned()),
        Just("end".to_owned()),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Act),
        1 => Just(Kind::Error),
        2 => (any::<bool>(), proptest::option::of(1u32..50), proptest::bool::weighted(0.2))
            .prop_map(|(reversible, ttl, malformed)| Kind::Checkpoint { reversible, ttl, malformed }),
    ]
}

fn gen_node(i: usize) -> impl Strategy<Value = GenNode> {
    let parents = if i == 0 {
        Just(Vec::new()).boxed()
    } else {
        proptest::collection::vec(0..i, 0..4).boxed()
    };
    (
        hostile_text(),
        parents,
        proptest::bool::weighted(0.1),
        0..ISSUERS.len(),
        kind(),
        0i64..40,
    )
        .prop_map(
            move |(text, parents, ghost_parent, iss, kind, iat)| GenNode {
                // '·' never occurs in the generated text, so the suffix keeps jtis distinct.
                jti: format!("{text}·{i}"),
                parents,
                ghost_parent,
                iss,
                kind,
                iat,
            },
        )
}

fn gen_dag(max: usize) -> impl Strategy<Value = Vec<GenNode>> {
    (1..max).prop_flat_map(|n| (0..n).map(gen_node).collect::<Vec<_>>())
}

fn to_dag_nodes(gen_nodes: &[GenNode]) -> Vec<DagNode> {
    gen_nodes
        .iter()
        .map(|g| {
            let mut parents: Vec<String> = g
                .parents
                .iter()
                .map(|&p| gen_nodes[p].jti.clone())
                .collect();
            if g.ghost_parent {
                parents.push("ghost·".into());
            }
            DagNode {
                jti: g.jti.clone(),
                iss: ISSUERS[g.iss].to_owned(),
                exec_act: g.exec_act().to_owned(),
                iat: g.iat,
                parents,
                ext: g.ext(),
            }
        })
        .collect()
}

/// Shortest distances from `root` along parent -> child edges (or child -> parent when
/// `backward`), by relaxing every edge until nothing changes.
fn naive_distances(gen_nodes: &[GenNode], root: usize, backward: bool) -> Vec<Option<u32>> {
    let mut dist = vec![None; gen_nodes.len()];
    dist[root] = Some(0);
    loop {
        let mut changed = false;
        for (child, g) in gen_nodes.iter().enumerate() {
            for &parent in &g.parents {
                let (from, to) = if backward {
                    (child, parent)
                } else {
                    (parent, child)
                };
                if let Some(d) = dist[from]
                    && dist[to].is_none_or(|old| d + 1 < old)
                {
                    dist[to] = Some(d + 1);
                    changed = true;
                }
            }
        }
        if !changed {
            return dist;
        }
    }
}

fn position_of(gen_nodes: &[GenNode]) -> BTreeMap<&str, usize> {
    gen_nodes
        .iter()
        .enumerate()
        .map(|(i, g)| (g.jti.as_str(), i))
        .collect()
}

/// Reads a quoted DOT string at the start of `s` the way Graphviz does (a backslash pair is one
/// unit, `\"` does not end the string) and undoes the escaping. Returns the text and the rest.
fn read_dot_string(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[at + 1..])),
            '\n' => return None,
            '\\' => match chars.next()?.1 {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                'x' => {
                    let hi = chars.next()?.1.to_digit(16)?;
                    let lo = chars.next()?.1.to_digit(16)?;
                    out.push(char::from_u32(hi * 16 + lo)?);
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[derive(Debug, Default)]
struct ParsedDot {
    nodes: Vec<(String, String)>,
    edges: Vec<(String, String)>,
}

/// Parses the subset of DOT that `to_dot` writes; `None` on anything else.
fn parse_dot(dot: &str) -> Option<ParsedDot> {
    let mut lines = dot.split_inclusive('\n');
    let header = lines.next()?.strip_prefix("digraph ")?;
    let rest = if header.starts_with('"') {
        read_dot_string(header)?.1
    } else {
        header.strip_prefix("workflow")?
    };
    if rest != " {\n" || lines.next()? != "  node [shape=ellipse];\n" {
        return None;
    }
    let mut parsed = ParsedDot::default();
    let mut closed = false;
    for line in lines {
        if closed {
            return None;
        }
        if line == "}\n" {
            closed = true;
            continue;
        }
        let (first, rest) = read_dot_string(line.strip_prefix("  ")?)?;
        if let Some(rest) = rest.strip_prefix(" -> ") {
            let (second, rest) = read_dot_string(rest)?;
            if rest != ";\n" {
                return None;
            }
            parsed.edges.push((first, second));
        } else {
            let (label, rest) = read_dot_string(rest.strip_prefix(" [label=")?)?;
            let attrs = rest.strip_suffix("];\n")?;
            let known = ["", ", shape=box", ", color=red, fontcolor=red"];
            if !known.contains(&attrs) {
                return None;
            }
            parsed.nodes.push((first, label));
        }
    }
    closed.then_some(parsed)
}

fn decode_mermaid(label: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = label;
    while let Some(at) = rest.find('#') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';')? + at;
        out.push(match &rest[at + 1..end] {
            "quot" => '"',
            "35" => '#',
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "96" => '`',
            "65533" => '\u{fffd}',
            _ => return None,
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[derive(Debug, Default)]
struct ParsedMermaid {
    /// Node number -> (exec_act, jti, issuer) as decoded from the label.
    nodes: BTreeMap<usize, (String, String, String)>,
    edges: Vec<(usize, usize)>,
    duplicate_node: bool,
}

fn parse_node_id(s: &str) -> Option<(usize, &str)> {
    let s = s.strip_prefix('n')?;
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..digits].parse().ok()?, &s[digits..]))
}

/// Parses the subset of Mermaid that `to_mermaid` writes; `None` on anything else.
fn parse_mermaid(text: &str) -> Option<ParsedMermaid> {
    let mut lines = text.split_inclusive('\n');
    if lines.next()? != "flowchart TD\n" {
        return None;
    }
    let mut parsed = ParsedMermaid::default();
    for line in lines {
        let line = line.strip_prefix("  ")?.strip_suffix('\n')?;
        if line.starts_with("classDef ") {
            continue;
        }
        let (id, rest) = parse_node_id(line)?;
        if let Some(rest) = rest.strip_prefix(" --> ") {
            let (to, tail) = parse_node_id(rest)?;
            if !tail.is_empty() {
                return None;
            }
            parsed.edges.push((id, to));
            continue;
        }
        let (open, close) = if rest.starts_with("[\"") {
            ("[\"", "\"]")
        } else {
            ("(\"", "\")")
        };
        let body = rest.strip_prefix(open)?;
        let end = body.find('"')?;
        let (label, tail) = (&body[..end], &body[end..]);
        let tail = tail.strip_prefix(close)?;
        if !["", ":::checkpoint", ":::error"].contains(&tail) {
            return None;
        }
        let parts: Vec<&str> = label.split("<br/>").collect();
        let [act, jti, iss] = parts.as_slice() else {
            return None;
        };
        let decoded = (
            decode_mermaid(act)?,
            decode_mermaid(jti)?,
            decode_mermaid(iss)?,
        );
        if parsed.nodes.insert(id, decoded).is_some() {
            parsed.duplicate_node = true;
        }
    }
    Some(parsed)
}

fn mermaid_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn blast_radius_matches_naive_search(
        (gen_nodes, order) in gen_dag(40).prop_flat_map(|g| {
            let n = g.len();
            (Just(g), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        }),
        root in any::<Index>(),
        max_depth in proptest::option::of(0u32..5),
        now in 0i64..100,
    ) {
        let root = root.index(gen_nodes.len());
        let dag_nodes = to_dag_nodes(&gen_nodes);
        // Build from a shuffled order: children may come before their parents.
        let shuffled: Vec<DagNode> = order.iter().map(|&i| dag_nodes[i].clone()).collect();
        let g = WorkflowGraph::from_nodes(Some("w".into()), shuffled);
        prop_assert_eq!(g.len(), gen_nodes.len());

        let pos = position_of(&gen_nodes);
        let dist = naive_distances(&gen_nodes, root, false);
        let within = |d: Option<u32>| d.is_some_and(|d| max_depth.is_none_or(|m| d <= m));
        let br = g.blast_radius(&gen_nodes[root].jti, max_depth, now).unwrap();

        let got: Vec<usize> = br.nodes.iter().map(|j| pos[j.as_str()]).collect();
        let got_set: BTreeSet<usize> = got.iter().copied().collect();
        let expected: BTreeSet<usize> = (0..gen_nodes.len()).filter(|&i| within(dist[i])).collect();
        prop_assert_eq!(got_set.len(), got.len(), "no node twice");
        prop_assert_eq!(&got_set, &expected);
        prop_assert_eq!(got[0], root);
        let got_dist: Vec<u32> = got.iter().map(|&i| dist[i].unwrap_or(u32::MAX)).collect();
        prop_assert!(got_dist.windows(2).all(|w| w[0] <= w[1]), "breadth-first order");
        prop_assert_eq!(br.depth, expected.iter().filter_map(|&i| dist[i]).max().unwrap_or(0));

        let agents: BTreeSet<&str> = expected.iter().map(|&i| ISSUERS[gen_nodes[i].iss]).collect();
        prop_assert_eq!(&br.agents, &agents.into_iter().collect::<Vec<_>>());

        let expected_cps: Vec<usize> = got.iter().copied()
            .filter(|&i| gen_nodes[i].expected_checkpoint().is_some()).collect();
        let got_cps: Vec<usize> = br.checkpoints.iter().map(|c| pos[c.jti.as_str()]).collect();
        prop_assert_eq!(&got_cps, &expected_cps);
        let mut irreversible = Vec::new();
        for c in &br.checkpoints {
            let gn = &gen_nodes[pos[c.jti.as_str()]];
            let (reversible, expires) = gn.expected_checkpoint().unwrap();
            prop_assert_eq!(c.reversible, reversible);
            prop_assert_eq!(&c.agent, ISSUERS[gn.iss]);
            prop_assert_eq!(c.expired, expires.is_some_and(|e| now >= e));
            prop_assert_eq!(c.expires_at.is_some(), expires.is_some());
            prop_assert_eq!(c.rollback_uri.is_some(), reversible);
            if !reversible {
                irreversible.push(c.jti.clone());
            }
        }
        prop_assert_eq!(&br.irreversible, &irreversible);

        // Descendants and ancestors against the same naive search.
        let all_dist = naive_distances(&gen_nodes, root, false);
        let desc: BTreeSet<usize> = g.descendants(&gen_nodes[root].jti).unwrap()
            .iter().map(|j| pos[j.as_str()]).collect();
        let expected_desc: BTreeSet<usize> = (0..gen_nodes.len())
            .filter(|&i| i != root && all_dist[i].is_some()).collect();
        prop_assert_eq!(desc, expected_desc);
        let up = naive_distances(&gen_nodes, root, true);
        let anc = g.distances(&gen_nodes[root].jti, Direction::Incoming).unwrap();
        prop_assert_eq!(anc.len(), up.iter().filter(|d| d.is_some()).count());
        for (node, d) in anc {
            prop_assert_eq!(up[pos[node.jti.as_str()]], Some(d));
        }
    }

    #[test]
    fn order_batch_orders_any_permutation_of_a_dag(
        (gen_nodes, perm) in gen_dag(40).prop_flat_map(|g| {
            let n = g.len();
            (Just(g), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        }),
    ) {
        let dag_nodes = to_dag_nodes(&gen_nodes);
        let items: Vec<(String, Vec<String>)> = perm.iter()
            .map(|&i| (dag_nodes[i].jti.clone(), dag_nodes[i].parents.clone())).collect();
        let result = order_batch(&items);
        prop_assert!(result.cyclic.is_empty());
        let mut seen = result.order.clone();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..items.len()).collect::<Vec<_>>());
        let mut placed_at = vec![0; items.len()];
        for (at, &k) in result.order.iter().enumerate() {
            placed_at[perm[k]] = at;
        }
        for (child, g) in gen_nodes.iter().enumerate() {
            for &p in &g.parents {
                prop_assert!(placed_at[p] < placed_at[child]);
            }
        }
    }

    #[test]
    fn order_batch_isolates_a_cycle_and_everything_below_it(
        (gen_nodes, perm) in gen_dag(30).prop_flat_map(|g| {
            let n = g.len();
            (Just(g), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        }),
        from in any::<Index>(),
        to in any::<Index>(),
    ) {
        // A back edge from a descendant `j` of `i` (or `i` itself) to `i` closes a cycle.
        let i = from.index(gen_nodes.len());
        let dist = naive_distances(&gen_nodes, i, false);
        let below: Vec<usize> = (0..gen_nodes.len()).filter(|&k| dist[k].is_some()).collect();
        let j = below[to.index(below.len())];
        let mut dag_nodes = to_dag_nodes(&gen_nodes);
        let back = dag_nodes[j].jti.clone();
        dag_nodes[i].parents.push(back);

        let items: Vec<(String, Vec<String>)> = perm.iter()
            .map(|&k| (dag_nodes[k].jti.clone(), dag_nodes[k].parents.clone())).collect();
        let result = order_batch(&items);
        let cyclic: BTreeSet<usize> = result.cyclic.iter().map(|&k| perm[k]).collect();
        prop_assert_eq!(&cyclic, &below.iter().copied().collect::<BTreeSet<_>>());
        prop_assert!(result.cyclic.windows(2).all(|w| w[0] < w[1]));
        let ordered: BTreeSet<usize> = result.order.iter().map(|&k| perm[k]).collect();
        prop_assert_eq!(ordered.len(), result.order.len());
        prop_assert!(ordered.is_disjoint(&cyclic));
        prop_assert_eq!(ordered.len() + cyclic.len(), gen_nodes.len());
        let mut placed_at = vec![usize::MAX; gen_nodes.len()];
        for (at, &k) in result.order.iter().enumerate() {
            placed_at[perm[k]] = at;
        }
        for &child in &ordered {
            for &p in &gen_nodes[child].parents {
                prop_assert!(placed_at[p] < placed_at[child]);
            }
        }
    }

    #[test]
    fn renderings_survive_hostile_text(
        gen_nodes in gen_dag(25),
        wid in proptest::option::of(hostile_text()),
    ) {
        let dag_nodes = to_dag_nodes(&gen_nodes);
        let g = WorkflowGraph::from_nodes(wid, dag_nodes.clone());
        let edges: BTreeSet<(usize, usize)> = gen_nodes.iter().enumerate()
            .flat_map(|(c, gn)| gn.parents.iter().map(move |&p| (p, c))).collect();

        let dot = g.to_dot();
        let parsed = parse_dot(&dot);
        prop_assert!(parsed.is_some(), "unparseable DOT:\n{}", dot);
        let parsed = parsed.unwrap();
        let ids: Vec<&str> = parsed.nodes.iter().map(|(id, _)| id.as_str()).collect();
        let expected_ids: Vec<&str> = dag_nodes.iter().map(|n| n.jti.as_str()).collect();
        prop_assert_eq!(ids, expected_ids, "every node exactly once");
        for ((_, label), n) in parsed.nodes.iter().zip(&dag_nodes) {
            prop_assert_eq!(label, &format!("{}\n{}", n.exec_act, issuer_label(&n.iss)));
        }
        let pos = position_of(&gen_nodes);
        let dot_edges: Vec<(usize, usize)> = parsed.edges.iter()
            .map(|(p, c)| (pos[p.as_str()], pos[c.as_str()])).collect();
        prop_assert_eq!(dot_edges.len(), edges.len());
        prop_assert_eq!(dot_edges.into_iter().collect::<BTreeSet<_>>(), edges.clone());

        let mermaid = g.to_mermaid();
        let parsed = parse_mermaid(&mermaid);
        prop_assert!(parsed.is_some(), "unparseable Mermaid:\n{}", mermaid);
        let parsed = parsed.unwrap();
        prop_assert!(!parsed.duplicate_node);
        prop_assert_eq!(parsed.nodes.len(), dag_nodes.len());
        for (k, n) in dag_nodes.iter().enumerate() {
            let (act, jti, iss) = &parsed.nodes[&k];
            prop_assert_eq!(act, &mermaid_text(&n.exec_act));
            prop_assert_eq!(jti, &mermaid_text(&n.jti));
            prop_assert_eq!(iss, &mermaid_text(&issuer_label(&n.iss)));
        }
        prop_assert_eq!(parsed.edges.len(), edges.len());
        prop_assert_eq!(parsed.edges.into_iter().collect::<BTreeSet<_>>(), edges);

        let json = g.to_json();
        prop_assert_eq!(json.nodes.len(), dag_nodes.len());
        prop_assert_eq!(json.edges.len(), g.edge_count());
    }
}
