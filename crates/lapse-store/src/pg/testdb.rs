//! A fresh PostgreSQL database per test, through `LAPSE_TEST_POSTGRES_URL` (set by
//! `scripts/test-env.sh`; a test fails without it), dropped with its connections at the end.
//! Every PostgreSQL test of the store uses it.

use sqlx::{Connection as _, Executor as _, PgConnection};

use super::PgStore;

pub(crate) fn admin_url() -> String {
    std::env::var("LAPSE_TEST_POSTGRES_URL")
        .expect("LAPSE_TEST_POSTGRES_URL is unset: run the tests through scripts/test (or source scripts/test-env.sh)")
}

/// A fresh database, dropped (with any connections to it) when this is dropped.
pub(crate) struct TestDb {
    pub(crate) name: String,
    pub(crate) url: String,
}

impl TestDb {
    pub(crate) async fn new() -> TestDb {
        let admin = admin_url();
        let name = format!("lapse_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin).await.expect("connecting to LAPSE_TEST_POSTGRES_URL");
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("CREATE DATABASE");
        conn.close().await.ok();
        let (base, _) = admin.rsplit_once('/').expect("the test URL names a database");
        TestDb { url: format!("{base}/{name}"), name }
    }

    pub(crate) async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connecting to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // Drop runs outside async: a thread with its own runtime does the cleanup.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok()
            })
        });
        let _ = done.join();
    }
}

impl TestDb {
    /// A migrated store on this database.
    pub(crate) async fn store(&self) -> PgStore {
        PgStore::connect(&self.url).await.expect("connecting the store to the test database")
    }
}
