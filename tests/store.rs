//! The ledger store's contract, checked against every configured back end (SQLite always,
//! PostgreSQL when `UNWIND_TEST_POSTGRES_URL` is set).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::ects::{checkpoint, new_ect, sha256_hex, signed_as_stored, token_of};
use common::{DbKind, TestStore, test_stores};
use serde_json::json;
use sqlx::Connection as _;
use unwind::store::{EctFilter, InsertOutcome, NewEct, Store, StoreError};

/// Runs one raw statement through a connection of our own (not the store's pools).
async fn raw_execute(ts: &TestStore, sql: &'static str) -> Result<u64, sqlx::Error> {
    match ts.kind {
        DbKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&ts.url).await?;
            let r = sqlx::query(sql).execute(&mut c).await;
            let _ = c.close().await;
            Ok(r?.rows_affected())
        }
        DbKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(&ts.url).await?;
            let r = sqlx::query(sql).execute(&mut c).await;
            let _ = c.close().await;
            Ok(r?.rows_affected())
        }
    }
}

/// Every edge (parent, child, wid), sorted.
async fn edges(ts: &TestStore) -> Vec<(String, String, Option<String>)> {
    let sql = "SELECT parent, child, wid FROM ect_edges ORDER BY child, parent";
    match ts.kind {
        DbKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&ts.url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&mut c).await.unwrap()
        }
        DbKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(&ts.url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&mut c).await.unwrap()
        }
    }
}

/// Every jti in ledger order, walking the pages.
async fn all_jtis(store: &dyn Store, filter: &EctFilter, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last_seq = i64::MIN;
    loop {
        let page = store
            .list_ects(filter, cursor.as_deref(), limit)
            .await
            .unwrap();
        assert!(page.items.len() <= limit as usize);
        for r in &page.items {
            assert!(r.seq > last_seq, "ledger order");
            last_seq = r.seq;
            out.push(r.jti.clone());
        }
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.items.len(), limit as usize, "short page with a cursor");
                cursor = Some(c);
            }
            None => return out,
        }
    }
}

fn created(n: usize) -> Vec<InsertOutcome> {
    vec![InsertOutcome::Created; n]
}

#[tokio::test]
async fn append_and_get_round_trip_every_field() {
    for ts in test_stores().await {
        let s = &ts.store;
        let mut a = new_ect("rt-a", Some("w1"), &[], "1");
        a.sub = Some("spiffe://example.com/user/u".into());
        a.out_hash = Some("sha-256:abc".into());
        a.ext.insert(
            "nested".into(),
            json!({"x": [1, 2.5, null, true], "y": "é\"\\"}),
        );
        // Claims are read back from the token's payload: large numbers survive exactly.
        let mut claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(json!({"jti": "rt-a", "big": u64::MAX})).unwrap();
        claims.insert("wid".into(), json!("w1"));
        a.token = token_of(&claims, "1");
        a.content_hash = sha256_hex(&a.token);
        let b = new_ect("rt-b", None, &["rt-a"], "1");

        let before = chrono::Utc::now() - chrono::Duration::seconds(5);
        assert_eq!(s.append(&[a.clone(), b.clone()]).await.unwrap(), created(2));
        let after = chrono::Utc::now() + chrono::Duration::seconds(5);

        let ra = s.get_ect("rt-a").await.unwrap().expect("rt-a stored");
        let rb = s.get_ect("rt-b").await.unwrap().expect("rt-b stored");
        for (input, rec) in [(&a, &ra), (&b, &rb)] {
            assert_eq!(rec.jti, input.jti, "{}", ts.name);
            assert_eq!(rec.wid, input.wid);
            assert_eq!(rec.iss, input.iss);
            assert_eq!(rec.sub, input.sub);
            assert_eq!(rec.exec_act, input.exec_act);
            assert_eq!(rec.parents, input.parents);
            assert_eq!(rec.iat, input.iat);
            assert_eq!(rec.exp, input.exp);
            assert_eq!(rec.out_hash, input.out_hash);
            assert_eq!(rec.ext, input.ext, "{}", ts.name);
            let (_, payload) = unwind::ect::jws::decode_unverified(&input.token).unwrap();
            assert_eq!(
                serde_json::Value::Object(rec.claims.clone()),
                payload,
                "{}",
                ts.name
            );
            assert_eq!(rec.token, input.token);
            assert_eq!(rec.kid, input.kid);
            assert_eq!(rec.content_hash, input.content_hash);
            assert!(rec.received_at > before && rec.received_at < after);
        }
        assert!(ra.seq < rb.seq, "batch order is ledger order");
        assert_eq!(ra.received_at, rb.received_at, "one time per batch");
        assert_eq!(s.get_ect("missing").await.unwrap(), None);
        assert_eq!(s.count_ects().await.unwrap(), 2);

        let mut metas = s
            .find_meta(&["rt-b".into(), "nope".into(), "rt-a".into()])
            .await
            .unwrap();
        metas.sort_by(|x, y| x.jti.cmp(&y.jti));
        assert_eq!(metas.len(), 2);
        assert_eq!(metas[0].jti, "rt-a");
        assert_eq!(metas[0].wid.as_deref(), Some("w1"));
        assert_eq!(metas[0].iat, a.iat);
        assert_eq!(metas[0].content_hash, a.content_hash);
        assert_eq!(metas[1].wid, None);
        assert!(s.find_meta(&[]).await.unwrap().is_empty());
        assert_eq!(s.append(&[]).await.unwrap(), vec![]);
    }
}

