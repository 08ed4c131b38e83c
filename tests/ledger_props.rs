//! Property tests of the ingest pipeline on a real SQLite store: the ledger a set of tokens
//! produces does not depend on how it is batched or ordered, and no cycle is ever accepted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use unwind::ect::{KeyAlg, Profile, SigningKey, TrustStore, Verifier, VerifyPolicy};
use unwind::ledger::{IngestStatus, Ledger};

const ISS: &str = "spiffe://props.example/agent";

fn key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(KeyAlg::ES256).unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn ledger() -> (Ledger, common::TestStore) {
    let ts = common::test_store(common::DbKind::Sqlite).await;
    let mut trust = TrustStore::from_config(&Default::default()).unwrap();
    trust.add_static_issuer(ISS, key().public_jwks());
    let verifier = Arc::new(Verifier::new(Arc::new(trust), VerifyPolicy::default()));
    (Ledger::new(ts.store.clone(), verifier, 60), ts)
}

/// Token `i` of a generated DAG, with the given parents (by index).
fn token(i: usize, parents: &[usize]) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims: Map<String, Value> = match json!({
        "iss": ISS, "aud": "x", "iat": now, "exp": now + 3600,
        "jti": format!("n{i}"), "wid": "wf-props", "exec_act": "act",
        "par": parents.iter().map(|p| format!("n{p}")).collect::<Vec<_>>(),
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    key().sign_ect(&claims, Profile::Draft00).unwrap()
}

/// A random DAG: node i's parents are distinct nodes below i.
fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..20).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                proptest::collection::btree_set(0..i.max(1), 0..=i.min(3)).prop_map(move |s| {
                    if i == 0 {
                        vec![]
                    } else {
                        s.into_iter().collect()
                    }
                })
            })
            .collect::<Vec<_>>()
    })
}

/// The stored ledger as jti -> parents.
async fn stored(ts: &common::TestStore) -> BTreeMap<String, Vec<String>> {
    let page = ts
        .store
        .list_ects(&Default::default(), None, 1000)
        .await
        .unwrap();
    page.items.into_iter().map(|r| (r.jti, r.parents)).collect()
}

fn expected(parents: &[Vec<usize>]) -> BTreeMap<String, Vec<String>> {
    parents
        .iter()
        .enumerate()
        .map(|(i, ps)| {
            (
                format!("n{i}"),
                ps.iter().map(|p| format!("n{p}")).collect(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// One batch in any order: every token is created and the ledger is the DAG.
    #[test]
    fn any_order_in_one_batch_gives_the_dag(parents in dag(), seed in any::<u64>()) {
        let tokens: Vec<String> = parents.iter().enumerate().map(|(i, p)| token(i, p)).collect();
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        shuffle(&mut order, seed);
        let batch: Vec<String> = order.iter().map(|&i| tokens[i].clone()).collect();
        runtime().block_on(async {
            let (ledger, ts) = ledger().await;
            let results = ledger.ingest(&batch).await.unwrap();
            for r in &results {
                prop_assert_eq!(&r.outcome, &Ok(IngestStatus::Created));
            }
            prop_assert_eq!(stored(&ts).await, expected(&parents));
            Ok(())
        })?;
    }

    /// Any split into batches, sent in any order and re-sent until nothing changes: the same
    /// ledger, and the only refusals on the way are parents not yet recorded.
    #[test]
    fn any_batching_converges_to_the_same_ledger(parents in dag(), seed in any::<u64>(), chunk in 1usize..6) {
        let tokens: Vec<String> = parents.iter().enumerate().map(|(i, p)| token(i, p)).collect();
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        shuffle(&mut order, seed);
        runtime().block_on(async {
            let (ledger, ts) = ledger().await;
            let mut pending: Vec<String> = order.iter().map(|&i| tokens[i].clone()).collect();
            for _ in 0..=tokens.len() {
                let mut left = Vec::new();
                for batch in pending.chunks(chunk) {
                    let results = ledger.ingest(batch).await.unwrap();
                    for (r, t) in results.iter().zip(batch) {
                        match &r.outcome {
                            Ok(_) => {}
                            Err(rej) => {
                                prop_assert_eq!(rej.code.as_str(), "unknown_parent");
                                left.push(t.clone());
                            }
                        }
                    }
                }
                pending = left;
                if pending.is_empty() {
                    break;
                }
            }
            prop_assert!(pending.is_empty());
            prop_assert_eq!(stored(&ts).await, expected(&parents));
            Ok(())
        })?;
    }

    /// Back edges inside a batch close cycles: the tokens on a cycle or below one are refused
    /// with `cycle`, the rest are stored, and the stored graph stays acyclic.
    #[test]
    fn no_cycle_is_ever_accepted(parents in dag(), back in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..3)) {
        let n = parents.len();
        prop_assume!(n >= 2);
        let mut parents = parents;
        for (a, b) in back {
            let (lo, hi) = (a.index(n), b.index(n));
            if lo < hi && !parents[lo].contains(&hi) {
                parents[lo].push(hi); // lo now depends on hi, which is below lo: a cycle if hi reaches lo
            }
        }
        let tokens: Vec<String> = parents.iter().enumerate().map(|(i, p)| token(i, p)).collect();
        runtime().block_on(async {
            let (ledger, ts) = ledger().await;
            let results = ledger.ingest(&tokens).await.unwrap();
            let refused: BTreeSet<usize> = results.iter().enumerate().filter(|(_, r)| r.outcome.is_err()).map(|(i, _)| i).collect();
            for (i, r) in results.iter().enumerate() {
                if let Err(rej) = &r.outcome {
                    prop_assert_eq!(rej.code.as_str(), "cycle", "token {}", i);
                }
            }
            // Exactly the tokens that (transitively) depend on themselves or on such a token.
            let doomed = on_or_below_cycle(&parents);
            prop_assert_eq!(&refused, &doomed);
            let ledger_now = stored(&ts).await;
            prop_assert_eq!(ledger_now.len(), n - doomed.len());
            prop_assert!(!has_cycle(&ledger_now));
            Ok(())
        })?;
    }
}

fn shuffle(v: &mut [usize], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

/// Nodes from which a cycle is reachable by following parents (a node on a cycle, or a node
/// with such an ancestor).
fn on_or_below_cycle(parents: &[Vec<usize>]) -> BTreeSet<usize> {
    let n = parents.len();
    let reaches = |from: usize| -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = parents[from].clone();
        while let Some(x) = stack.pop() {
            if seen.insert(x) {
                stack.extend(parents[x].iter().copied());
            }
        }
        seen
    };
    let on_cycle: BTreeSet<usize> = (0..n).filter(|&i| reaches(i).contains(&i)).collect();
    (0..n)
        .filter(|&i| on_cycle.contains(&i) || reaches(i).iter().any(|a| on_cycle.contains(a)))
        .collect()
}

fn has_cycle(ledger: &BTreeMap<String, Vec<String>>) -> bool {
    let mut g = petgraph::graphmap::DiGraphMap::<&str, ()>::new();
    for (child, parents) in ledger {
        g.add_node(child);
        for p in parents {
            g.add_edge(p, child, ());
        }
    }
    petgraph::algo::is_cyclic_directed(&g)
}
