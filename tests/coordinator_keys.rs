//! The coordinator's signing key kept in the store (api.md "Signed records Unwind emits"): one
//! key for every replica of a database, made once even when replicas start together; a key file
//! of an earlier version imported so its evidence still verifies; `signing_key_file` used when
//! configured; `/.well-known/jwks.json` listing every key not retired (a retired one leaves
//! it). On every configured back end.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::agents::served_jwks;
use common::process::{ServeOptions, ServeSetup};
use common::server::{
    READER_TOKEN, TestServer, claims, servers, servers_with, start_on_same_database,
};
use common::{DbKind, test_stores};
use serde_json::Value;
use unwind::ect::{KeyAlg, Profile, SigningKey};
use unwind::store::{self as store_mod, NewKey, Store};

fn offer(key: &SigningKey) -> NewKey {
    NewKey {
        kid: key.kid().to_string(),
        alg: "ES256".into(),
        private_jwk: key.to_private_jwk_json(),
    }
}

fn kids(jwks: &Value) -> Vec<String> {
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    kids.sort();
    kids
}

async fn jwks(s: &TestServer) -> Value {
    serde_json::to_value(served_jwks(&s.client, &s.base).await).unwrap()
}

/// The kid in the header of the signed ledger head: the key the server signs with now.
async fn signing_kid(s: &TestServer) -> String {
    let head: Value = s
        .client
        .get(s.url("/v1/ledger/head"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sig = head["sig"].as_str().unwrap();
    jsonwebtoken::decode_header(sig).unwrap().kid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_offered_key_becomes_active_when_writers_race() {
    for ts in test_stores().await {
        let name = ts.name;
        // Three connections of their own, as three replicas would have.
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        for _ in 0..3 {
            stores.push(store_mod::connect(&ts.url).await.unwrap());
        }
        assert_eq!(ts.store.active_key().await.unwrap(), None, "{name}");
        let keys: Vec<SigningKey> = (0..3)
            .map(|_| SigningKey::generate(KeyAlg::ES256).unwrap())
            .collect();
        let tasks: Vec<_> = stores
            .iter()
            .zip(&keys)
            .map(|(store, key)| {
                let store = store.clone();
                let key = offer(key);
                tokio::spawn(async move { store.ensure_active_key(&key).await.unwrap() })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            winners.push(task.await.unwrap());
        }
        assert!(
            winners.iter().all(|w| w == &winners[0]),
            "{name}: {winners:?}"
        );
        let winner = &winners[0];
        assert!(winner.active && winner.retired_at_ms.is_none(), "{name}");
        assert!(keys.iter().any(|k| k.kid() == winner.kid), "{name}");
        let key = SigningKey::from_private_jwk_json(&winner.private_jwk).unwrap();
        assert_eq!(key.kid(), winner.kid, "{name}");
        assert_eq!(
            ts.store.unretired_keys().await.unwrap(),
            vec![winner.clone()],
            "{name}: losers are not stored"
        );

        // Later offers change nothing; an added key is trusted, not active.
        let again = ts.store.ensure_active_key(&offer(&keys[2])).await;
        assert_eq!(again.unwrap().kid, winner.kid, "{name}");
        let older = SigningKey::generate(KeyAlg::ES256).unwrap();
        ts.store.add_key(&offer(&older)).await.unwrap();
        ts.store.add_key(&offer(&older)).await.unwrap();
        ts.store.add_key(&offer(&key)).await.unwrap();
        let listed = ts.store.unretired_keys().await.unwrap();
        assert_eq!(listed.len(), 2, "{name}: {listed:?}");
        assert_eq!(
            ts.store.active_key().await.unwrap().unwrap().kid,
            winner.kid,
            "{name}"
        );
        assert!(
            listed.iter().any(|k| k.kid == older.kid() && !k.active),
            "{name}: {listed:?}"
        );

        let bad = NewKey {
            kid: String::new(),
            ..offer(&older)
        };
        assert!(
            matches!(
                ts.store.add_key(&bad).await,
                Err(store_mod::StoreError::Invalid(_))
            ),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_store_sign_with_one_stored_key() {
    for first in servers().await {
        let name = first.name;
        let second = start_on_same_database(&first, &|_| {}).await;
        let (a, b) = (jwks(&first).await, jwks(&second).await);
        assert_eq!(kids(&a).len(), 1, "{name}: {a}");
        assert_eq!(kids(&a), kids(&b), "{name}");
        let kid = signing_kid(&first).await;
        assert_eq!(kids(&a), vec![kid.clone()], "{name}");
        assert_eq!(signing_kid(&second).await, kid, "{name}");
        // Kept in the store, not in a data directory.
        for s in [&first, &second] {
            assert!(!s.dir.join("data/coordinator.jwk").exists(), "{name}");
        }
        let stored = first.store.active_key().await.unwrap().unwrap();
        assert_eq!(stored.kid, kid, "{name}");
    }
}

fn write_key(dir: &Path) -> SigningKey {
    let key = SigningKey::generate(KeyAlg::ES256).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("coordinator.jwk"), key.to_private_jwk_json()).unwrap();
    key
}

/// A token `iss` = the coordinator, signed by `key`: accepted only if the server trusts `key`.
fn coordinator_token(s: &TestServer, key: &SigningKey) -> String {
    let mut c = claims(
        "x",
        &uuid::Uuid::new_v4().to_string(),
        &common::agents::wid(),
        "task",
        &[],
    );
    c.insert("iss".into(), s.coordinator_id.clone().into());
    key.sign_ect(&c, Profile::Draft00).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_of_an_earlier_version_keeps_verifying() {
    let tmp = tempfile::tempdir().unwrap();
    let (old_one, old_two) = (tmp.path().join("one"), tmp.path().join("two"));
    let key_one = write_key(&old_one);
    let key_two = write_key(&old_two);
    let dir = old_one.clone();
    for first in servers_with(move |c| c.data_dir = dir.clone()).await {
        let name = first.name;
        // The store had no key: the old file's key became the active one.
        assert_eq!(signing_kid(&first).await, key_one.kid(), "{name}");
        assert_eq!(kids(&jwks(&first).await), vec![key_one.kid().to_string()]);

        // A second replica with another old key: the store's key wins, the old one stays
        // trusted and listed.
        let dir = old_two.clone();
        let second = start_on_same_database(&first, &move |c| c.data_dir = dir.clone()).await;
        assert_eq!(signing_kid(&second).await, key_one.kid(), "{name}");
        let mut both = vec![key_one.kid().to_string(), key_two.kid().to_string()];
        both.sort();
        assert_eq!(kids(&jwks(&second).await), both, "{name}");
        assert_eq!(
            kids(&jwks(&first).await),
            both,
            "{name}: read from the store"
        );
        let response = second
            .post_token(&coordinator_token(&second, &key_two))
            .await;
        assert_eq!(response.status(), 201, "{name}: old key's token refused");
        let stranger = SigningKey::generate(KeyAlg::ES256).unwrap();
        let response = second
            .post_token(&coordinator_token(&second, &stranger))
            .await;
        assert_eq!(response.status(), 422, "{name}: unknown key accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_file_signs_and_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let file_key = write_key(tmp.path());
    let path = tmp.path().join("coordinator.jwk");
    for s in servers_with(move |c| c.signing_key_file = Some(path.clone())).await {
        let name = s.name;
        assert_eq!(signing_kid(&s).await, file_key.kid(), "{name}");
        assert_eq!(
            kids(&jwks(&s).await),
            vec![file_key.kid().to_string()],
            "{name}"
        );
        assert_eq!(s.store.active_key().await.unwrap(), None, "{name}");
    }
}

/// Three `unwind serve` processes started at once on one PostgreSQL database, none with a key
/// file: one key is generated, and all three serve and sign with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_starting_together_share_one_key() {
    if common::postgres_admin_url().is_none() {
        eprintln!(
            "three_processes_starting_together_share_one_key: skipped (set {})",
            common::POSTGRES_ENV
        );
        return;
    }
    let setup = ServeSetup::new(ServeOptions {
        database: Some(DbKind::Postgres),
        ..Default::default()
    })
    .await;
    let (a, b, c) = tokio::join!(setup.start("a"), setup.start("b"), setup.start("c"));
    let client = reqwest::Client::new();
    let mut sets = Vec::new();
    for p in [&a, &b, &c] {
        let set = common::agents::served_jwks(&client, p.base()).await;
        let kids: Vec<_> = set
            .keys
            .iter()
            .map(|k| k.common.key_id.clone().unwrap())
            .collect();
        assert!(
            !p.data_dir.join("coordinator.jwk").exists(),
            "a key file was written"
        );
        sets.push(kids);
    }
    assert_eq!(sets[0].len(), 1, "{sets:?}");
    assert!(sets.iter().all(|s| s == &sets[0]), "{sets:?}");
    let created = [&a, &b, &c]
        .iter()
        .filter(|p| p.printed.contains(", created)"))
        .count();
    assert_eq!(created, 1, "exactly one replica creates the key");
}

/// A key retired through the store leaves `/.well-known/jwks.json` at once (it is read at each
/// request), and a replica started afterwards neither publishes nor trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_leaves_the_published_key_set() {
    for s in servers().await {
        let name = s.name;
        let active = signing_kid(&s).await;
        let older = SigningKey::generate(KeyAlg::ES256).unwrap();
        s.store.add_key(&offer(&older)).await.unwrap();
        let mut both = vec![active.clone(), older.kid().to_string()];
        both.sort();
        assert_eq!(kids(&jwks(&s).await), both, "{name}");

        assert!(s.store.retire_key(older.kid()).await.unwrap(), "{name}");
        assert!(
            !s.store.retire_key(older.kid()).await.unwrap(),
            "{name}: retired twice"
        );
        assert!(
            !s.store.retire_key("no-such-kid").await.unwrap(),
            "{name}: unknown kid"
        );
        assert_eq!(kids(&jwks(&s).await), vec![active.clone()], "{name}");
        let all = s.store.all_keys().await.unwrap();
        let retired = all.iter().find(|k| k.kid == older.kid()).unwrap();
        assert!(
            retired.retired_at_ms.is_some() && !retired.active,
            "{name}: {retired:?}"
        );

        let second = start_on_same_database(&s, &|_| {}).await;
        assert_eq!(kids(&jwks(&second).await), vec![active.clone()], "{name}");
        let response = second.post_token(&coordinator_token(&second, &older)).await;
        assert_eq!(
            response.status(),
            422,
            "{name}: a retired key still trusted"
        );
    }
}
