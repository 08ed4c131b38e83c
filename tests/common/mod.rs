//! Test support shared by the integration tests: fresh, isolated databases for every back end.
//!
//! SQLite always runs (a file in a temporary directory). PostgreSQL runs when
//! `UNWIND_TEST_POSTGRES_URL` names a server whose role may create databases (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`); every call creates a new database there, so
//! tests never see each other's rows. On CI (`CI` set) the PostgreSQL URL is required.

#![allow(dead_code)]

pub mod agents;
pub mod browser;
pub mod fault_proxy;
pub mod pg_cluster;
pub mod process;
pub mod receiver;
pub mod server;
pub mod tokens;

use std::sync::Arc;

use sqlx::Connection as _;
use tempfile::TempDir;
use unwind::store::{self, Store};

/// Environment variable naming the PostgreSQL server used by tests.
pub const POSTGRES_ENV: &str = "UNWIND_TEST_POSTGRES_URL";

/// Prefix of the databases created by tests (`unwind_t_<uuid>`).
pub const DATABASE_PREFIX: &str = "unwind_t_";

/// A database back end tests can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

/// A fresh migrated store. Keeps its temporary directory alive and drops its PostgreSQL
/// database when dropped.
pub struct TestStore {
    pub name: &'static str,
    pub kind: DbKind,
    pub url: String,
    pub store: Arc<dyn Store>,
    _dir: Option<TempDir>,
    _pg: Option<PgDatabaseGuard>,
}

/// The PostgreSQL server URL for tests, if configured. Panics on CI when it is missing: CI must
/// run the PostgreSQL tests, not skip them silently.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                !on_ci(),
                "CI is set but {POSTGRES_ENV} is not: the PostgreSQL tests must run on CI \
                 (e.g. {POSTGRES_ENV}=postgres://postgres@127.0.0.1:5432/postgres)"
            );
            None
        }
    }
}

/// True on CI (`CI` set), where tests that need a service must not skip.
pub fn on_ci() -> bool {
    std::env::var("CI").map(|v| !v.is_empty()).unwrap_or(false)
}

/// The back ends available to this test run: SQLite, plus PostgreSQL when configured.
pub fn test_kinds() -> Vec<DbKind> {
    let mut kinds = vec![DbKind::Sqlite];
    if postgres_admin_url().is_some() {
        kinds.push(DbKind::Postgres);
    }
    kinds
}

/// One fresh, migrated store per available back end.
pub async fn test_stores() -> Vec<TestStore> {
    let mut stores = Vec::new();
    for kind in test_kinds() {
        stores.push(test_store(kind).await);
    }
    stores
}

/// A fresh, migrated store of one kind.
pub async fn test_store(kind: DbKind) -> TestStore {
    let ts = unmigrated_store(kind).await;
    ts.store.migrate().await.expect("migrate test database");
    ts
}

/// A fresh store whose database has no schema yet.
pub async fn unmigrated_store(kind: DbKind) -> TestStore {
    let (url, dir) = fresh_database_url(kind).await;
    let pg = match kind {
        DbKind::Postgres => Some(PgDatabaseGuard { url: url.clone() }),
        DbKind::Sqlite => None,
    };
    let store = store::connect(&url)
        .await
        .expect("connect to test database");
    TestStore {
        name: kind.name(),
        kind,
        url,
        store,
        _dir: dir,
        _pg: pg,
    }
}

/// The URL of a fresh, empty database (no schema), for tests that start the server process
/// themselves. For SQLite the database file lives in the returned directory (keep it alive);
/// for PostgreSQL a new database is created — remove it with [`drop_database`] when done.
/// Panics for PostgreSQL when it is not configured.
pub async fn fresh_database_url(kind: DbKind) -> (String, Option<TempDir>) {
    match kind {
        DbKind::Sqlite => {
            let dir = tempfile::tempdir().expect("temporary directory");
            let url = format!("sqlite://{}", dir.path().join("unwind.db").display());
            (url, Some(dir))
        }
        DbKind::Postgres => {
            let admin = postgres_admin_url()
                .unwrap_or_else(|| panic!("{POSTGRES_ENV} is not set: no PostgreSQL for tests"));
            let name = format!("{DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to the PostgreSQL test server");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database (the role needs CREATEDB)");
            let _ = conn.close().await;
            (with_database(&admin, &name), None)
        }
    }
}

/// Drops a PostgreSQL test database made by [`fresh_database_url`], closing its connections.
/// Only databases named with [`DATABASE_PREFIX`] are dropped.
pub async fn drop_database(url: &str) {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let Some(name) = database_of(url) else {
        return;
    };
    if !name.starts_with(DATABASE_PREFIX)
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return;
    }
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn database_of(url: &str) -> Option<String> {
    let base = url.split('?').next()?;
    let authority_start = base.find("://")? + 3;
    let slash = base[authority_start..].find('/')? + authority_start;
    Some(base[slash + 1..].to_string())
}

