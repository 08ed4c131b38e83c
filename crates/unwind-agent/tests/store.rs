//! The checkpoint store: quota, purge of expired checkpoints, encryption at rest, integrity.

mod common;

use std::sync::Arc;

use common::*;
use unwind_agent::store::now_unix;
use unwind_agent::{CheckpointStore, SnapshotKey, StoreError, StoreOptions};

#[tokio::test]
async fn quota_is_enforced() {
    let fx = Fixture::new();
    let mut options = fx.store_options();
    options.quota_bytes = 1000;
    let store = CheckpointStore::open(options).await.unwrap();
    let first = store.record(&[1u8; 600], 3600, None, true).await.unwrap();
    // 600 bytes + 12-byte nonce + 16-byte tag.
    assert_eq!(first.size, 628);
    assert_eq!(store.usage_bytes().await.unwrap(), 628);
    match store.record(&[2u8; 600], 3600, None, true).await {
        Err(StoreError::QuotaExceeded {
            used,
            requested,
            quota,
        }) => {
            assert_eq!((used, requested, quota), (628, 628, 1000));
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    // Smaller snapshots still fit.
    store.record(&[3u8; 300], 3600, None, true).await.unwrap();
    assert!(store.record(&[4u8; 100], 3600, None, true).await.is_err());
}

#[tokio::test]
async fn quota_holds_under_concurrent_records() {
    let fx = Fixture::new();
    let mut options = fx.store_options();
    options.quota_bytes = 10 * 128;
    let store = CheckpointStore::open(options).await.unwrap();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.record(&[0u8; 100], 3600, None, true).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(store.usage_bytes().await.unwrap(), 1280);
}

#[tokio::test]
async fn expired_checkpoints_are_purged_and_free_the_quota() {
    let fx = Fixture::new();
    let mut options = fx.store_options();
    options.quota_bytes = 700;
    let store = CheckpointStore::open(options).await.unwrap();
    let now = now_unix();
    let short = store
        .record_at(b"short-lived", 10, None, true, now)
        .await
        .unwrap();
    let long = store
        .record_at(&[7u8; 500], 3600, None, true, now)
        .await
        .unwrap();

    assert_eq!(store.purge_expired(now + 5).await.unwrap(), 0);
    assert_eq!(store.purge_expired(now + 10).await.unwrap(), 1);
    assert!(store.get(&short.jti).await.unwrap().is_none());
    assert!(matches!(
        store.load(&short.jti).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.get(&long.jti).await.unwrap().is_some());

    // Recording purges first, so expired data never blocks a new checkpoint.
    let later = now + 4000;
    store
        .record_at(&[8u8; 500], 3600, None, true, later)
        .await
        .unwrap();
    assert!(store.get(&long.jti).await.unwrap().is_none());
}

#[tokio::test]
async fn agent_purger_runs_periodically() {
    let fx = Fixture::new();
    let store = fx.store().await;
    let old = store
        .record_at(b"old", 1, None, true, now_unix() - 10)
        .await
        .unwrap();
    let agent = fx.agent(store.clone(), Arc::new(CountingHandler::default()));
    let purger = agent.spawn_purger(std::time::Duration::from_millis(50));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    purger.abort();
    assert!(store.get(&old.jti).await.unwrap().is_none());
}

#[tokio::test]
async fn snapshots_are_encrypted_at_rest() {
    let fx = Fixture::new();
    let store = fx.store().await;
    let secret = b"BGP-SECRET-PASSWORD-hunter2-0123456789";
    let cp = store
        .record(secret, 3600, Some("router-07"), true)
        .await
        .unwrap();
    assert_eq!(store.load(&cp.jti).await.unwrap(), secret);
    store.close().await;

    let mut found_any_file = false;
    for entry in std::fs::read_dir(fx.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("agent.db")
        {
            continue;
        }
        found_any_file = true;
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "plaintext snapshot found in {}",
            path.display()
        );
    }
    assert!(found_any_file);

    // Another key cannot read it; the right key still can.
    let mut wrong = fx.store_options();
    wrong.key = SnapshotKey::generate().unwrap();
    let wrong = CheckpointStore::open(wrong).await.unwrap();
    assert!(matches!(
        wrong.load(&cp.jti).await,
        Err(StoreError::Integrity(
            unwind_agent::IntegrityFailure::Decrypt
        ))
    ));
    assert!(!wrong.verify(&cp.jti).await.unwrap());
    let right = fx.store().await;
    assert_eq!(right.load(&cp.jti).await.unwrap(), secret);
}

#[tokio::test]
async fn in_memory_store_works() {
    let store = CheckpointStore::open(StoreOptions::new(
        "sqlite::memory:",
        AGENT,
        SnapshotKey::generate().unwrap(),
    ))
    .await
    .unwrap();
    let cp = store.record(b"x", 60, None, false).await.unwrap();
    assert!(!cp.reversible);
    assert_eq!(cp.out_hash, unwind_agent::out_hash(b"x"));
    assert_eq!(store.load(&cp.jti).await.unwrap(), b"x");
    assert!(store.record(b"x", 0, None, true).await.is_err());
}
