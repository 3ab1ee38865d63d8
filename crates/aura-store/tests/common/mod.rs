//! What the store's test binaries share: `TestStore`, a store on either backend for the tests both must
//! pass (with `both!`, which runs a test body once per backend); and a small volume of their own, to
//! fill to the last byte (SQLite only).

// Each test binary uses its own part of this module.
#![allow(dead_code, unused_macros)]

use aura_model::{Job, NodeCapacity, NodeSpec};
use aura_store::testing::PgCluster;
use aura_store::{PgConfig, Store, StoreOptions};
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

/// Which backend a test body runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// A database file in a temporary directory (`Store::open`).
    Sqlite,
    /// A fresh database of its own on the shared throw-away cluster (`Store::open_postgres`), opened as
    /// one registered node.
    Postgres,
}

/// Runs the test body `name(db: Db)` (an `async fn`) as two tests, `name::sqlite` and `name::postgres`,
/// so a failure names the backend.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name($crate::common::Db::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$name($crate::common::Db::Postgres).await
            }
        }
    };
}

/// A store on either backend and what keeps its database alive (the temporary directory, or the
/// PostgreSQL database's URL: the shared cluster outlives every test).
pub struct TestStore {
    pub store: Store,
    database: Database,
}

/// A test store's database, which outlives the store: `open_store` opens another store on it.
pub struct Database {
    opts: StoreOptions,
    place: Place,
}

enum Place {
    Sqlite { _dir: TempDir, path: PathBuf },
    Postgres { url: String },
}

/// The node a PostgreSQL test store is (its database is the test's own, so one name serves every test).
fn test_node() -> NodeSpec {
    NodeSpec {
        id: "test-node".into(),
        name: "node-test".into(),
        tags: vec![],
        url: None,
        capacity: NodeCapacity {
            cpus: 4.0,
            memory_bytes: 8 << 30,
            gpus: 0,
        },
    }
}

/// Opens a store on `url` as the test node and registers it, as a node does at start.
async fn open_postgres(url: &str, opts: StoreOptions) -> Store {
    let config = PgConfig {
        url: url.to_owned(),
        password: None,
        pool_size: 4,
        connect_timeout: Duration::from_secs(5),
    };
    let store = Store::open_postgres(config, test_node(), opts)
        .await
        .expect("open the PostgreSQL store");
    store
        .fleet()
        .expect("a PostgreSQL store has a fleet")
        .register(&[])
        .await
        .expect("register the test node");
    store
}

impl TestStore {
    /// A store with the default options on a new, empty database.
    pub async fn open(db: Db) -> TestStore {
        TestStore::open_with(db, StoreOptions::default()).await
    }

    /// A store with `opts` on a new, empty database (PostgreSQL ignores what is SQLite's: the busy
    /// timeout, the reserve).
    pub async fn open_with(db: Db, opts: StoreOptions) -> TestStore {
        let place = match db {
            Db::Sqlite => {
                let dir = TempDir::new().expect("tempdir");
                let path = dir.path().join("aura.db");
                Place::Sqlite { _dir: dir, path }
            }
            Db::Postgres => Place::Postgres {
                url: PgCluster::shared().fresh_database(),
            },
        };
        let database = Database { opts, place };
        TestStore {
            store: database.open_store().await,
            database,
        }
    }

    /// The store and its database apart: dropping the store (every handle of it) keeps the database.
    pub fn into_parts(self) -> (Store, Database) {
        (self.store, self.database)
    }

    /// Another store on the same database (see `Database::open_store`).
    pub async fn reopen(&self) -> Store {
        self.database.open_store().await
    }

    /// Makes this node hold `job` (queued or held, as just inserted), so that `unfinished` returns it
    /// (on PostgreSQL, `unfinished` is the jobs this node holds: it claims the job, and the job comes
    /// back naming the node); on SQLite, where the one node holds every job, the job as it is.
    pub async fn hold(&self, mut job: Job) -> Job {
        if let Some(fleet) = self.store.fleet() {
            let claimed = fleet
                .claim_one(job.id)
                .await
                .expect("claim")
                .unwrap_or_else(|| panic!("job {} is not claimable", job.id));
            job.node = claimed.node;
        }
        job
    }