/// Drops the test database when the [`TestStore`] goes away, even when the test panicked.
/// Drop cannot await, so the drop runs on a short-lived thread with its own runtime.
struct PgDatabaseGuard {
    url: String,
}

impl Drop for PgDatabaseGuard {
    fn drop(&mut self) {
        if std::env::var_os("UNWIND_TEST_KEEP_DB").is_some() {
            return;
        }
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&url));
            }
        })
        .join();
    }
}

/// Walks the whole hash chain and recomputes every entry (positions without gaps, each linked to
/// the previous and recomputing from its token); returns the jtis in chain order.
pub async fn walk_chain(store: &dyn Store) -> Vec<String> {
    let mut head = unwind::ledger::chain::ChainHead::genesis();
    let mut jtis = Vec::new();
    loop {
        let page = store.chain_range(head.seq, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        for (entry, token) in page {
            assert_eq!(entry.seq, head.seq + 1, "positions have no gaps");
            assert_eq!(
                entry.prev_hash, head.chain_hash,
                "entry {} links",
                entry.seq
            );
            let token = token.expect("every entry has its token");
            let hash = unwind::ledger::chain::next(
                &head.chain_hash,
                &unwind::ledger::chain::token_hash(&token),
            )
            .unwrap();
            assert_eq!(entry.chain_hash, hash, "entry {} recomputes", entry.seq);
            head = unwind::ledger::chain::ChainHead {
                seq: entry.seq,
                chain_hash: entry.chain_hash,
            };
            jtis.push(entry.jti);
        }
    }
    assert_eq!(
        store.chain_head().await.unwrap(),
        head,
        "the head is the last entry"
    );
    jtis
}

/// Builders for ledger rows, so tests need no signing.
pub mod ects {
    use serde_json::{Map, Value, json};
    use unwind::store::NewEct;

    /// A token of workflow `wid` with the given parents; content derived from `jti` and `salt`
    /// (another salt = other content for the same jti).
    pub fn new_ect(jti: &str, wid: Option<&str>, parents: &[&str], salt: &str) -> NewEct {
        let iat = 1_700_000_000;
        let mut ext = Map::new();
        ext.insert("note".into(), json!(format!("{jti}-{salt}")));
        signed_as_stored(
            NewEct {
                jti: jti.to_string(),
                wid: wid.map(str::to_string),
                iss: "spiffe://example.com/agent/a".to_string(),
                sub: None,
                exec_act: "act".to_string(),
                parents: parents.iter().map(|p| p.to_string()).collect(),
                iat,
                exp: iat + 600,
                out_hash: None,
                ext,
                content_hash: String::new(),
                token: String::new(),
                kid: "k1".to_string(),
            },
            salt,
        )
    }

    /// A checkpoint with the cascade draft's ext members.
    pub fn checkpoint(jti: &str, wid: &str, parents: &[&str], iss: &str) -> NewEct {
        let mut e = new_ect(jti, Some(wid), parents, "cp");
        e.exec_act = "checkpoint".into();
        e.iss = iss.into();
        e.ext.insert("cascade.reversible".into(), Value::Bool(true));
        e.ext.insert(
            "cascade.rollback_uri".into(),
            json!("https://agent.example/.well-known/cascade/rollback"),
        );
        signed_as_stored(e, "cp")
    }

    /// Gives a row the token its columns describe (the graph is read from the token, as a
    /// stored token is the signed truth), with `salt` as the stand-in signature.
    pub fn signed_as_stored(mut e: NewEct, salt: &str) -> NewEct {
        let mut claims = Map::new();
        claims.insert("jti".into(), json!(e.jti));
        claims.insert("iss".into(), json!(e.iss));
        claims.insert("aud".into(), json!("spiffe://unwind.local/coordinator"));
        claims.insert("exec_act".into(), json!(e.exec_act));
        claims.insert("par".into(), json!(e.parents));
        claims.insert("iat".into(), json!(e.iat));
        claims.insert("exp".into(), json!(e.exp));
        claims.insert("ext".into(), Value::Object(e.ext.clone()));
        if let Some(w) = &e.wid {
            claims.insert("wid".into(), json!(w));
        }
        e.token = token_of(&claims, salt);
        e.content_hash = sha256_hex(&e.token);
        e
    }

    /// A compact-JWS-shaped token whose payload is `claims` (the store reads claims back from
    /// the token); the signature part is a stand-in, the store does not verify.
    pub fn token_of(claims: &Map<String, Value>, salt: &str) -> String {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let payload = serde_json::to_vec(claims).expect("claims serialise");
        format!(
            "eyJhbGciOiJFUzI1NiJ9.{}.{}",
            b64(&payload),
            b64(salt.as_bytes())
        )
    }

    /// Lowercase hex SHA-256 of the token, as ingest computes `content_hash`.
    pub fn sha256_hex(token: &str) -> String {
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            token.as_bytes(),
        ))
    }
}
