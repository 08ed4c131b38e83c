//! The circuit part of the store's contract: shared breaker rows written only by
//! compare-and-set, the same on every configured back end (SQLite always, PostgreSQL when
//! `UNWIND_TEST_POSTGRES_URL` is set).

mod common;

use std::sync::Arc;

use common::test_stores;
use unwind::store::{CircuitRow, Store, StoreError};

fn open_row(agent: &str) -> CircuitRow {
    CircuitRow {
        agent: agent.into(),
        state: "open".into(),
        opened_at_ms: Some(1_700_000_000_123),
        cooldown_s: 30,
        total_cooldown_s: 30,
        error_rate: 0.75,
        last_failure_ect: Some("start-1".into()),
        open_ect: Some("open-1".into()),
        open_wid: Some("wf-1".into()),
        updated_at_ms: 0,
        version: 0,
    }
}

#[tokio::test]
async fn rows_round_trip_and_change_only_by_compare_and_set() {
    for ts in test_stores().await {
        let store: &dyn Store = ts.store.as_ref();
        let name = ts.name;
        assert_eq!(store.get_circuit("a").await.unwrap(), None, "{name}");
        assert!(store.list_circuits().await.unwrap().is_empty(), "{name}");

        let before = chrono::Utc::now().timestamp_millis();
        let stored = store
            .put_circuit(&open_row("a"), 0)
            .await
            .unwrap()
            .expect("a new row");
        assert_eq!(stored.version, 1, "{name}");
        assert!(stored.updated_at_ms >= before, "{name}: the store's time");
        assert_eq!(
            CircuitRow {
                updated_at_ms: 0,
                version: 0,
                ..stored.clone()
            },
            open_row("a"),
            "{name}: every field round-trips"
        );
        assert_eq!(store.get_circuit("a").await.unwrap(), Some(stored.clone()));
        assert_eq!(stored.state(), unwind::agents::circuit::CircuitState::Open);

        // A second insert of the same agent loses: another replica opened it first.
        assert_eq!(
            store.put_circuit(&open_row("a"), 0).await.unwrap(),
            None,
            "{name}"
        );

        // The half-open claim: of two writers that read version 1, one wins.
        let claim = CircuitRow {
            state: "half_open".into(),
            ..stored.clone()
        };
        let won = store
            .put_circuit(&claim, 1)
            .await
            .unwrap()
            .expect("claimed");
        assert_eq!(
            (won.version, won.state.as_str()),
            (2, "half_open"),
            "{name}"
        );
        assert_eq!(
            store.put_circuit(&claim, 1).await.unwrap(),
            None,
            "{name}: stale version"
        );

        let closed = CircuitRow {
            state: "closed".into(),
            opened_at_ms: None,
            error_rate: 0.0,
            ..won.clone()
        };
        let closed = store.put_circuit(&closed, 2).await.unwrap().unwrap();
        assert_eq!(closed.version, 3);
        assert_eq!(closed.opened_at_ms, None);
        assert_eq!(
            closed.open_ect.as_deref(),
            Some("open-1"),
            "kept for the close ECT"
        );

        store.put_circuit(&open_row("b"), 0).await.unwrap().unwrap();
        let agents: Vec<String> = store
            .list_circuits()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.agent)
            .collect();
        assert_eq!(agents, vec!["a".to_string(), "b".to_string()], "{name}");

        // What no back end stores.
        for bad in [
            CircuitRow {
                state: "ajar".into(),
                ..open_row("c")
            },
            CircuitRow {
                error_rate: f64::NAN,
                ..open_row("c")
            },
        ] {
            assert!(
                matches!(
                    store.put_circuit(&bad, 0).await,
                    Err(StoreError::Invalid(_))
                ),
                "{name}"
            );
        }
        assert_eq!(store.get_circuit("c").await.unwrap(), None, "{name}");
    }
}

/// Concurrent claims from several connections (replicas): exactly one wins.
#[tokio::test]
async fn one_of_many_concurrent_claims_wins() {
    for ts in test_stores().await {
        let replicas: Vec<Arc<dyn Store>> = {
            let mut v = vec![ts.store.clone()];
            for _ in 0..3 {
                v.push(unwind::store::connect(&ts.url).await.unwrap());
            }
            v
        };
        let stored = ts
            .store
            .put_circuit(&open_row("a"), 0)
            .await
            .unwrap()
            .unwrap();
        let claims = replicas.iter().map(|store| {
            let claim = CircuitRow {
                state: "half_open".into(),
                ..stored.clone()
            };
            let store = store.clone();
            async move { store.put_circuit(&claim, 1).await.unwrap() }
        });
        let won = futures::future::join_all(claims)
            .await
            .into_iter()
            .flatten()
            .count();
        assert_eq!(won, 1, "{}", ts.name);
    }
}
