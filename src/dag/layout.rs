//! A layered drawing of a workflow graph (the console's DAG picture), computed on the server so
//! the browser needs no layout script.
//!
//! Sugiyama-style, kept simple because workflows are mostly chains with some fan-out: each node
//! goes in the layer of its longest path from a root (so every edge points to a later layer), the
//! order inside a layer is improved by a few barycenter sweeps (fewer crossings), and layers are
//! rows from top to bottom: workflows are long and narrow, and a page scrolls down, not across.

use super::WorkflowGraph;

/// Size of a node box and the gaps between them, in SVG user units.
pub const NODE_WIDTH: f64 = 168.0;
pub const NODE_HEIGHT: f64 = 46.0;
const GAP_X: f64 = 24.0;
const GAP_Y: f64 = 26.0;
const MARGIN: f64 = 16.0;
/// Barycenter sweeps (down and up count as one each); more rarely helps small graphs.
const SWEEPS: usize = 6;

/// Where one node is drawn: `index` is its position in [`WorkflowGraph::nodes`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    pub index: usize,
    pub layer: usize,
    /// Position inside its layer, 0 at the left.
    pub order: usize,
    /// Top-left corner of the node box.
    pub x: f64,
    pub y: f64,
}

/// A whole drawing: one entry per node (in the graph's node order) and the canvas size.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub placed: Vec<Placed>,
    pub width: f64,
    pub height: f64,
    pub layers: usize,
}

impl Layout {
    /// The centre of a node's bottom edge (where its outgoing edges start).
    pub fn out_port(&self, index: usize) -> (f64, f64) {
        let p = &self.placed[index];
        (p.x + NODE_WIDTH / 2.0, p.y + NODE_HEIGHT)
    }

    /// The centre of a node's top edge (where its incoming edges end).
    pub fn in_port(&self, index: usize) -> (f64, f64) {
        let p = &self.placed[index];
        (p.x + NODE_WIDTH / 2.0, p.y)
    }
}

/// Lays out `graph`. Deterministic: the same graph always gives the same picture.
pub fn layered(graph: &WorkflowGraph) -> Layout {
    let n = graph.len();
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (from, to) in graph.edge_positions() {
        children[from].push(to);
        parents[to].push(from);
    }
    let layer = longest_path_layers(&parents, &children);
    let layers = layer.iter().copied().max().map_or(0, |m| m + 1);

    // Start from ledger order inside each layer, then sweep.
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (v, &l) in layer.iter().enumerate() {
        rows[l].push(v);
    }
    let mut position = vec![0usize; n];
    renumber(&rows, &mut position);
    for sweep in 0..SWEEPS {
        let downward = sweep % 2 == 0;
        let range: Vec<usize> = if downward {
            (1..layers).collect()
        } else {
            (0..layers.saturating_sub(1)).rev().collect()
        };
        for l in range {
            let neighbours = if downward { &parents } else { &children };
            reorder_by_barycenter(&mut rows[l], neighbours, &position);
            renumber(&rows, &mut position);
        }
    }

    let widest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let step_x = NODE_WIDTH + GAP_X;
    let mut placed = vec![
        Placed {
            index: 0,
            layer: 0,
            order: 0,
            x: 0.0,
            y: 0.0
        };
        n
    ];
    for (l, row) in rows.iter().enumerate() {
        // Centre short rows against the widest one.
        let offset = (widest - row.len()) as f64 * step_x / 2.0;
        for (order, &v) in row.iter().enumerate() {
            placed[v] = Placed {
                index: v,
                layer: l,
                order,
                x: MARGIN + offset + order as f64 * step_x,
                y: MARGIN + l as f64 * (NODE_HEIGHT + GAP_Y),
            };
        }
    }
    let width = if widest == 0 {
        0.0
    } else {
        2.0 * MARGIN + widest as f64 * NODE_WIDTH + (widest - 1) as f64 * GAP_X
    };
    let height = if layers == 0 {
        0.0
    } else {
        2.0 * MARGIN + layers as f64 * NODE_HEIGHT + (layers - 1) as f64 * GAP_Y
    };
    Layout {
        placed,
        width,
        height,
        layers,
    }
}

