//! An attacker with write access to the database, on both back ends: append-only triggers
//! disabled (PostgreSQL) or dropped (SQLite), rows edited, inserted and removed with SQL, the
//! chain recomputed, the backfill flag set again. What a rollback calls and what blast radius
//! lists come from chained tokens only, `unwind verify --live` finds every one of these edits
//! (the recomputed chain given a head saved earlier), and the coordinator pins its signed head
//! to a file and a `ledger.head` webhook.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::process::{COORDINATOR_ID, ServeOptions, ServeSetup, run_cli, unwind};
use common::receiver::{Receiver, SECRET, signature_verifies};
use common::server::{OPERATOR_TOKEN, TestServer, checkpoint_claims, claims, servers};
use common::{DbKind, test_kinds};
use serde_json::{Value, json};
use sqlx::Connection as _;
use unwind::ect::Profile;
use unwind::ledger::chain;

/// Runs statements as the attacker, on a connection of its own, the append-only triggers out
/// of the way (and back in place afterwards on SQLite, as a careful attacker leaves them).
async fn attack(s: &TestServer, kind: DbKind, sql: &[String]) {
    let url = s.database_url().to_string();
    match kind {
        DbKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            // The append-only triggers of the SQLite migrations: dropped, then restored as
            // they were.
            let triggers = [
                ("ects", "UPDATE"),
                ("ects", "DELETE"),
                ("ect_edges", "DELETE"),
                ("ledger_chain", "UPDATE"),
                ("ledger_chain", "DELETE"),
            ];
            let name = |table: &str, op: &str| format!("{table}_no_{}", op.to_lowercase());
            let mut all: Vec<String> = triggers
                .iter()
                .map(|(table, op)| format!("DROP TRIGGER {}", name(table, op)))
                .collect();
            all.extend(sql.iter().cloned());
            for (table, op) in triggers {
                all.push(format!(
                    "CREATE TRIGGER {} BEFORE {op} ON {table} BEGIN \
                     SELECT RAISE(ABORT, 'table {table} is append-only: {op} refused'); END",
                    name(table, op)
                ));
            }
            for q in &all {
                sqlx::raw_sql(sqlx::AssertSqlSafe(q.as_str()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{q}: {e}"));
            }
        }
        DbKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let tables = ["ects", "ect_edges", "ledger_chain"];
            for t in tables {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE {t} DISABLE TRIGGER {t}_append_only"
                )))
                .execute(&mut c)
                .await
                .unwrap();
            }
            for q in sql {
                sqlx::raw_sql(sqlx::AssertSqlSafe(q.as_str()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{q}: {e}"));
            }
            for t in tables {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE {t} ENABLE TRIGGER {t}_append_only"
                )))
                .execute(&mut c)
                .await
                .unwrap();
            }
        }
    }
}

/// A token's header and claims, as an attacker reads them to fill the columns.
fn decoded(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let part = |p: &str| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let parts: Vec<&str> = token.split('.').collect();
    (part(parts[0]), part(parts[1]))
}

