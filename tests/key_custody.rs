//! Custody of the coordinator's private key. `unwind serve` started under umask 022 keeps its
//! data directory (0700), embedded database with its WAL and shared memory, and admin token
//! (0600) to its owner, and takes others' access away again at start when it was widened. With
//! a passphrase the private keys in the store are sealed (both stores): the stored row never
//! holds the private `d`, a plaintext key left by an earlier start is sealed, and a wrong or
//! missing passphrase stops the start with a clear error.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::process::ServeProcess;
use common::server::{READER_TOKEN, TestServer, servers_with, start_on_same_database};
use serde_json::Value;
use unwind::ect::{KeyAlg, SigningKey};
use unwind::store::NewKey;

/// `unwind serve` under umask 022 (the usual default), data in `data`, with `env` set and no
/// other `UNWIND_*` variable; `Err` holds what it printed when it exited instead.
fn serve(data: &Path, env: &[(&str, &str)]) -> Result<ServeProcess, String> {
    let dir = data.parent().unwrap();
    ServeProcess::start_in_shell(dir, data, "umask 022", env)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The data directory and the secret files in it that exist.
fn private_paths(data: &Path) -> Vec<(PathBuf, u32)> {
    let mut paths = vec![(data.to_path_buf(), 0o700)];
    for name in ["unwind.db", "unwind.db-wal", "unwind.db-shm", "admin.token"] {
        let path = data.join(name);
        if path.exists() {
            paths.push((path, 0o600));
        }
    }
    paths
}

fn assert_private(data: &Path, context: &str) {
    let paths = private_paths(data);
    assert!(
        paths.len() >= 3,
        "{context}: database and token expected: {paths:?}"
    );
    for (path, expected) in paths {
        assert_eq!(
            mode(&path),
            expected,
            "{context}: {} is {:o}",
            path.display(),
            mode(&path)
        );
    }
}

async fn healthy(port: u16) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_serve_under_umask_022_keeps_its_data_to_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("unwind-data");
    let mut p = serve(&data, &[]).unwrap();
    healthy(p.port()).await;
    assert!(data.join("unwind.db-wal").exists(), "WAL mode expected");
    assert_private(&data, "fresh start");

    // Widened while it was down (killed: WAL and shared memory stay behind): narrowed again.
    p.sigkill();
    set_mode(&data, 0o755);
    for (path, _) in private_paths(&data).into_iter().skip(1) {
        set_mode(&path, 0o644);
    }
    let again = serve(&data, &[]).unwrap();
    healthy(again.port()).await;
    assert_private(&data, "restart");
}

/// The row of the active key, read from the store of a running or stopped server.
async fn active_row(s: &TestServer) -> String {
    s.store.active_key().await.unwrap().unwrap().private_jwk
}

/// A sealed row: an envelope with no `d` member anywhere and not the given secret in clear.
fn assert_sealed(row: &str, secret_d: Option<&str>, context: &str) {
    fn has_d(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.contains_key("d") || m.values().any(has_d),
            Value::Array(a) => a.iter().any(has_d),
            _ => false,
        }
    }
    let v: Value = serde_json::from_str(row).unwrap();
    assert_eq!(v["unwind_sealed_key"], 1, "{context}: {row}");
    assert!(!has_d(&v), "{context}: private d in clear: {row}");
    if let Some(d) = secret_d {
        assert!(!row.contains(d), "{context}: private d in clear");
    }
}

fn private_d(key: &SigningKey) -> String {
    let jwk: Value = serde_json::from_str(&key.to_private_jwk_json()).unwrap();
    jwk["d"].as_str().unwrap().to_string()
}

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
    jsonwebtoken::decode_header(head["sig"].as_str().unwrap())
        .unwrap()
        .kid
        .unwrap()
}

async fn served_kids(s: &TestServer) -> Vec<String> {
    let set = common::agents::served_jwks(&s.client, &s.base).await;
    let mut kids: Vec<String> = set
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect();
    kids.sort();
    kids
}

