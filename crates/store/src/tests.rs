//! The store against a real SQLite file and a real PostgreSQL database (its own, created for
//! the test on the local server and dropped afterwards).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::test_support::TempPg;

fn change(action: &'static str) -> Change<'static> {
    Change {
        author: "test",
        message: "a change",
        action,
        entity: "routes/r",
        before: None,
        after: Some(serde_json::json!({"name": "r"})),
    }
}

fn config(path: &str) -> Config {
    gatehouse_model::parse_yaml(&format!(
        "upstreams: [{{name: u, targets: [{{address: \"127.0.0.1:9\"}}]}}]\n\
         services: [{{name: s, upstream: u}}]\n\
         routes: [{{name: r, paths: [\"{path}\"], service: s}}]\n"
    ))
    .unwrap()
}

/// The contract every backend keeps.
async fn revisions_commit_conflict_and_read_back(store: &Store) {
    assert_eq!(store.latest().await.unwrap(), (0, Config::default()));
    let one = store
        .commit(0, &config("/a"), change("create"))
        .await
        .unwrap();
    assert_eq!(one, 1);
    let two = store
        .commit(1, &config("/b"), change("update"))
        .await
        .unwrap();
    assert_eq!(two, 2);
    // A writer still at revision 1 lost the race: nothing is written.
    match store.commit(1, &config("/c"), change("update")).await {
        Err(StoreError::Conflict(1)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(store.latest().await.unwrap(), (2, config("/b")));
    assert_eq!(store.latest_id().await.unwrap(), 2);
    let list = store.revisions(10, None).await.unwrap();
    assert_eq!(list.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(list[1].action, "create");
    assert_eq!(list[1].after, Some(serde_json::json!({"name": "r"})));
    assert_eq!(store.revisions(10, Some(2)).await.unwrap().len(), 1);
    let (rev, cfg) = store.revision(1).await.unwrap().unwrap();
    assert_eq!((rev.author.as_str(), cfg), ("test", config("/a")));
    assert!(store.revision(7).await.unwrap().is_none());
    acme_leases_let_one_node_order(store).await;
}

/// One node at a time holds an ACME lease; the holder may renew it; storing (or releasing)
/// ends it; an expired lease can be taken over.
async fn acme_leases_let_one_node_order(store: &Store) {
    let far = now_secs() + 600;
    assert_eq!(store.acme_get("cert:a").await.unwrap(), None);
    assert!(store.acme_lease("cert:a", "node-1", far).await.unwrap());
    assert!(!store.acme_lease("cert:a", "node-2", far).await.unwrap());
    assert!(
        store.acme_lease("cert:a", "node-1", far).await.unwrap(),
        "renewed"
    );
    assert_eq!(
        store.acme_get("cert:a").await.unwrap(),
        None,
        "nothing stored yet"
    );
    store
        .acme_put("cert:a", "node-1", "{\"cert\":1}")
        .await
        .unwrap();
    assert_eq!(
        store.acme_get("cert:a").await.unwrap().as_deref(),
        Some("{\"cert\":1}")
    );
    assert!(
        store.acme_lease("cert:a", "node-2", far).await.unwrap(),
        "free again"
    );
    store.acme_release("cert:a", "node-2").await.unwrap();
    assert!(store
        .acme_lease("cert:b", "node-1", now_secs() - 1)
        .await
        .unwrap());
    assert!(
        store.acme_lease("cert:b", "node-2", far).await.unwrap(),
        "expired"
    );
    assert_eq!(
        store.acme_get("cert:a").await.unwrap().as_deref(),
        Some("{\"cert\":1}")
    );
}

#[tokio::test]
async fn sqlite_keeps_revisions_across_reopening_and_refuses_a_newer_schema() {
    let dir = std::env::temp_dir().join(format!("gatehouse-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("sqlite://{}/data/gatehouse.db", dir.display());
    let store = Store::open(&url).await.unwrap();
    revisions_commit_conflict_and_read_back(&store).await;
    drop(store);
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.latest_id().await.unwrap(), 2, "kept on disk");
    // A later gatehouse added migration 99: this one must refuse the store, not guess.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    drop(store);
    match Store::open(&url).await {
        Err(e @ StoreError::TooNew { version: 99, .. }) => {
            assert!(e.to_string().contains("upgrade gatehouse"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a newer store was opened"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_keeps_the_same_contract() {
    let db = TempPg::create().await;
    let store = Store::open(&db.url).await.unwrap();
    revisions_commit_conflict_and_read_back(&store).await;
    drop(store);
    db.drop_db().await;
}