/// Layer = length of the longest path from a root (Kahn's order). Nodes on a cycle, which the
/// ledger refuses but a drawing must survive, stay in layer 0.
fn longest_path_layers(parents: &[Vec<usize>], children: &[Vec<usize>]) -> Vec<usize> {
    let n = parents.len();
    let mut waiting: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut layer = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&v| waiting[v] == 0).collect();
    ready.reverse();
    while let Some(v) = ready.pop() {
        for &c in &children[v] {
            layer[c] = layer[c].max(layer[v] + 1);
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    layer
}

fn renumber(rows: &[Vec<usize>], position: &mut [usize]) {
    for row in rows {
        for (i, &v) in row.iter().enumerate() {
            position[v] = i;
        }
    }
}

/// Sorts a layer by the mean position of each node's neighbours in the adjacent layer; nodes
/// without neighbours keep their place (a stable sort on their current position).
fn reorder_by_barycenter(row: &mut [usize], neighbours: &[Vec<usize>], position: &[usize]) {
    let key = |v: usize| -> f64 {
        let ns = &neighbours[v];
        if ns.is_empty() {
            position[v] as f64
        } else {
            ns.iter().map(|&u| position[u] as f64).sum::<f64>() / ns.len() as f64
        }
    };
    row.sort_by(|&a, &b| {
        key(a)
            .total_cmp(&key(b))
            .then(position[a].cmp(&position[b]))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::DagNode;

    fn node(jti: &str, parents: &[&str]) -> DagNode {
        DagNode {
            jti: jti.into(),
            iss: "a".into(),
            exec_act: "task".into(),
            iat: 0,
            parents: parents.iter().map(|p| p.to_string()).collect(),
            ext: None,
        }
    }

    fn graph(nodes: Vec<DagNode>) -> WorkflowGraph {
        WorkflowGraph::from_nodes(Some("wf".into()), nodes)
    }

    #[test]
    fn every_edge_points_to_a_later_row() {
        // A diamond with a shortcut: d's longest path is a-b-c-d, so d sits in layer 3.
        let g = graph(vec![
            node("a", &[]),
            node("b", &["a"]),
            node("c", &["b"]),
            node("d", &["a", "c"]),
            node("e", &["a"]),
        ]);
        let layout = layered(&g);
        assert_eq!(layout.layers, 4);
        for (from, to) in g.edge_positions() {
            let (f, t) = (layout.placed[from], layout.placed[to]);
            assert!(f.layer < t.layer, "edge {from}->{to}");
            assert!(f.y + NODE_HEIGHT < t.y);
        }
        assert_eq!(layout.placed[3].layer, 3);
    }

    #[test]
    fn no_two_nodes_overlap_and_all_fit_the_canvas() {
        let mut nodes = vec![node("root", &[])];
        for i in 0..12 {
            nodes.push(node(&format!("m{i}"), &["root"]));
            nodes.push(node(&format!("l{i}"), &[&format!("m{i}")]));
        }
        let g = graph(nodes);
        let layout = layered(&g);
        for (i, a) in layout.placed.iter().enumerate() {
            assert!(a.x >= 0.0 && a.x + NODE_WIDTH <= layout.width);
            assert!(a.y >= 0.0 && a.y + NODE_HEIGHT <= layout.height);
            for b in &layout.placed[i + 1..] {
                let apart_x = (a.x - b.x).abs() >= NODE_WIDTH;
                let apart_y = (a.y - b.y).abs() >= NODE_HEIGHT;
                assert!(apart_x || apart_y, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn barycenter_sweeps_remove_avoidable_crossings() {
        // Ledger order puts x2 before x1 in layer 1, which crosses the edges a1->x1 and a2->x2;
        // the sweep must untangle it.
        let g = graph(vec![
            node("a1", &[]),
            node("a2", &[]),
            node("x2", &["a2"]),
            node("x1", &["a1"]),
        ]);
        let layout = layered(&g);
        let order = |i: usize| layout.placed[i].order;
        assert_eq!(order(0) < order(1), order(3) < order(2), "{layout:?}");
    }

    #[test]
    fn an_empty_graph_has_an_empty_canvas() {
        let layout = layered(&graph(Vec::new()));
        assert_eq!((layout.width, layout.height, layout.layers), (0.0, 0.0, 0));
    }
}