#[tokio::test]
async fn find_meta_handles_more_than_one_chunk() {
    for ts in test_stores().await {
        let batch: Vec<NewEct> = (0..1200)
            .map(|i| new_ect(&format!("fm-{i:04}"), Some("w"), &[], "1"))
            .collect();
        assert_eq!(ts.store.append(&batch).await.unwrap(), created(1200));
        let mut asked: Vec<String> = batch.iter().map(|e| e.jti.clone()).collect();
        asked.push("absent".into());
        assert_eq!(
            ts.store.find_meta(&asked).await.unwrap().len(),
            1200,
            "{}",
            ts.name
        );
    }
}

#[tokio::test]
async fn same_content_is_a_duplicate() {
    for ts in test_stores().await {
        let s = &ts.store;
        let a = new_ect("dup-a", Some("w"), &[], "1");
        assert_eq!(
            s.append(std::slice::from_ref(&a)).await.unwrap(),
            created(1)
        );
        let first = s.get_ect("dup-a").await.unwrap().unwrap();
        assert_eq!(
            s.append(std::slice::from_ref(&a)).await.unwrap(),
            vec![InsertOutcome::Duplicate]
        );
        let b = new_ect("dup-b", Some("w"), &["dup-a"], "1");
        assert_eq!(
            s.append(&[b, a]).await.unwrap(),
            vec![InsertOutcome::Created, InsertOutcome::Duplicate]
        );
        assert_eq!(s.count_ects().await.unwrap(), 2, "{}", ts.name);
        assert_eq!(s.get_ect("dup-a").await.unwrap().unwrap(), first);
        let w = s.get_workflow("w").await.unwrap().unwrap();
        assert_eq!(w.nodes, 2, "a duplicate is not counted again");
    }
}

#[tokio::test]
async fn other_content_is_a_conflict_and_writes_nothing() {
    for ts in test_stores().await {
        let s = &ts.store;
        s.append(&[new_ect("cf-a", Some("w"), &[], "1")])
            .await
            .unwrap();
        let batch = vec![
            new_ect("cf-x", Some("w"), &["cf-a"], "1"),
            new_ect("cf-a", Some("w"), &[], "other"),
            new_ect("cf-y", Some("w2"), &["cf-x"], "1"),
        ];
        match s.append(&batch).await {
            Err(StoreError::JtiConflict(jti)) => assert_eq!(jti, "cf-a"),
            other => panic!("{}: expected JtiConflict, got {other:?}", ts.name),
        }
        assert_eq!(s.count_ects().await.unwrap(), 1, "{}", ts.name);
        assert_eq!(s.get_ect("cf-x").await.unwrap(), None);
        assert_eq!(s.get_ect("cf-y").await.unwrap(), None);
        assert_eq!(s.get_workflow("w").await.unwrap().unwrap().nodes, 1);
        assert_eq!(s.get_workflow("w2").await.unwrap(), None);
        assert!(edges(&ts).await.is_empty());
        // The store still works after the rollback.
        assert_eq!(
            s.append(&[new_ect("cf-x", Some("w"), &["cf-a"], "1")])
                .await
                .unwrap(),
            created(1)
        );
    }
}

