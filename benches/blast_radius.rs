//! Graph build and blast radius on layered workflows of 10,000 and 1,000,000 nodes.
//!
//! Each workflow is a layered DAG ([`unwind::dag::synthetic::layered`], the graphs `unwind bench
//! all` measures too): one root on top, then layers of `width` nodes whose 1-3 parents are drawn
//! from the layer above; about 1 % of the nodes are checkpoints. The blast
//! radius is taken from the root, which reaches almost every node. The 1,000,000-node case
//! also prints the resident memory before and after building the graph.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use unwind::cli::bench::rss_kib;
use unwind::dag::synthetic::layered;
use unwind::dag::{DagNode, WorkflowGraph};

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