    /// A plain connection of the test's own to the database.
    async fn postgres_client(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("a second connection");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Runs `sql` (no parameters; the same text on both backends) from a connection of the test's own,
    /// past the store: to change what the store wrote.
    pub async fn execute(&self, sql: &str) {
        match &self.database.place {
            Place::Sqlite { path, .. } => {
                rusqlite::Connection::open(path)
                    .expect("second connection")
                    .execute_batch(sql)
                    .expect("run the statement");
            }
            Place::Postgres { url } => {
                TestStore::postgres_client(url)
                    .await
                    .batch_execute(sql)
                    .await
                    .expect("run the statement");
            }
        }
    }

    /// The one integer `sql` selects (no parameters; the same text on both backends), read past the
    /// store: what is stored, not what the store makes of it.
    pub async fn query_i64(&self, sql: &str) -> i64 {
        match &self.database.place {
            Place::Sqlite { path, .. } => rusqlite::Connection::open(path)
                .expect("second connection")
                .query_row(sql, [], |row| row.get(0))
                .expect("the value"),
            Place::Postgres { url } => TestStore::postgres_client(url)
                .await
                .query_one(sql, &[])
                .await
                .expect("the row")
                .get(0),
        }
    }

    /// Keeps the store's writer from committing until `release`: its next transaction blocks on a lock
    /// taken from another connection, and everything queued meanwhile waits in its channel. SQLite: the
    /// database's write lock (`BEGIN IMMEDIATE`); PostgreSQL: the jobs table locked against writes
    /// (reads go on).
    pub async fn lock_writes(&self) -> WriteLock {
        match &self.database.place {
            Place::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("second connection");
                conn.execute_batch("BEGIN IMMEDIATE")
                    .expect("take the lock");
                WriteLock::Sqlite(conn)
            }
            Place::Postgres { url } => {
                let client = TestStore::postgres_client(url).await;
                client
                    .batch_execute("BEGIN; LOCK TABLE jobs IN EXCLUSIVE MODE")
                    .await
                    .expect("take the lock");
                WriteLock::Postgres(client)
            }
        }
    }
}

impl Database {
    /// A store on this database, with the test store's options (for a restart, close the first one
    /// before). On PostgreSQL it is the same node again, registered anew.
    pub async fn open_store(&self) -> Store {
        match &self.place {
            Place::Sqlite { path, .. } => Store::open(path, self.opts.clone())
                .await
                .expect("open the SQLite store"),
            Place::Postgres { url } => open_postgres(url, self.opts.clone()).await,
        }
    }
}

/// See `TestStore::lock_writes`.
pub enum WriteLock {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl WriteLock {
    pub async fn release(self) {
        match self {
            WriteLock::Sqlite(conn) => conn.execute_batch("COMMIT").expect("release the lock"),
            WriteLock::Postgres(client) => client
                .batch_execute("COMMIT")
                .await
                .expect("release the lock"),
        }
    }
}

/// A tmpfs of a given size mounted for one test (root only), unmounted on drop.
pub struct SmallVolume {
    _root: TempDir,
    path: PathBuf,
}

impl SmallVolume {
    /// `None` (the test skips, saying so) where a tmpfs cannot be mounted.
    pub fn mount(size: &str) -> Option<SmallVolume> {
        let root = TempDir::new().expect("tempdir");
        let path = root.path().join("vol");
        std::fs::create_dir(&path).expect("mkdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        }
        mounted.then_some(SmallVolume { _root: root, path })
    }

    /// The file `name` on the volume.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The database file on it.
    pub fn db(&self) -> PathBuf {
        self.file("aura.db")
    }

    /// Fills the volume to the last byte with the file `name`.
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join(name)).expect("filler");
        let chunk = vec![1u8; 64 * 1024];
        let mut n = chunk.len();
        while n > 0 {
            match file.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => n /= 2,
            }
        }
    }

    /// Removes what `fill(name)` wrote.
    pub fn free(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("free the volume");
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}
