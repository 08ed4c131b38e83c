//! Property tests of the rollback driver, on both stores: random plans of checkpoints, random
//! agent behaviours and random worker crashes, against a model of the outcome design.md §6
//! promises. Agents are real HTTP servers (`unwind-agent`); a crash aborts the worker wherever
//! it is, and a new worker (another lease owner) takes the rollback over once the lease expires.
//!
//! The requested checkpoint is the plan's root and restores, so the critical path never blocks
//! and the outcome needs no person: what varies is every other step and the policy.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::agents::*;
use common::server::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// What the agent of one (non-root) checkpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Restores,
    Compensates,
    FailsExecute,
    /// Answers 500 to its first call, then restores.
    Flaky,
    CannotPrepare,
    /// The checkpoint is marked irreversible: never called.
    Irreversible,
}

impl Kind {
    fn behaviour(self) -> &'static str {
        match self {
            Kind::Restores | Kind::Irreversible => "prepared",
            Kind::Compensates => "execute=compensated",
            Kind::FailsExecute => "execute=failed",
            Kind::Flaky => "fail:1",
            Kind::CannotPrepare => "cannot_prepare",
        }
    }

    /// Whether the agent's restore hook runs (once) in a rollback that is not aborted.
    fn executes(self) -> bool {
        !matches!(self, Kind::CannotPrepare | Kind::Irreversible)
    }

    fn blocks_prepare(self) -> bool {
        !self.executes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Auto,
    Partial,
    Abort,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Partial => "partial",
            Policy::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// Checkpoint `i + 1`: the index of its parent checkpoint (0 = the root) and its agent.
    nodes: Vec<(usize, Kind)>,
    policy: Policy,
    /// Milliseconds after the request (then after each restart) at which the worker dies.
    crashes: Vec<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    let kind = prop_oneof![
        3 => Just(Kind::Restores),
        1 => Just(Kind::Compensates),
        1 => Just(Kind::FailsExecute),
        1 => Just(Kind::Flaky),
        1 => Just(Kind::CannotPrepare),
        1 => Just(Kind::Irreversible),
    ];
    let policy = prop_oneof![
        2 => Just(Policy::Auto),
        1 => Just(Policy::Partial),
        1 => Just(Policy::Abort),
    ];
    (
        prop::collection::vec((any::<prop::sample::Index>(), kind), 1..=5),
        policy,
        prop::collection::vec(0u64..400, 0..=2),
    )
        .prop_map(|(nodes, policy, crashes)| Case {
            // Node i (checkpoint i + 1) hangs under any earlier checkpoint.
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(i, (parent, kind))| (parent.index(i + 1), kind))
                .collect(),
            policy,
            crashes,
        })
}

/// What design.md §6 says the rollback ends as, and each step's (prepare, execute) status.
struct Expected {
    status: &'static str,
    /// By checkpoint index (0 = root).
    steps: Vec<(&'static str, &'static str)>,
    /// Agent indexes whose step did not end undone.
    failed_agents: Vec<usize>,
}

fn model(case: &Case) -> Expected {
    let blocked = case.nodes.iter().any(|(_, k)| k.blocks_prepare());
    if case.policy == Policy::Abort && blocked {
        // Every step is prepared first; then nothing is executed.
        let mut steps = vec![("prepared", "pending")];
        steps.extend(case.nodes.iter().map(|(_, kind)| match kind {
            Kind::CannotPrepare => ("cannot_prepare", "pending"),
            Kind::Irreversible => ("cannot_prepare", "escalated"),
            _ => ("prepared", "pending"),
        }));
        return Expected {
            status: "aborted",
            steps,
            failed_agents: Vec::new(),
        };
    }
    let mut steps = vec![("prepared", "completed")];
    let mut failed_agents = Vec::new();
    for (i, (_, kind)) in case.nodes.iter().enumerate() {
        let step = match kind {
            Kind::Restores | Kind::Flaky => ("prepared", "completed"),
            Kind::Compensates => ("prepared", "compensated"),
            Kind::FailsExecute => ("prepared", "failed"),
            Kind::CannotPrepare => ("cannot_prepare", "skipped"),
            Kind::Irreversible => ("cannot_prepare", "escalated"),
        };
        if !matches!(step.1, "completed" | "compensated") {
            failed_agents.push(i + 1);
        }
        steps.push(step);
    }
    Expected {
        status: if failed_agents.is_empty() {
            "completed"
        } else {
            "partial"
        },
        steps,
        failed_agents,
    }
}

fn agent_name(i: usize) -> String {
    format!("p{i}")
}

/// The checkpoints of `case` (index 0 = root), each by its own agent, ingested.
async fn seed(s: &TestServer, case: &Case, wid: &str, agents: &[TestAgent]) -> Vec<String> {
    let (root, token) = agents[0].checkpoint(wid, &[]).await;
    let mut jtis = vec![root];
    let mut tokens = vec![token];
    for (i, (parent, kind)) in case.nodes.iter().enumerate() {
        let a = &agents[i + 1];
        let parents = [jtis[*parent].clone()];
        let (cp, token) = a
            .agent
            .checkpoint(
                b"state before the change",
                3600,
                Some("target"),
                *kind != Kind::Irreversible,
                wid,
                &parents,
                Some(&a.uri),
            )
            .await
            .unwrap();
        jtis.push(cp.jti);
        tokens.push(token);
    }
    s.ingest_ok(&tokens).await;
    jtis
}