async fn post_batch(s: &TestServer, tokens: &[String]) {
    let r = s
        .client
        .post(s.url("/v1/ects"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({ "tokens": tokens }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", s.name);
    let body: Value = r.json().await.unwrap();
    for item in body["results"].as_array().unwrap() {
        assert_eq!(item["status"], "created", "{}: {body}", s.name);
    }
}

async fn get_json(s: &TestServer, path: &str) -> Value {
    let r = s
        .client
        .get(s.url(path))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}: {path}", s.name);
    r.json().await.unwrap()
}

/// `unwind verify --live` against `s`, with more arguments: (exit code, finding lines).
async fn verify_live(s: &TestServer, more: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut c = unwind();
    c.args([
        "verify",
        "--live",
        "--url",
        &s.base,
        "--token",
        OPERATOR_TOKEN,
    ])
    .args(more);
    let out = run_cli(c).await;
    let lines = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("note:") && !l.contains(" chain entries up to "))
        .map(str::to_string)
        .collect();
    (out.code, lines)
}

fn any_line(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

/// An HTTP endpoint that answers like an agent and counts the calls it gets.
async fn counting_endpoint() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let status = if uri.path().ends_with("/prepare") {
                "prepared"
            } else {
                "completed"
            };
            axum::Json(json!({ "status": status }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/rollback", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits)
}

/// (a) A derived column edited (the stored `rollback_uri` of a checkpoint), the token left
/// alone: the rollback calls the URI the agent signed, blast radius shows it, and the live
/// audit finds the edit through the API and in the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_rollback_uri_column_is_not_called_and_is_found() {
    for (s, kind) in servers().await.into_iter().zip(test_kinds()) {
        let (signed_uri, signed_hits) = counting_endpoint().await;
        let (edited_uri, edited_hits) = counting_endpoint().await;
        let mut cp = checkpoint_claims("a", "ta-cp", "wf-ta", &[]);
        cp["ext"]["cascade.rollback_uri"] = json!(signed_uri);
        let act = claims("a", "ta-act", "wf-ta", "act", &["ta-cp"]);
        post_batch(&s, &[s.sign(&cp), s.sign(&act)]).await;
        let (code, lines) = verify_live(&s, &["--database-url", s.database_url()]).await;
        assert_eq!(
            code,
            Some(0),
            "{}: clean before the attack: {lines:?}",
            s.name
        );

        let mut ext = cp["ext"].clone();
        ext["cascade.rollback_uri"] = json!(edited_uri);
        attack(
            &s,
            kind,
            &[format!("UPDATE ects SET ext = '{ext}' WHERE jti = 'ta-cp'")],
        )
        .await;

        let blast = get_json(&s, "/v1/ects/ta-cp/blast-radius").await;
        assert_eq!(
            blast["checkpoints"][0]["rollback_uri"], signed_uri,
            "{}: blast radius shows the signed URI",
            s.name
        );
        let r = s
            .client
            .post(s.url("/v1/rollbacks"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"checkpoint_id": "ta-cp", "scope": "single"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", s.name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while signed_hits.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            signed_hits.load(Ordering::SeqCst) > 0,
            "{}: the signed URI is called",
            s.name
        );
        assert_eq!(
            edited_hits.load(Ordering::SeqCst),
            0,
            "{}: the edited URI is never called",
            s.name
        );

        let (code, lines) = verify_live(&s, &[]).await;
        assert_eq!(code, Some(4), "{}: {lines:?}", s.name);
        assert!(
            any_line(&lines, "record  ta-cp  served ext"),
            "{}: the served record disagrees with its token: {lines:?}",
            s.name
        );
        let (code, lines) = verify_live(&s, &["--database-url", s.database_url()]).await;
        assert_eq!(code, Some(4), "{}", s.name);
        assert!(
            any_line(&lines, "tables  ta-cp  column ext is"),
            "{}: the column is named: {lines:?}",
            s.name
        );
    }
}

/// (b) A row and an edge inserted outside the chain: blast radius and rollbacks do not see
/// them; the live audit lists the record as not chained, and the tables check the row and edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_and_edge_outside_the_chain_are_ignored_and_found() {
    for (s, kind) in servers().await.into_iter().zip(test_kinds()) {
        let cp = checkpoint_claims("a", "tb-cp", "wf-tb", &[]);
        post_batch(&s, &[s.sign(&cp)]).await;
        // A token the attacker got signed (or copied) but never sent through ingest.
        let forged = s.sign(&checkpoint_claims("b", "tb-forged", "wf-tb", &["tb-cp"]));
        let (header, ect) = decoded(&forged);
        attack(
            &s,
            kind,
            &[
                format!(
                    "INSERT INTO ects (jti, wid, iss, sub, exec_act, parents, iat, exp, out_hash, \
                     ext, token, kid, content_hash, received_at) VALUES ('tb-forged', 'wf-tb', \
                     '{iss}', NULL, 'checkpoint', '[\"tb-cp\"]', {iat}, {exp}, NULL, '{ext}', \
                     '{forged}', '{kid}', '{hash}', '2026-01-01T00:00:00Z')",
                    iss = ect["iss"].as_str().unwrap(),
                    iat = ect["iat"],
                    exp = ect["exp"],
                    ext = ect["ext"],
                    kid = header["kid"].as_str().unwrap(),
                    hash = chain::token_hash(&forged),
                ),
                "INSERT INTO ect_edges (parent, child, wid) VALUES ('tb-cp', 'tb-forged', 'wf-tb')"
                    .into(),
            ],
        )
        .await;

        let blast = get_json(&s, "/v1/ects/tb-cp/blast-radius").await;
        assert_eq!(
            blast["nodes"],
            json!(["tb-cp"]),
            "{}: blast radius lists chained nodes only",
            s.name
        );
        let r = s
            .client
            .post(s.url("/v1/rollbacks"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"checkpoint_id": "tb-forged", "scope": "single"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "{}: a row outside the chain cannot be rolled back",
            s.name
        );

        let (code, lines) = verify_live(&s, &["--database-url", s.database_url()]).await;
        assert_eq!(code, Some(4), "{}: {lines:?}", s.name);
        for needle in [
            "record  tb-forged  served by the API but not in the chain",
            "tables  tb-forged  ects row",
            "tables  tb-forged  edge tb-cp -> tb-forged",
            "tables  -  ects has 2 rows, the chain 1 entries",
        ] {
            assert!(any_line(&lines, needle), "{}: {needle}: {lines:?}", s.name);
        }
    }
}

/// The SQL that removes entry `removed` (0-based) of `entries` (jti, token) and recomputes the
/// chain after it, head included.
fn remove_and_rechain(entries: &[(String, String)], removed: usize) -> Vec<String> {
    let (jti, _) = &entries[removed];
    let mut sql = vec![
        format!("DELETE FROM ects WHERE jti = '{jti}'"),
        format!("DELETE FROM ect_edges WHERE parent = '{jti}' OR child = '{jti}'"),
        format!("DELETE FROM ledger_chain WHERE seq > {removed}"),
    ];
    let mut prev = chain::GENESIS.to_string();
    for (_, token) in &entries[..removed] {
        prev = chain::next(&prev, &chain::token_hash(token)).unwrap();
    }
    let mut seq = removed as i64;
    for (j, token) in &entries[removed + 1..] {
        seq += 1;
        prev = chain::next(&prev, &chain::token_hash(token)).unwrap();
        sql.push(format!(
            "INSERT INTO ledger_chain (seq, jti, chain_hash) VALUES ({seq}, '{j}', '{prev}')"
        ));
    }
    sql.push(format!(
        "UPDATE ledger_head SET seq = {seq}, chain_hash = '{prev}'"
    ));
    sql
}

/// (c) An entry deleted and the chain after it recomputed, head included: consistent with
/// itself, so only a head saved earlier shows it; `--head` takes a saved head, a receipt, or
/// the heads file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recomputed_chain_is_caught_by_a_saved_head_or_receipt() {
    for (s, kind) in servers().await.into_iter().zip(test_kinds()) {
        let tokens: Vec<(String, String)> = ["tc-1", "tc-2", "tc-3", "tc-4"]
            .iter()
            .map(|j| (j.to_string(), s.sign(&claims("a", j, "wf-tc", "plan", &[]))))
            .collect();
        // One token sent alone, for its signed receipt.
        let r = s.post_token(&tokens[0].1).await;
        assert_eq!(r.status(), 201);
        let answer: Value = r.json().await.unwrap();
        post_batch(
            &s,
            &tokens[1..]
                .iter()
                .map(|(_, t)| t.clone())
                .collect::<Vec<_>>(),
        )
        .await;
        let head = get_json(&s, "/v1/ledger/head").await;
        assert_eq!(head["seq"], 4);
        let head_file = s.dir.join("saved-head.json");
        std::fs::write(&head_file, head.to_string()).unwrap();
        let receipt_file = s.dir.join("receipt.json");
        std::fs::write(&receipt_file, answer.to_string()).unwrap();
        let (code, lines) = verify_live(&s, &["--head", head_file.to_str().unwrap()]).await;
        assert_eq!(code, Some(0), "{}: {lines:?}", s.name);

        let mut sql = remove_and_rechain(&tokens, 1);
        sql.push("UPDATE workflows SET nodes = 3 WHERE wid = 'wf-tc'".into());
        attack(&s, kind, &sql).await;

        // Consistent with itself: the walk and every table agree.
        let (code, lines) = verify_live(&s, &["--database-url", s.database_url()]).await;
        assert_eq!(code, Some(0), "{}: {lines:?}", s.name);
        // The saved head is not.
        let (code, lines) = verify_live(&s, &["--head", head_file.to_str().unwrap()]).await;
        assert_eq!(code, Some(4), "{}: {lines:?}", s.name);
        assert!(
            any_line(&lines, "names entry 4; the ledger's head is entry 3"),
            "{}: {lines:?}",
            s.name
        );
        // A receipt of an entry before the removed one still holds: entry 1 is unchanged.
        let (code, lines) = verify_live(&s, &["--head", receipt_file.to_str().unwrap()]).await;
        assert_eq!(code, Some(0), "{}: entry 1 is untouched: {lines:?}", s.name);
    }
}

/// (d) The backfill flag set again with a forged row waiting: a restart does not chain it,
/// and the tables check names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rearmed_backfill_never_chains_a_forged_row() {
    for (s, kind) in servers().await.into_iter().zip(test_kinds()) {
        post_batch(&s, &[s.sign(&claims("a", "td-1", "wf-td", "plan", &[]))]).await;
        let forged = s.sign(&claims("a", "td-forged", "wf-td", "act", &["td-1"]));
        let (header, ect) = decoded(&forged);
        let flag = match kind {
            DbKind::Sqlite => "1",
            DbKind::Postgres => "true",
        };
        attack(
            &s,
            kind,
            &[
                format!(
                    "INSERT INTO ects (jti, wid, iss, sub, exec_act, parents, iat, exp, out_hash, \
                     ext, token, kid, content_hash, received_at) VALUES ('td-forged', 'wf-td', \
                     '{iss}', NULL, 'act', '[\"td-1\"]', {iat}, {exp}, NULL, '{{}}', '{forged}', \
                     '{kid}', '{hash}', '2026-01-01T00:00:00Z')",
                    iss = ect["iss"].as_str().unwrap(),
                    iat = ect["iat"],
                    exp = ect["exp"],
                    kid = header["kid"].as_str().unwrap(),
                    hash = chain::token_hash(&forged),
                ),
                format!("UPDATE ledger_head SET backfill = {flag}"),
            ],
        )
        .await;
        // What a restart does first.
        s.store.migrate().await.unwrap();
        assert!(
            s.store
                .chain_entries(&["td-forged".into()])
                .await
                .unwrap()
                .is_empty(),
            "{}: the forged row is not chained",
            s.name
        );
        assert_eq!(s.store.chain_head().await.unwrap().seq, 1, "{}", s.name);
        let (code, lines) = verify_live(&s, &["--database-url", s.database_url()]).await;
        assert_eq!(code, Some(4), "{}: {lines:?}", s.name);
        assert!(
            any_line(
                &lines,
                "asks for the one-time backfill although the chain exists"
            ),
            "{}: {lines:?}",
            s.name
        );
        assert!(
            any_line(&lines, "tables  td-forged  ects row"),
            "{}: {lines:?}",
            s.name
        );
    }
}

/// A real `unwind serve` pins its signed head every `ledger.head_interval_s`: a line of
/// `ledger-heads.jsonl` and a signed `ledger.head` webhook; the file then catches a chain
/// recomputed behind Unwind's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_are_pinned_to_a_file_and_a_webhook_and_catch_a_recomputed_chain() {
    for kind in test_kinds() {
        let receiver = Receiver::start().await;
        let extra: &'static str = Box::leak(
            format!(
                "[ledger]\nhead_interval_s = 1\n\n[hitl]\npoll_ms = 100\n\n[[hitl.webhooks]]\n\
                 url = {:?}\nsecret = {SECRET:?}\n",
                receiver.url
            )
            .into_boxed_str(),
        );
        let setup = ServeSetup::new(ServeOptions {
            database: Some(kind),
            extra,
            ..Default::default()
        })
        .await;
        let serve = setup.start("a").await;
        let sign = |jti: &str, par: &[&str]| {
            let mut c = claims("a", jti, "wf-hp", "plan", par);
            c["aud"] = json!([COORDINATOR_ID]);
            setup.agent_key.sign_ect(&c, Profile::Draft00).unwrap()
        };
        let tokens = [sign("hp-1", &[]), sign("hp-2", &[]), sign("hp-3", &[])];
        let (status, body) = serve.post("/v1/ects", json!({"tokens": tokens})).await;
        assert_eq!(status, 200, "{body}");

        let heads_file = setup.data_dir("a").join("ledger-heads.jsonl");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let pinned = loop {
            let text = std::fs::read_to_string(&heads_file).unwrap_or_default();
            let last: Option<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .next_back();
            let webhook = receiver.received().into_iter().find(|r| {
                r.body.contains("\"type\":\"ledger.head\"") && r.body.contains("\"seq\":3")
            });
            if let (Some(head), Some(hook)) = (&last, &webhook)
                && head["seq"] == 3
            {
                break (head.clone(), hook.clone());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind:?}: no pinned head at seq 3: file {text:?}, {} webhooks",
                receiver.received().len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (head, hook) = pinned;
        assert!(
            signature_verifies(SECRET.as_bytes(), &hook.signature, &hook.body),
            "the webhook is signed"
        );
        let event: Value = serde_json::from_str(&hook.body).unwrap();
        assert_eq!(event["type"], "ledger.head");
        assert_eq!(event["head"]["seq"], 3);
        assert_eq!(event["head"]["chain_hash"], head["chain_hash"]);
        let served = serve.get("/v1/ledger/head").await;
        assert_eq!(served["chain_hash"], head["chain_hash"], "{kind:?}");

        let verify = |more: Vec<String>| {
            let base = serve.base().to_string();
            async move {
                let mut c = unwind();
                c.args([
                    "verify",
                    "--live",
                    "--url",
                    &base,
                    "--token",
                    OPERATOR_TOKEN,
                ])
                .args(more);
                run_cli(c).await
            }
        };
        let file_arg = vec!["--head".to_string(), heads_file.display().to_string()];
        let out = verify(file_arg.clone()).await;
        assert_eq!(out.code, Some(0), "{kind:?}: {}", out.stdout);

        // Entry 2 removed, entry 3 re-chained at position 2, the head moved: self-consistent.
        let t1 = chain::token_hash(&tokens[0]);
        let h1 = chain::next(chain::GENESIS, &t1).unwrap();
        let h2 = chain::next(&h1, &chain::token_hash(&tokens[2])).unwrap();
        let url = setup.database_url.clone().unwrap();
        let statements = [
            "DELETE FROM ects WHERE jti = 'hp-2'".to_string(),
            "DELETE FROM ledger_chain WHERE seq > 1".to_string(),
            format!("INSERT INTO ledger_chain (seq, jti, chain_hash) VALUES (2, 'hp-3', '{h2}')"),
            format!("UPDATE ledger_head SET seq = 2, chain_hash = '{h2}'"),
            "UPDATE workflows SET nodes = 2 WHERE wid = 'wf-hp'".to_string(),
        ];
        match kind {
            DbKind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                for q in [
                    "DROP TRIGGER ects_no_delete",
                    "DROP TRIGGER ledger_chain_no_delete",
                ]
                .iter()
                .map(|q| q.to_string())
                .chain(statements)
                {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(q))
                        .execute(&mut c)
                        .await
                        .unwrap();
                }
            }
            DbKind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                for q in [
                    "ALTER TABLE ects DISABLE TRIGGER ects_append_only",
                    "ALTER TABLE ledger_chain DISABLE TRIGGER ledger_chain_append_only",
                ]
                .iter()
                .map(|q| q.to_string())
                .chain(statements)
                {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(q))
                        .execute(&mut c)
                        .await
                        .unwrap();
                }
            }
        }
        let mut with_db = vec!["--database-url".to_string(), url.clone()];
        let out = verify(with_db.clone()).await;
        assert_eq!(
            out.code,
            Some(0),
            "{kind:?}: consistent with itself: {}",
            out.stdout
        );
        with_db.extend(file_arg);
        let out = verify(with_db).await;
        assert_eq!(out.code, Some(4), "{kind:?}: {}", out.stdout);
        assert!(
            out.stdout
                .contains("names entry 3; the ledger's head is entry 2"),
            "{kind:?}: {}",
            out.stdout
        );
        drop(serve);
    }
}
