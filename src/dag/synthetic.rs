//! Reproducible synthetic workflows for benchmarks (`cargo bench --bench blast_radius` and
//! `unwind bench all` measure the same graphs).
//!
//! A layered DAG: one root on top, then layers of `width` nodes whose 1-3 parents are drawn
//! from the layer above; about 1 % of the nodes are checkpoints, signed by 50 agents.

use serde_json::{Map, Value, json};

use super::DagNode;

/// xorshift64*: reproducible workflows without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A UUID-shaped jti (36 characters), as agents usually send.
fn jti(i: usize) -> String {
    let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 4) & 0xfff,
        i
    )
}

fn checkpoint_ext() -> Map<String, Value> {
    match json!({
        "cascade.reversible": true,
        "cascade.rollback_uri": "https://agent.example/rollback",
        "cascade.ttl": 3600,
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A layered workflow of `1 + width * layers` nodes; the root is the first node.
pub fn layered(width: usize, layers: usize) -> Vec<DagNode> {
    const AGENTS: usize = 50;
    let width = width.max(1);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let total = 1 + width * layers;
    let mut nodes = Vec::with_capacity(total);
    let mut ids: Vec<String> = Vec::with_capacity(total);
    for i in 0..total {
        ids.push(jti(i));
        let parents = if i == 0 {
            Vec::new()
        } else if i <= width {
            vec![ids[0].clone()]
        } else {
            let layer_start = 1 + ((i - 1) / width - 1) * width;
            let count = 1 + rng.below(3);
            let mut parents = Vec::with_capacity(count);
            for _ in 0..count {
                let p = &ids[layer_start + rng.below(width)];
                if !parents.contains(p) {
                    parents.push(p.clone());
                }
            }
            parents
        };
        let checkpoint = rng.below(100) == 0;
        nodes.push(DagNode {
            jti: ids[i].clone(),
            iss: format!("spiffe://example.org/agent/{}", rng.below(AGENTS)),
            exec_act: if checkpoint {
                "checkpoint"
            } else {
                "tool_call"
            }
            .to_owned(),
            iat: 1_700_000_000 + i as i64,
            parents,
            ext: checkpoint.then(checkpoint_ext),
        });
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layered_workflow_has_one_root_that_reaches_every_node() {
        let nodes = layered(10, 5);
        assert_eq!(nodes.len(), 51);
        assert!(nodes[0].parents.is_empty());
        assert!(nodes[1..].iter().all(|n| !n.parents.is_empty()));
        let graph = super::super::WorkflowGraph::from_nodes(None, nodes.clone());
        let radius = graph.blast_radius(&nodes[0].jti, None, 0).unwrap();
        assert_eq!(radius.nodes.len(), 51);
        // Reproducible: the same call gives the same workflow.
        assert_eq!(layered(10, 5), nodes);
    }
}
