//! Blast radius on the synthetic workflows of the criterion bench
//! ([`crate::dag::synthetic::layered`]): timed on the loaded graph, and beside it the time to
//! load that graph from the store (what `GET /v1/workflows/{wid}/blast-radius` pays first).

use std::time::Instant;

use serde_json::{Value, json};

use super::{drop_postgres_database, failed, fresh_postgres_database};
use crate::cli::CliError;
use crate::dag::synthetic::layered;
use crate::dag::{DagNode, WorkflowGraph};
use crate::store::NewEct;

/// The workflow id the stored synthetic graph gets.
const WID: &str = "bench-blast-radius";
/// Rows per append while storing it.
const APPEND_ROWS: usize = 2_000;

/// Builds the synthetic workflow, then times the blast radius from its root (which reaches
/// every node): the median of several runs on the loaded graph.
pub(super) async fn in_memory(width: usize, layers: usize) -> Result<Value, CliError> {
    tokio::task::spawn_blocking(move || {
        let nodes = layered(width, layers);
        let root = nodes.first().map(|n| n.jti.clone()).unwrap_or_default();
        let count = nodes.len();
        let started = Instant::now();
        let graph = WorkflowGraph::from_nodes(Some("bench".into()), nodes);
        let build = started.elapsed();
        // About two seconds of repetitions, at least three.
        let reps = (2_000_000 / count.max(1)).clamp(3, 200);
        let mut times = Vec::with_capacity(reps);
        let mut reached = 0;
        for _ in 0..reps {
            let started = Instant::now();
            let radius = graph.blast_radius(&root, None, 0);
            times.push(started.elapsed());
            reached = radius.map_or(0, |r| r.nodes.len());
        }
        times.sort_unstable();
        let median = times[times.len() / 2];
        json!({
            "nodes": count, "edges": graph.edge_count(), "reached": reached, "runs": reps,
            "graph_build_ms": build.as_secs_f64() * 1e3,
            "blast_radius_ms": median.as_secs_f64() * 1e3,
        })
    })
    .await
    .map_err(failed)
}

/// Stores the synthetic workflow in a fresh database (on `server`, else SQLite in a temporary
/// directory), then times what serving its blast radius costs before the walk: reading its
/// nodes (`Store::workflow_nodes`) and building the graph. The median of three loads.
pub(super) async fn load_from_store(
    server: Option<&str>,
    width: usize,
    layers: usize,
) -> Result<Value, CliError> {
    let dir = std::env::temp_dir().join(format!("unwind-blast-{}", uuid::Uuid::new_v4().simple()));
    let (url, dropper) = match server {
        Some(server) => {
            let (url, name) = fresh_postgres_database(server).await?;
            (url, Some((server.to_string(), name)))
        }
        None => {
            tokio::fs::create_dir_all(&dir).await.map_err(failed)?;
            (format!("sqlite://{}", dir.join("blast.db").display()), None)
        }
    };
    let result = async {
        let store = crate::store::connect(&url).await.map_err(failed)?;
        store.migrate().await.map_err(failed)?;
        let rows: Vec<NewEct> = layered(width, layers).into_iter().map(row_of).collect();
        let count = rows.len();
        let started = Instant::now();
        for chunk in rows.chunks(APPEND_ROWS) {
            store.append_chained(chunk).await.map_err(failed)?;
        }
        let store_s = started.elapsed().as_secs_f64();
        let mut loads = Vec::new();
        let mut builds = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let nodes = store.workflow_nodes(WID).await.map_err(failed)?;
            loads.push(started.elapsed().as_secs_f64() * 1e3);
            let (build, read) = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let graph = WorkflowGraph::from_nodes(Some(WID.into()), nodes);
                (started.elapsed().as_secs_f64() * 1e3, graph.nodes().len())
            })
            .await
            .map_err(failed)?;
            if read != count {
                return Err(CliError::Failed(format!(
                    "loaded {read} of the {count} stored nodes"
                )));
            }
            builds.push(build);
        }
        Ok(json!({
            "nodes": count,
            "database": if server.is_some() { "postgres" } else { "sqlite" },
            "store_s": store_s,
            "load_ms": median(&mut loads),
            "graph_build_ms": median(&mut builds),
        }))
    }
    .await;
    if let Some((server, name)) = dropper {
        drop_postgres_database(&server, &name).await;
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// A ledger row for a synthetic node. The graph is decoded from the stored token, so the token
/// carries the node's claims; its signature is a placeholder of a real one's size (nothing
/// verifies a stored token when the graph is read).
fn row_of(node: DagNode) -> NewEct {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let mut claims = json!({
        "iss": node.iss, "aud": "spiffe://bench.example/coordinator", "iat": node.iat,
        "exp": node.iat + 3600, "jti": node.jti, "wid": WID, "exec_act": node.exec_act,
        "par": node.parents,
    });
    if let Some(ext) = &node.ext {
        claims["ext"] = serde_json::Value::Object(ext.clone());
    }
    let header = json!({"alg": "ES256", "typ": "wimse-exec+jwt", "kid": "bench"});
    let token = format!("{}.{}.{}", b64(&header), b64(&claims), "A".repeat(86));
    NewEct {
        wid: Some(WID.into()),
        sub: None,
        exp: node.iat + 3600,
        out_hash: None,
        ext: node.ext.unwrap_or_default(),
        kid: "bench".into(),
        content_hash: crate::ect::sha256_hex(token.as_bytes()),
        token,
        jti: node.jti,
        iss: node.iss,
        exec_act: node.exec_act,
        parents: node.parents,
        iat: node.iat,
    }
}