/// Whether checkpoint `a` is a proper ancestor of checkpoint `d` in the case's tree.
fn is_ancestor(case: &Case, a: usize, mut d: usize) -> bool {
    while d != 0 {
        d = case.nodes[d - 1].0;
        if d == a {
            return true;
        }
    }
    false
}

async fn run_case(s: &mut TestServer, case: &Case) {
    let log: Log = std::sync::Arc::default();
    let mut agents = vec![start_agent(s, &agent_name(0), "prepared", 40, &log).await];
    for (i, (_, kind)) in case.nodes.iter().enumerate() {
        agents.push(start_agent(s, &agent_name(i + 1), kind.behaviour(), 40, &log).await);
    }
    let wid = uuid::Uuid::new_v4().to_string();
    let jtis = seed(s, case, &wid, &agents).await;
    let id = accepted(
        s,
        json!({"checkpoint_id": jtis[0], "scope": "sub_dag",
               "on_cannot_prepare": case.policy.as_str()}),
    )
    .await;
    for delay in &case.crashes {
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        let (_, now) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
        if TERMINAL.contains(&now["status"].as_str().unwrap_or_default()) {
            break;
        }
        s.restart_worker().await;
    }
    let done = wait_for(s, &id, TERMINAL).await;
    let expected = model(case);
    let context = format!("{}: {case:?}: {done}", s.name);
    assert_eq!(done["status"], expected.status, "{context}");

    let steps: HashMap<&str, &Value> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| (st["checkpoint_id"].as_str().unwrap(), st))
        .collect();
    assert_eq!(
        steps.len(),
        jtis.len(),
        "one step per checkpoint: {context}"
    );
    for (i, (prepare, execute)) in expected.steps.iter().enumerate() {
        let step = steps[jtis[i].as_str()];
        assert_eq!(step["prepare_status"], *prepare, "step {i}: {context}");
        assert_eq!(step["execute_status"], *execute, "step {i}: {context}");
    }
    if expected.status != "aborted" {
        let mut failed: Vec<String> = expected
            .failed_agents
            .iter()
            .map(|i| format!("{AGENT_PREFIX}{}", agent_name(*i)))
            .collect();
        failed.sort();
        let mut got: Vec<String> = done["failed_agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, failed, "failed_agents: {context}");
    }

    // Exactly once: every executed checkpoint's restore hook ran once for this rollback_id,
    // the others never, whatever the crashes.
    for (i, agent) in agents.iter().enumerate() {
        let executes = expected.status != "aborted" && (i == 0 || case.nodes[i - 1].1.executes());
        let calls = agent.controls.calls();
        let ran = calls["executed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e[0] == id.as_str() && e[1] == jtis[i].as_str())
            .count();
        assert_eq!(
            ran,
            usize::from(executes),
            "restores of step {i}: {context}"
        );
    }

    // Order: a checkpoint is restored only after every restored checkpoint below it.
    let log = log.lock().unwrap().clone();
    let when = |jti: &str, phase: &str| {
        log.iter()
            .find(|(_, p, c, _)| *p == phase && c == jti)
            .map(|e| e.3)
    };
    for a in 0..jtis.len() {
        for d in 0..jtis.len() {
            if !is_ancestor(case, a, d) {
                continue;
            }
            if let (Some(end_d), Some(start_a)) = (when(&jtis[d], "end"), when(&jtis[a], "start")) {
                assert!(
                    end_d <= start_a,
                    "step {a} started before its descendant {d} ended: {context}"
                );
            }
        }
    }

    // Evidence: exactly one rollback_complete by Unwind, with the terminal status.
    let (_, page) = s
        .get_json(&format!(
            "/v1/ects?wid={wid}&exec_act=rollback_complete&iss={}",
            s.coordinator_id
        ))
        .await;
    let ours: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ext"]["cascade.rollback_id"] == id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "one rollback_complete: {context}");
    assert_eq!(
        ours[0]["ext"]["cascade.status"], expected.status,
        "{context}"
    );
}

/// `PROPTEST_CASES` when set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    // Each case runs on both stores, and a crash waits out a lease (3 s): few cases, small
    // shrinking budget. The seeds of failures are kept in proptest-regressions/.
    #![proptest_config(ProptestConfig {
        cases: cases(12),
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_driver_ends_as_the_model_says_whatever_crashes(case in case()) {
        runtime().block_on(async {
            let servers = servers_with(|c| {
                short(c);
                c.rollback.lease_s = 3;
            })
            .await;
            for mut s in servers {
                run_case(&mut s, &case).await;
            }
        });
    }
}