#[tokio::test]
async fn ledger_tables_refuse_update_and_delete() {
    for ts in test_stores().await {
        let s = &ts.store;
        s.append(&[
            new_ect("ao-a", Some("w"), &[], "1"),
            new_ect("ao-b", Some("w"), &["ao-a"], "1"),
        ])
        .await
        .unwrap();
        for sql in [
            "UPDATE ects SET iss = 'evil' WHERE jti = 'ao-a'",
            "UPDATE ects SET token = 'x'",
            "DELETE FROM ects WHERE jti = 'ao-b'",
            "DELETE FROM ects",
            "UPDATE ect_edges SET parent = 'x'",
            "DELETE FROM ect_edges",
        ] {
            let r = raw_execute(&ts, sql).await;
            assert!(r.is_err(), "{}: {sql} must be refused, got {r:?}", ts.name);
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains("append-only"), "{}: {msg}", ts.name);
        }
        if ts.kind == DbKind::Postgres {
            assert!(raw_execute(&ts, "TRUNCATE ects").await.is_err());
            assert!(raw_execute(&ts, "TRUNCATE ect_edges").await.is_err());
        }
        assert_eq!(s.count_ects().await.unwrap(), 2);
        assert_eq!(
            s.get_ect("ao-a").await.unwrap().unwrap().iss,
            "spiffe://example.com/agent/a"
        );
        assert_eq!(edges(&ts).await.len(), 1);
    }
}

#[tokio::test]
async fn list_pages_visit_every_row_once_in_order() {
    for ts in test_stores().await {
        let s = &ts.store;
        let mut expected = Vec::new();
        for chunk in 0..5 {
            let batch: Vec<NewEct> = (0..5)
                .map(|i| new_ect(&format!("pg-{}", 99 - (chunk * 5 + i)), Some("w"), &[], "1"))
                .collect();
            expected.extend(batch.iter().map(|e| e.jti.clone()));
            s.append(&batch).await.unwrap();
        }
        let all = EctFilter::default();
        for limit in [1, 3, 10, 25, 26, 1000] {
            assert_eq!(
                all_jtis(s.as_ref(), &all, limit).await,
                expected,
                "{} limit {limit}",
                ts.name
            );
        }
        // Exact fit: no cursor when nothing follows.
        let page = s.list_ects(&all, None, 25).await.unwrap();
        assert_eq!(page.items.len(), 25);
        assert_eq!(page.next_cursor, None);
        // Over the maximum: clamped, still everything here.
        assert_eq!(
            s.list_ects(&all, None, 50_000).await.unwrap().items.len(),
            25
        );
        // Zero is served as one.
        assert_eq!(s.list_ects(&all, None, 0).await.unwrap().items.len(), 1);
        for bad in ["not a cursor", "!!!", "", "LTE", "YWJj"] {
            match s.list_ects(&all, Some(bad), 10).await {
                Err(StoreError::BadCursor) => {}
                other => panic!("{}: cursor {bad:?}: {other:?}", ts.name),
            }
            assert!(matches!(
                s.list_workflows(Some(bad), 10).await,
                Err(StoreError::BadCursor)
            ));
        }
        // A cursor past the end gives an empty last page.
        let last = s
            .list_ects(&all, None, 24)
            .await
            .unwrap()
            .next_cursor
            .unwrap();
        let tail = s.list_ects(&all, Some(&last), 10).await.unwrap();
        assert_eq!(tail.items.len(), 1);
        assert_eq!(tail.next_cursor, None);
    }
}

