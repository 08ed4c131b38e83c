//! The ledger's hash chain, as every store must keep it (SQLite always, PostgreSQL when
//! `UNWIND_TEST_POSTGRES_URL` is set): gapless positions in append order, each entry recomputing
//! from its token and the previous hash, one chain under concurrent appends, duplicates keeping
//! their entry, and rows stored before the chain existed chained at migration.

mod common;

use std::sync::Arc;

use common::ects::new_ect;
use common::{DbKind, TestStore, test_stores, walk_chain as walk};
use sqlx::Connection as _;
use unwind::ledger::chain::{ChainHead, GENESIS};
use unwind::store::{InsertOutcome, NewEct, Store};

#[tokio::test]
async fn appends_chain_in_order_and_duplicates_keep_their_entry() {
    for ts in test_stores().await {
        let s = &ts.store;
        assert_eq!(
            s.chain_head().await.unwrap(),
            ChainHead::genesis(),
            "{}",
            ts.name
        );
        let a = new_ect("ch-a", Some("w"), &[], "1");
        let b = new_ect("ch-b", Some("w"), &["ch-a"], "1");
        let first = s.append_chained(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(first[0].1.seq, 1, "{}", ts.name);
        assert_eq!(first[0].1.prev_hash, GENESIS);
        assert_eq!(first[1].1.seq, 2);
        assert_eq!(first[1].1.prev_hash, first[0].1.chain_hash);

        // A duplicate answers with its original entry and adds none.
        let c = new_ect("ch-c", Some("w"), &["ch-b"], "1");
        let again = s.append_chained(&[b.clone(), c.clone()]).await.unwrap();
        assert_eq!(again[0], (InsertOutcome::Duplicate, first[1].1.clone()));
        assert_eq!(again[1].0, InsertOutcome::Created);
        assert_eq!(again[1].1.seq, 3);

        let mut found = s
            .chain_entries(&["ch-c".into(), "ch-a".into(), "nope".into()])
            .await
            .unwrap();
        found.sort_by_key(|e| e.seq);
        assert_eq!(found, vec![first[0].1.clone(), again[1].1.clone()]);
        assert_eq!(
            walk(s.as_ref()).await,
            ["ch-a", "ch-b", "ch-c"],
            "{}",
            ts.name
        );
    }
}

#[tokio::test]
async fn concurrent_appends_give_one_gapless_chain() {
    const TASKS: usize = 2;
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 10;
    for ts in test_stores().await {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store: Arc<dyn Store> = ts.store.clone();
            tasks.push(tokio::spawn(async move {
                for b in 0..BATCHES {
                    let wid = format!("cc-{t}-{b}");
                    let batch: Vec<NewEct> = (0..PER_BATCH)
                        .map(|i| new_ect(&format!("{wid}-{i}"), Some(&wid), &[], "1"))
                        .collect();
                    let entries = store.append_chained(&batch).await.unwrap();
                    // One lock per batch: a batch's entries are consecutive.
                    let seqs: Vec<i64> = entries.iter().map(|(_, e)| e.seq).collect();
                    let first = seqs[0];
                    assert_eq!(seqs, (first..first + PER_BATCH as i64).collect::<Vec<_>>());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let jtis = walk(ts.store.as_ref()).await;
        assert_eq!(jtis.len(), TASKS * BATCHES * PER_BATCH, "{}", ts.name);
        let distinct: std::collections::HashSet<_> = jtis.iter().collect();
        assert_eq!(distinct.len(), jtis.len(), "each token chained once");
    }
}

/// Runs raw statements on a connection of our own, behind the store's back.
async fn raw(ts: &TestStore, statements: &[&str]) {
    match ts.kind {
        DbKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&ts.url).await.unwrap();
            for sql in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
        DbKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(&ts.url).await.unwrap();
            for sql in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn rows_stored_before_the_chain_are_chained_at_migration_in_ledger_order() {
    for ts in test_stores().await {
        let s = &ts.store;
        let batch: Vec<NewEct> = (0..5)
            .map(|i| new_ect(&format!("old-{i}"), Some("w"), &[], "1"))
            .collect();
        s.append(&batch).await.unwrap();
        // The state a database had before the chain: ledger rows, an empty chain, a head that
        // still has the stored rows to chain.
        let reset = match ts.kind {
            DbKind::Sqlite => [
                "DROP TRIGGER ledger_chain_no_delete",
                "DELETE FROM ledger_chain",
                "UPDATE ledger_head SET seq = 0, chain_hash = \
                 '0000000000000000000000000000000000000000000000000000000000000000', backfill = 1",
            ],
            DbKind::Postgres => [
                "ALTER TABLE ledger_chain DISABLE TRIGGER ledger_chain_append_only",
                "DELETE FROM ledger_chain",
                "UPDATE ledger_head SET seq = 0, chain_hash = \
                 '0000000000000000000000000000000000000000000000000000000000000000', backfill = true",
            ],
        };
        raw(&ts, &reset).await;
        s.migrate().await.unwrap();
        let expected: Vec<String> = (0..5).map(|i| format!("old-{i}")).collect();
        assert_eq!(walk(s.as_ref()).await, expected, "{}", ts.name);
        // Once: a second start chains nothing again, and appends continue the chain.
        s.migrate().await.unwrap();
        let next = s
            .append_chained(&[new_ect("new-0", Some("w"), &[], "1")])
            .await
            .unwrap();
        assert_eq!(next[0].1.seq, 6, "{}", ts.name);
        assert_eq!(walk(s.as_ref()).await.len(), 6);
    }
}

#[tokio::test]
async fn the_chain_is_append_only() {
    for ts in test_stores().await {
        ts.store
            .append(&[new_ect("ao-a", Some("w"), &[], "1")])
            .await
            .unwrap();
        let sqlite = matches!(ts.kind, DbKind::Sqlite);
        for sql in [
            "UPDATE ledger_chain SET chain_hash = 'x'",
            "DELETE FROM ledger_chain",
        ] {
            let refused = match ts.kind {
                DbKind::Sqlite => {
                    let mut c = sqlx::SqliteConnection::connect(&ts.url).await.unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await
                        .is_err()
                }
                DbKind::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&ts.url).await.unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await
                        .is_err()
                }
            };
            assert!(refused, "{} (sqlite: {sqlite}): {sql}", ts.name);
        }
    }
}