fn with_passphrase(file: PathBuf) -> impl Fn(&mut unwind::config::Config) {
    move |c| c.signing_key_passphrase_file = Some(file.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_passphrase_no_stored_row_holds_the_private_key_in_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("passphrase");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "incorrect horse\n").unwrap();

    // Fresh stores: the generated key is stored sealed.
    for s in servers_with(with_passphrase(pass.clone())).await {
        let name = s.name;
        assert_sealed(&active_row(&s).await, None, name);
        let kid = signing_kid(&s).await;
        assert_eq!(served_kids(&s).await, vec![kid.clone()], "{name}");
        // A replica with the passphrase signs with the same key.
        let second = start_on_same_database(&s, &with_passphrase(pass.clone())).await;
        assert_eq!(signing_kid(&second).await, kid, "{name}");
    }

    // Stores holding plaintext keys from before the passphrase: sealed at the next start.
    for first in servers_with(|_| {}).await {
        let name = first.name;
        let plain = active_row(&first).await;
        let plain_key = SigningKey::from_private_jwk_json(&plain).unwrap();
        let older = SigningKey::generate(KeyAlg::ES256).unwrap();
        first
            .store
            .add_key(&NewKey {
                kid: older.kid().to_string(),
                alg: "ES256".into(),
                private_jwk: older.to_private_jwk_json(),
            })
            .await
            .unwrap();
        let sealed = start_on_same_database(&first, &with_passphrase(pass.clone())).await;
        assert_eq!(signing_kid(&sealed).await, plain_key.kid(), "{name}");
        for row in sealed.store.all_keys().await.unwrap() {
            let d = if row.kid == older.kid() {
                private_d(&older)
            } else {
                private_d(&plain_key)
            };
            assert_sealed(&row.private_jwk, Some(&d), name);
        }
        let mut both = vec![plain_key.kid().to_string(), older.kid().to_string()];
        both.sort();
        assert_eq!(served_kids(&sealed).await, both, "{name}: published sealed");

        // A wrong passphrase, or none, stops the start with a clear error.
        let mut config = sealed.config.clone();
        config.signing_key_passphrase_file = Some(wrong.clone());
        let err = unwind::service::prepare(config.clone())
            .await
            .err()
            .expect("started with a wrong passphrase")
            .to_string();
        assert!(
            err.contains("cannot decrypt") && err.contains("wrong passphrase"),
            "{name}: {err}"
        );
        config.signing_key_passphrase_file = None;
        let err = unwind::service::prepare(config)
            .await
            .err()
            .expect("started without the passphrase")
            .to_string();
        assert!(err.contains("UNWIND_KEY_PASSPHRASE"), "{name}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passphrase_from_the_environment_seals_and_a_wrong_one_stops_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("unwind-data");
    let p = serve(&data, &[("UNWIND_KEY_PASSPHRASE", "correct horse")]).unwrap();
    healthy(p.port()).await;
    let url = format!("sqlite://{}", data.join("unwind.db").display());
    let store = unwind::store::connect(&url).await.unwrap();
    let row = store.active_key().await.unwrap().unwrap();
    assert_sealed(&row.private_jwk, None, "binary");
    drop(p);

    for (env, expected) in [
        (
            vec![("UNWIND_KEY_PASSPHRASE", "wrong horse")],
            "cannot decrypt",
        ),
        (vec![], "UNWIND_KEY_PASSPHRASE"),
    ] {
        let printed = match serve(&data, &env) {
            Ok(_) => panic!("started with {env:?}"),
            Err(printed) => printed,
        };
        assert!(printed.contains(expected), "{env:?}: {printed}");
        assert!(!printed.contains("panicked"), "{env:?}: {printed}");
    }
    let again = serve(&data, &[("UNWIND_KEY_PASSPHRASE", "correct horse")]).unwrap();
    healthy(again.port()).await;
}
