//! Test support for this and other crates' tests: a PostgreSQL database of its own per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::AnyPool;
use std::time::{SystemTime, UNIX_EPOCH};

/// A database of its own on the local PostgreSQL (trust auth), dropped on the way out.
pub struct TempPg {
    pub url: String,
    admin: String,
    name: String,
}

impl TempPg {
    pub async fn create() -> TempPg {
        sqlx::any::install_default_drivers();
        let admin = std::env::var("GATEHOUSE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!(
            "gatehouse_test_{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                % 1_000_000_000
        );
        let pool = AnyPool::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is needed for this test ({admin}): {e}; .ci/run starts it")
        });
        // The name is digits and underscores we made: safe to splice.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("bad admin url {admin}"),
        };
        TempPg { url, admin, name }
    }

    pub async fn drop_db(self) {
        if let Ok(pool) = AnyPool::connect(&self.admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&pool)
            .await;
        }
    }
}
