//! Graph build and blast radius on layered workflows of 10,000 and 1,000,000 nodes.
//!
//! Each workflow is a layered DAG: one root on top, then layers of `width` nodes whose 1-3
//! parents are drawn from the layer above; about 1 % of the nodes are checkpoints. The blast
//! radius is taken from the root, which reaches almost every node. The 1,000,000-node case
//! also prints the resident memory before and after building the graph.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use unwind::dag::{DagNode, WorkflowGraph};

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

/// A layered workflow of `1 + width * layers` nodes.
fn layered(width: usize, layers: usize) -> Vec<DagNode> {
    const AGENTS: usize = 50;
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

/// Resident set size in KiB, from `/proc/self/status` (0 where unavailable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn bench_size(c: &mut Criterion, name: &str, width: usize, layers: usize, large: bool) {
    let rss_start = rss_kib();
    let nodes = layered(width, layers);
    let rss_input = rss_kib();
    let input = nodes.clone();
    let rss_two_inputs = rss_kib();
    let started = Instant::now();
    let graph = WorkflowGraph::from_nodes(Some("bench".into()), input);
    let build_time = started.elapsed();
    let rss_graph = rss_kib();
    let root = nodes[0].jti.clone();
    let started = Instant::now();
    let radius = graph.blast_radius(&root, None, 0);
    let radius_time = started.elapsed();
    let (reached, depth, checkpoints) = radius
        .as_ref()
        .map_or((0, 0, 0), |b| (b.nodes.len(), b.depth, b.checkpoints.len()));
    println!(
        "{name}: {} nodes, {} edges; single graph build {build_time:.2?}, single blast radius \
         {radius_time:.2?} ({reached} nodes reached, depth {depth}, {checkpoints} checkpoints)",
        graph.len(),
        graph.edge_count(),
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{name}: RSS {:.0} MiB at start; the input nodes take {:.0} MiB ({} bytes per DagNode \
         struct plus its strings); a graph built from a copy of them takes {:.0} MiB, of which \
         {:.0} MiB is index, edges and interned issuers on top of the nodes it owns",
        mib(rss_start),
        mib(rss_input.saturating_sub(rss_start)),
        std::mem::size_of::<DagNode>(),
        mib(rss_graph.saturating_sub(rss_input)),
        mib(rss_graph.saturating_sub(rss_two_inputs)),
    );
    drop(radius);

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(graph.len() as u64));
    if large {
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(20));
    }
    group.bench_function("graph build", |b| {
        b.iter_batched(
            || nodes.clone(),
            |input| WorkflowGraph::from_nodes(Some("bench".into()), input),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("blast radius from root", |b| {
        b.iter(|| graph.blast_radius(black_box(&root), None, black_box(0)))
    });
    group.finish();
}

fn bench_10k(c: &mut Criterion) {
    bench_size(c, "workflow 10k", 100, 100, false);
}

fn bench_1m(c: &mut Criterion) {
    bench_size(c, "workflow 1M", 1_000, 1_000, true);
}

criterion_group!(benches, bench_10k, bench_1m);
criterion_main!(benches);