#[tokio::test]
async fn list_filters() {
    for ts in test_stores().await {
        let s = &ts.store;
        let mut batch = Vec::new();
        for i in 0..12 {
            let wid = if i % 2 == 0 { "even" } else { "odd" };
            let mut e = new_ect(&format!("f-{i:02}"), Some(wid), &[], "1");
            e.iss = format!("spiffe://example.com/agent/{}", i % 3);
            if i % 4 == 0 {
                e.exec_act = "checkpoint".into();
            }
            batch.push(signed_as_stored(e, "1"));
        }
        batch.push(new_ect("f-nowid", None, &[], "1"));
        s.append(&batch).await.unwrap();

        let jtis = |pred: &dyn Fn(&NewEct) -> bool| -> Vec<String> {
            batch
                .iter()
                .filter(|e| pred(e))
                .map(|e| e.jti.clone())
                .collect()
        };
        let cases: Vec<(EctFilter, Vec<String>)> = vec![
            (
                EctFilter {
                    wid: Some("even".into()),
                    ..Default::default()
                },
                jtis(&|e| e.wid.as_deref() == Some("even")),
            ),
            (
                EctFilter {
                    iss: Some("spiffe://example.com/agent/1".into()),
                    ..Default::default()
                },
                jtis(&|e| e.iss == "spiffe://example.com/agent/1"),
            ),
            (
                EctFilter {
                    exec_act: Some("checkpoint".into()),
                    ..Default::default()
                },
                jtis(&|e| e.exec_act == "checkpoint"),
            ),
            (
                EctFilter {
                    wid: Some("odd".into()),
                    iss: Some("spiffe://example.com/agent/0".into()),
                    exec_act: Some("act".into()),
                },
                jtis(&|e| {
                    e.wid.as_deref() == Some("odd")
                        && e.iss == "spiffe://example.com/agent/0"
                        && e.exec_act == "act"
                }),
            ),
            (
                EctFilter {
                    wid: Some("none".into()),
                    ..Default::default()
                },
                vec![],
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(
                all_jtis(s.as_ref(), &filter, 2).await,
                want,
                "{} {filter:?}",
                ts.name
            );
        }
    }
}

#[tokio::test]
async fn workflow_summaries_count_nodes_agents_checkpoints_in_order() {
    for ts in test_stores().await {
        let s = &ts.store;
        s.append(&[
            checkpoint("ws-1", "wB", &[], "spiffe://a"),
            new_ect("ws-2", Some("wB"), &["ws-1"], "1"),
            new_ect("ws-3", Some("wA"), &[], "1"),
            new_ect("ws-4", None, &[], "1"),
        ])
        .await
        .unwrap();
        let first = s.get_workflow("wB").await.unwrap().unwrap();
        s.append(&[
            checkpoint("ws-5", "wB", &["ws-2"], "spiffe://c"),
            new_ect("ws-6", Some("wC"), &[], "1"),
        ])
        .await
        .unwrap();

        let page = s.list_workflows(None, 100).await.unwrap();
        assert_eq!(page.next_cursor, None);
        let wids: Vec<&str> = page.items.iter().map(|w| w.wid.as_str()).collect();
        // wA and wB appear in one batch: sorted within it; wC later.
        assert_eq!(wids, ["wA", "wB", "wC"], "{}", ts.name);
        let wb = s.get_workflow("wB").await.unwrap().unwrap();
        assert_eq!(
            (wb.nodes, wb.agents, wb.checkpoints),
            (3, 3, 2),
            "{}",
            ts.name
        );
        assert_eq!(wb.first_seen, first.first_seen);
        assert!(wb.last_seen >= first.last_seen);
        assert!(wb.first_seen <= wb.last_seen);
        let wa = &page.items[0];
        assert_eq!((wa.nodes, wa.agents, wa.checkpoints), (1, 1, 0));
        assert_eq!(s.get_workflow("nope").await.unwrap(), None);

        // Pagination by one.
        let p1 = s.list_workflows(None, 1).await.unwrap();
        let p2 = s
            .list_workflows(p1.next_cursor.as_deref(), 1)
            .await
            .unwrap();
        let p3 = s
            .list_workflows(p2.next_cursor.as_deref(), 1)
            .await
            .unwrap();
        assert_eq!(
            [&p1.items[0].wid, &p2.items[0].wid, &p3.items[0].wid],
            ["wA", "wB", "wC"]
        );
        assert_eq!(p3.next_cursor, None);
    }
}

#[tokio::test]
async fn workflow_nodes_in_ledger_order_with_ext_for_checkpoints_only() {
    for ts in test_stores().await {
        let s = &ts.store;
        let cp = checkpoint("wn-cp", "w", &[], "spiffe://a");
        let act = new_ect("wn-act", Some("w"), &["wn-cp"], "1");
        let act2 = new_ect("wn-act2", Some("w"), &["wn-act", "wn-cp"], "1");
        s.append(&[cp.clone(), act.clone()]).await.unwrap();
        s.append(&[new_ect("wn-other", Some("x"), &[], "1")])
            .await
            .unwrap();
        s.append(std::slice::from_ref(&act2)).await.unwrap();

        let nodes = s.workflow_nodes("w").await.unwrap();
        let jtis: Vec<&str> = nodes.iter().map(|n| n.jti.as_str()).collect();
        assert_eq!(jtis, ["wn-cp", "wn-act", "wn-act2"], "{}", ts.name);
        assert_eq!(nodes[0].ext.as_ref(), Some(&cp.ext));
        assert_eq!(nodes[0].exec_act, "checkpoint");
        assert_eq!(nodes[0].iss, "spiffe://a");
        assert_eq!(nodes[1].ext, None, "ext only for checkpoints");
        assert_eq!(nodes[1].parents, ["wn-cp"]);
        assert_eq!(nodes[2].parents, ["wn-act", "wn-cp"]);
        assert_eq!(nodes[2].iat, act2.iat);
        assert!(s.workflow_nodes("empty").await.unwrap().is_empty());

        let e = edges(&ts).await;
        let w = Some("w".to_string());
        assert_eq!(
            e,
            vec![
                ("wn-cp".into(), "wn-act".into(), w.clone()),
                ("wn-act".into(), "wn-act2".into(), w.clone()),
                ("wn-cp".into(), "wn-act2".into(), w.clone()),
            ],
            "{}",
            ts.name
        );
    }
}

#[tokio::test]
async fn ready_only_when_migrated() {
    for ts in test_stores().await {
        ts.store.ready().await.unwrap();
        // Migrating twice is a no-op.
        ts.store.migrate().await.unwrap();
        ts.store.ready().await.unwrap();

        let fresh = common::unmigrated_store(ts.kind).await;
        match fresh.store.ready().await {
            Err(StoreError::NotMigrated(_)) => {}
            other => panic!("{}: expected NotMigrated, got {other:?}", ts.name),
        }
        fresh.store.migrate().await.unwrap();
        fresh.store.ready().await.unwrap();
    }
}

#[tokio::test]
async fn connect_rejects_unknown_schemes_and_creates_sqlite_directories() {
    assert!(matches!(
        unwind::store::connect("mysql://localhost/x").await,
        Err(StoreError::Config(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/unwind.db");
    let store = unwind::store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.ready().await.unwrap();
    assert!(path.exists());
    assert_eq!(store.backend(), unwind::store::Backend::Sqlite);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_of_one_jti_store_one_row() {
    for ts in test_stores().await {
        let same = new_ect("race", Some("w"), &[], "same");
        let other = new_ect("race", Some("w"), &[], "other");
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = Arc::clone(&ts.store);
            let ect = if i % 2 == 0 {
                same.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::spawn(async move {
                let r = store.append(std::slice::from_ref(&ect)).await;
                (ect.content_hash, r)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(ts.store.count_ects().await.unwrap(), 1, "{}", ts.name);
        let stored = ts
            .store
            .get_ect("race")
            .await
            .unwrap()
            .unwrap()
            .content_hash;
        let mut created = 0;
        for (hash, r) in results {
            match r {
                Ok(o) if o == vec![InsertOutcome::Created] => {
                    assert_eq!(hash, stored);
                    created += 1;
                }
                Ok(o) if o == vec![InsertOutcome::Duplicate] => assert_eq!(hash, stored),
                Err(StoreError::JtiConflict(j)) => {
                    assert_eq!(j, "race");
                    assert_ne!(hash, stored);
                }
                other => panic!("{}: unexpected {other:?}", ts.name),
            }
        }
        assert_eq!(created, 1, "{}", ts.name);
        assert_eq!(ts.store.get_workflow("w").await.unwrap().unwrap().nodes, 1);
    }
}

/// The whole ledger as comparable values: jtis and per-workflow counts and edges.
async fn snapshot(
    ts: &TestStore,
) -> (
    BTreeSet<String>,
    BTreeMap<String, (i64, i64, i64)>,
    Vec<(String, String, Option<String>)>,
) {
    let jtis = all_jtis(ts.store.as_ref(), &EctFilter::default(), 1000)
        .await
        .into_iter()
        .collect();
    let mut workflows = BTreeMap::new();
    let page = ts.store.list_workflows(None, 1000).await.unwrap();
    for w in page.items {
        workflows.insert(w.wid, (w.nodes, w.agents, w.checkpoints));
    }
    (jtis, workflows, edges(ts).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_batches_match_a_serial_run() {
    // 300 tokens in 6 workflows; 50 batches of 40 consecutive tokens, overlapping, each given in
    // its own order (some reversed) so that concurrent transactions meet the same rows.
    let universe: Vec<NewEct> = (0..300)
        .map(|i| {
            let wid = format!("w{}", i % 6);
            let parents: Vec<String> = if i >= 6 {
                vec![format!("ov-{:03}", i - 6)]
            } else {
                vec![]
            };
            let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
            let mut e = if i % 7 == 0 {
                checkpoint(&format!("ov-{i:03}"), &wid, &parents, "spiffe://cp")
            } else {
                new_ect(&format!("ov-{i:03}"), Some(&wid), &parents, "1")
            };
            e.iss = format!("spiffe://agent/{}", i % 5);
            signed_as_stored(e, "1")
        })
        .collect();
    let batches: Vec<Vec<NewEct>> = (0..50)
        .map(|b| {
            let start = (b * 53) % 260;
            let mut batch: Vec<NewEct> = universe[start..start + 40].to_vec();
            if b % 2 == 1 {
                batch.reverse();
            }
            batch
        })
        .collect();

    for ts in test_stores().await {
        let mut tasks = Vec::new();
        for batch in batches.clone() {
            let store = Arc::clone(&ts.store);
            tasks.push(tokio::spawn(async move { store.append(&batch).await }));
        }
        let mut created = 0;
        for t in tasks {
            let outcomes = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: concurrent append failed: {e}", ts.name));
            created += outcomes
                .iter()
                .filter(|o| **o == InsertOutcome::Created)
                .count();
        }

        let serial = common::test_store(ts.kind).await;
        let mut serial_created = 0;
        for batch in &batches {
            let outcomes = serial.store.append(batch).await.unwrap();
            serial_created += outcomes
                .iter()
                .filter(|o| **o == InsertOutcome::Created)
                .count();
        }

        let concurrent = snapshot(&ts).await;
        assert_eq!(concurrent, snapshot(&serial).await, "{}", ts.name);
        assert_eq!(created, concurrent.0.len(), "each jti created exactly once");
        assert_eq!(serial_created, concurrent.0.len());
        assert_eq!(
            ts.store.count_ects().await.unwrap() as usize,
            concurrent.0.len()
        );
    }
}

#[tokio::test]
async fn batch_of_500() {
    for ts in test_stores().await {
        let batch: Vec<NewEct> = (0..500)
            .map(|i| {
                let parents = if i > 0 {
                    vec![format!("b5-{:03}", i - 1)]
                } else {
                    vec![]
                };
                let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                let mut e = new_ect(
                    &format!("b5-{i:03}"),
                    Some(&format!("w{}", i % 10)),
                    &parents,
                    "1",
                );
                // A token of a real one's size.
                e.ext.insert("pad".into(), json!("x".repeat(450)));
                signed_as_stored(e, "1")
            })
            .collect();
        // Warm up the connection and statement caches.
        ts.store
            .append(&[new_ect("b5-warm", Some("w0"), &[], "1")])
            .await
            .unwrap();
        let started = std::time::Instant::now();
        assert_eq!(ts.store.append(&batch).await.unwrap(), created(500));
        let took = started.elapsed();
        eprintln!(
            "{}: 500-token batch appended in {took:?} (debug build)",
            ts.name
        );
        assert_eq!(ts.store.count_ects().await.unwrap(), 501);
        assert_eq!(ts.store.workflow_nodes("w3").await.unwrap().len(), 50);
    }
}
