//! Ingest order of a batch of new tokens (spec/ect.md "DAG rules" 2 and 5).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The result of [`order_batch`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchOrder {
    /// Indices into the batch, every parent before its children. Among items that are ready at
    /// the same time the lower index comes first, so a batch already in order is unchanged.
    pub order: Vec<usize>,
    /// Indices (ascending) of the items on a cycle inside the batch or downstream of one: they
    /// can never be ordered and must be refused (`cycle`).
    pub cyclic: Vec<usize>,
}

/// Orders a batch of `(jti, parents)` so that parents come before children (Kahn's algorithm).
///
/// Only parents inside the batch order anything; parents outside it are the store's business
/// (rule 2 checks them separately). The caller is expected to drop duplicate jtis first; if
/// one slips through, a parent reference resolves to its first occurrence, and a later
/// duplicate is an item of its own that nothing waits for.
pub fn order_batch(items: &[(String, Vec<String>)]) -> BatchOrder {
    let n = items.len();
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, (jti, _)) in items.iter().enumerate() {
        position.entry(jti.as_str()).or_insert(i);
    }

    // In-batch edges as (parent, child), then children per parent in compressed form. A parent
    // listed twice counts twice on both sides, which keeps the in-degrees consistent.
    let mut in_degree = vec![0u32; n];
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for (child, (_, parents)) in items.iter().enumerate() {
        for parent in parents {
            if let Some(&p) = position.get(parent.as_str()) {
                edges.push((p, child));
                in_degree[child] += 1;
            }
        }
    }
    let mut start = vec![0usize; n + 1];
    for &(p, _) in &edges {
        start[p + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut children = vec![0usize; edges.len()];
    for &(p, c) in &edges {
        children[fill[p]] = c;
        fill[p] += 1;
    }

    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| in_degree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for &c in &children[start[i]..start[i + 1]] {
            in_degree[c] -= 1;
            if in_degree[c] == 0 {
                ready.push(Reverse(c));
            }
        }
    }
    let cyclic = (0..n).filter(|&i| !placed[i]).collect();
    BatchOrder { order, cyclic }
}
