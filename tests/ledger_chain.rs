//! The tamper-evident ledger over HTTP, on both back ends: signed receipts on single and batch
//! ingest, `GET /v1/ledger/head` and `/v1/ledger/proof/{jti}`, and `unwind verify` naming the
//! first broken entry after a row was edited behind Unwind's back (trigger disabled).

mod common;

use base64::Engine as _;
use common::agents::served_jwks;
use common::process::{run_cli, unwind};
use common::server::{OPERATOR_TOKEN, TestServer, claims, servers};
use common::{DbKind, test_kinds};
use serde_json::{Value, json};
use sqlx::Connection as _;
use unwind::ledger::chain;

/// Checks a receipt's signature with the served JWKS and returns its claims.
async fn receipt_claims(s: &TestServer, sig: &str) -> Value {
    let jwks = served_jwks(&s.client, &s.base).await;
    let parts: Vec<&str> = sig.split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS");
    let decode = |p: &str| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let header = decode(parts[0]);
    let jwk = jwks.find(header["kid"].as_str().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let message = format!("{}.{}", parts[0], parts[1]);
    let ok = jsonwebtoken::crypto::verify(
        parts[2],
        message.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap();
    assert!(ok, "the receipt verifies with the coordinator's key");
    decode(parts[1])
}

async fn get(s: &TestServer, path: &str) -> reqwest::Response {
    s.client
        .get(s.url(path))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
}

async fn post_batch(s: &TestServer, tokens: &[String]) -> Value {
    let r = s
        .client
        .post(s.url("/v1/ects"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({ "tokens": tokens }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", s.name);
    r.json().await.unwrap()
}

#[tokio::test]
async fn receipts_head_and_proof() {
    for s in servers().await {
        let root = s.sign(&claims("a", "rc-root", "wf-rc", "plan", &[]));
        let r = s.post_token(&root).await;
        assert_eq!(r.status(), 201, "{}", s.name);
        let single: Value = r.json().await.unwrap();
        assert_eq!(single["receipt"]["seq"], 1, "{}", s.name);

        let child = s.sign(&claims("a", "rc-child", "wf-rc", "act", &["rc-root"]));
        let bad = s.sign(&claims("a", "rc-orphan", "wf-rc", "act", &["missing"]));
        let batch = post_batch(&s, &[child.clone(), root.clone(), bad]).await;
        let results = batch["results"].as_array().unwrap();
        assert_eq!(results[0]["status"], "created");
        assert_eq!(results[0]["receipt"]["seq"], 2, "{}", s.name);
        // A duplicate answers with the original entry.
        assert_eq!(results[1]["status"], "duplicate");
        assert_eq!(results[1]["receipt"]["seq"], 1);
        assert_eq!(
            results[1]["receipt"]["chain_hash"],
            single["receipt"]["chain_hash"]
        );
        assert_eq!(results[2]["status"], "rejected");
        assert!(
            results[2].get("receipt").is_none(),
            "no receipt for a refusal"
        );

        // A single token's receipt is signed alone.
        let signed = receipt_claims(&s, single["receipt"]["sig"].as_str().unwrap()).await;
        assert_eq!(signed["jti"], "rc-root");
        assert_eq!(signed["seq"], 1);
        assert_eq!(signed["chain_hash"], single["receipt"]["chain_hash"]);
        assert_eq!(signed["iss"], s.coordinator_id.as_str());
        assert!(signed["iat"].as_i64().unwrap() > 1_700_000_000);

        // A batch has one signature over every entry it answers with, in input order.
        assert!(
            results[0]["receipt"].get("sig").is_none(),
            "batch items are signed by the batch receipt"
        );
        let signed = receipt_claims(&s, batch["batch_receipt"].as_str().unwrap()).await;
        assert_eq!(signed["iss"], s.coordinator_id.as_str());
        assert!(signed["iat"].as_i64().unwrap() > 1_700_000_000);
        let entries = signed["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "created and duplicate, not the refusal");
        for (entry, item) in entries.iter().zip(&results[..2]) {
            assert_eq!(entry["jti"], item["jti"]);
            assert_eq!(entry["seq"], item["receipt"]["seq"]);
            assert_eq!(entry["chain_hash"], item["receipt"]["chain_hash"]);
        }
        let refused = post_batch(
            &s,
            &[s.sign(&claims("a", "rc-x", "wf-rc", "act", &["nope"]))],
        )
        .await;
        assert_eq!(refused["results"][0]["status"], "rejected");
        assert!(
            refused.get("batch_receipt").is_none(),
            "nothing to sign when every token is refused"
        );

        let head: Value = get(&s, "/v1/ledger/head").await.json().await.unwrap();
        assert_eq!(head["seq"], 2, "{}", s.name);
        assert_eq!(head["count"], 2);
        assert_eq!(head["chain_hash"], results[0]["receipt"]["chain_hash"]);
        let signed = receipt_claims(&s, head["sig"].as_str().unwrap()).await;
        assert_eq!(signed["chain_hash"], head["chain_hash"]);

        let proof: Value = get(&s, "/v1/ledger/proof/rc-child")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(proof["prev_hash"], single["receipt"]["chain_hash"]);
        let token = proof["token"].as_str().unwrap();
        assert_eq!(token, child);
        assert_eq!(proof["token_hash"], chain::token_hash(token).as_str());
        let recomputed = chain::next(
            proof["prev_hash"].as_str().unwrap(),
            &chain::token_hash(token),
        )
        .unwrap();
        assert_eq!(proof["chain_hash"], recomputed.as_str(), "{}", s.name);

        let r = get(&s, "/v1/ledger/proof/nope").await;
        assert_eq!(r.status(), 404);
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], "not_found");
        let r = s.client.get(s.url("/v1/ledger/head")).send().await.unwrap();
        assert_eq!(r.status(), 401, "a reader token is needed");

        // The chain in order, a page at a time, with the tokens.
        let page: Value = get(&s, "/v1/ledger/entries?limit=1")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["items"][0]["seq"], 1, "{}", s.name);
        assert_eq!(page["items"][0]["token"], root.as_str());
        assert_eq!(page["next_after"], 1);
        let page: Value = get(&s, "/v1/ledger/entries?after=1")
            .await
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{}: {page}", s.name);
        assert_eq!(items[0]["jti"], "rc-child");
        assert_eq!(items[0]["prev_hash"], single["receipt"]["chain_hash"]);
        assert!(page["next_after"].is_null(), "the last page says so");
        for bad in ["limit=0", "after=-1", "limit=1001"] {
            let r = get(&s, &format!("/v1/ledger/entries?{bad}")).await;
            assert_eq!(r.status(), 422, "{bad}");
            let problem: Value = r.json().await.unwrap();
            assert_eq!(problem["code"], "invalid_request", "{bad}");
        }
        let r = s
            .client
            .get(s.url("/v1/ledger/entries"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

/// The export of `wid`, written to a file in the server's directory.
async fn export(s: &TestServer, wid: &str, name: &str) -> std::path::PathBuf {
    let r = get(s, &format!("/v1/workflows/{wid}/export")).await;
    assert_eq!(r.status(), 200, "{}", s.name);
    let body = r.bytes().await.unwrap();
    let path = s.dir.join(name);
    std::fs::write(&path, &body).unwrap();
    path
}

async fn verify_lines(path: &std::path::Path) -> (Option<i32>, Vec<String>) {
    let mut c = unwind();
    c.arg("verify").arg(path);
    chain_lines(c).await
}

/// `unwind verify --live` against the running server.
async fn verify_live_lines(s: &TestServer) -> (Option<i32>, Vec<String>) {
    let mut c = unwind();
    c.args([
        "verify",
        "--live",
        "--url",
        &s.base,
        "--token",
        OPERATOR_TOKEN,
    ]);
    chain_lines(c).await
}

async fn chain_lines(c: std::process::Command) -> (Option<i32>, Vec<String>) {
    let out = run_cli(c).await;
    let chain_lines = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("chain  "))
        .map(str::to_string)
        .collect();
    (out.code, chain_lines)
}

/// Edits rows behind Unwind's back, with the append-only triggers out of the way.
async fn tamper(s: &TestServer, kind: DbKind, sql: &[&str]) {
    let url = s.database_url().to_string();
    match kind {
        DbKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for q in [
                "DROP TRIGGER ects_no_update",
                "DROP TRIGGER ledger_chain_no_update",
            ]
            .iter()
            .chain(sql)
            {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*q))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
        DbKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let disable = [
                "ALTER TABLE ects DISABLE TRIGGER ects_append_only",
                "ALTER TABLE ledger_chain DISABLE TRIGGER ledger_chain_append_only",
            ];
            for q in disable.iter().chain(sql) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*q))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn verify_names_the_first_broken_entry_after_a_row_is_edited() {
    let kinds = test_kinds();
    for (s, kind) in servers().await.into_iter().zip(kinds) {
        let a = s.sign(&claims("a", "tb-a", "wf-tb", "plan", &[]));
        let b = s.sign(&claims("a", "tb-b", "wf-tb", "act", &["tb-a"]));
        let c = s.sign(&claims("a", "tb-c", "wf-tb", "act", &["tb-b"]));
        let d = s.sign(&claims("a", "tb-d", "wf-tb", "act", &["tb-c"]));
        post_batch(&s, &[a, b, c, d.clone()]).await;

        let clean = export(&s, "wf-tb", "clean.json").await;
        let (code, lines) = verify_lines(&clean).await;
        assert_eq!(code, Some(0), "{}: {lines:?}", s.name);
        let (code, lines) = verify_live_lines(&s).await;
        assert_eq!(code, Some(0), "{}: live: {lines:?}", s.name);

        // Entry 2's token replaced by another valid token, and entry 3's stored hash changed.
        let edit_token = format!("UPDATE ects SET token = '{d}' WHERE jti = 'tb-b'");
        tamper(
            &s,
            kind,
            &[
                edit_token.as_str(),
                "UPDATE ledger_chain SET chain_hash = \
                 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff' WHERE seq = 3",
            ],
        )
        .await;
        let edited = export(&s, "wf-tb", "edited.json").await;
        let (code, lines) = verify_lines(&edited).await;
        assert_eq!(code, Some(4), "{}: findings exit code", s.name);
        assert!(
            lines[0].starts_with("chain  tb-b  chain entry 2 is broken"),
            "{}: the first finding names entry 2: {lines:?}",
            s.name
        );
        assert!(
            lines.iter().any(|l| l.contains("chain entry 3 is broken")),
            "{}: {lines:?}",
            s.name
        );

        // The live check walks the whole ledger: the same first entry, and entry 4 no
        // longer recomputes from the rewritten hash of entry 3.
        let (code, lines) = verify_live_lines(&s).await;
        assert_eq!(code, Some(4), "{}: live findings exit code", s.name);
        assert!(
            lines[0].starts_with("chain  tb-b  chain entry 2 is broken"),
            "{}: live: {lines:?}",
            s.name
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("chain  tb-d  chain entry 4 is broken")),
            "{}: live: {lines:?}",
            s.name
        );
    }
}
