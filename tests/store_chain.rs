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
use unwind::ledger::group::{GroupAppender, append_group};
use unwind::store::{InsertOutcome, NewEct, Store, StoreError};

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

/// A group of batches goes to the store as one transaction: the batches' entries follow each
/// other in the chain. A batch that fails (here a jti stored with other content, the race the
/// ledger's checks cannot see) fails alone; the others of its group are still appended.
#[tokio::test]
async fn a_group_of_batches_is_chained_together_and_a_failing_batch_fails_alone() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        s.append_chained(&[new_ect("gr-taken", Some("g"), &[], "1")])
            .await
            .unwrap();
        let a = vec![
            new_ect("gr-a1", Some("g"), &[], "1"),
            new_ect("gr-a2", Some("g"), &["gr-a1"], "1"),
        ];
        let b = vec![new_ect("gr-b", Some("g"), &[], "1")];
        let together = append_group(s, vec![a.clone(), b.clone()]).await;
        let seqs: Vec<Vec<i64>> = together
            .iter()
            .map(|r| r.as_ref().unwrap().iter().map(|(_, e)| e.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![2, 3], vec![4]], "{}", ts.name);

        let c = vec![new_ect("gr-c", Some("g"), &[], "1")];
        let conflicting = vec![
            new_ect("gr-d", Some("g"), &[], "1"),
            new_ect("gr-taken", Some("g"), &[], "other content"),
        ];
        let e = vec![new_ect("gr-e", Some("g"), &[], "1")];
        let results = append_group(s, vec![c, conflicting, e]).await;
        assert!(results[0].is_ok(), "{}: {:?}", ts.name, results[0]);
        assert!(
            matches!(&results[1], Err(StoreError::JtiConflict(jti)) if jti == "gr-taken"),
            "{}: {:?}",
            ts.name,
            results[1]
        );
        assert!(results[2].is_ok(), "{}: {:?}", ts.name, results[2]);
        assert_eq!(
            walk(s).await,
            ["gr-taken", "gr-a1", "gr-a2", "gr-b", "gr-c", "gr-e"],
            "{}: nothing of the failing batch is stored",
            ts.name
        );
        assert!(s.get_ect("gr-d").await.unwrap().is_none(), "{}", ts.name);
    }
}

/// Many single-token appends at once through the ledger's appender: each gets its own entry,
/// the chain stays gapless, and on PostgreSQL (where a row's `xmin` names the transaction that
/// wrote it) the appends that waited together were committed together.
#[tokio::test]
async fn concurrent_single_appends_are_grouped_into_fewer_transactions() {
    const APPENDS: usize = 200;
    for ts in test_stores().await {
        let appender = Arc::new(GroupAppender::new(ts.store.clone()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..APPENDS {
            let appender = appender.clone();
            tasks.spawn(async move {
                let jti = format!("single-{i}");
                let result = appender
                    .append(vec![new_ect(&jti, Some("single"), &[], "1")])
                    .await
                    .unwrap();
                assert_eq!(result.len(), 1);
                assert_eq!(result[0].0, InsertOutcome::Created);
                assert_eq!(result[0].1.jti, jti);
                result[0].1.seq
            });
        }
        let mut seqs: Vec<i64> = tasks.join_all().await;
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=APPENDS as i64).collect::<Vec<_>>(),
            "{}",
            ts.name
        );
        assert_eq!(walk(ts.store.as_ref()).await.len(), APPENDS, "{}", ts.name);
        if ts.kind == DbKind::Postgres {
            let mut c = sqlx::PgConnection::connect(&ts.url).await.unwrap();
            let (transactions,): (i64,) =
                sqlx::query_as("SELECT count(DISTINCT xmin::text) FROM ledger_chain")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            assert!(
                (transactions as usize) < APPENDS,
                "{APPENDS} appends at once took {transactions} transactions"
            );
        }
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
