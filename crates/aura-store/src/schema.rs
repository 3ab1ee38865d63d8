//! Connection set-up and the versioned schema: pragmas every connection needs, and the numbered
//! migrations recorded in `PRAGMA user_version`.

use crate::error::StoreError;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Schema migrations in order; entry `i` brings the database to version `i + 1`. Append only: a released
/// migration is never edited, since databases in the field have already run it.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and their event log. Columns exist for everything the store filters or sorts on; the rest of
    // a job is JSON so the model can grow without a migration per field. AUTOINCREMENT so that ids and
    // sequence numbers are never reused, even if the newest rows are ever deleted.
    r#"
    CREATE TABLE jobs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        state           TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'stopping', 'finished')),
        priority        INTEGER NOT NULL,
        submitted_at_ms INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        failures        INTEGER NOT NULL,
        kind            TEXT,
        outcome         TEXT,
        spec            TEXT    NOT NULL,
        state_data      TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX jobs_state_id ON jobs (state, id);

    CREATE TABLE job_events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id  INTEGER NOT NULL REFERENCES jobs (id),
        at_ms   INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind    TEXT    NOT NULL CHECK (kind <> ''),
        detail  TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX job_events_job_seq ON job_events (job_id, seq);
    "#,
    // 2: admission. The memory a job reserves and where the figure came from (JSON), and an index for
    // learning requests from the recorded peaks of a kind's successful jobs, newest first.
    r#"
    ALTER TABLE jobs ADD COLUMN memory_request TEXT;
    CREATE INDEX jobs_kind_succeeded ON jobs (kind, id) WHERE outcome = 'succeeded';
    "#,
    // 3: memory protection. How often the pressure responder stopped a job (its own retry budget), and the
    // engine's own decisions (admission paused or resumed, a pressure victim chosen), which belong to no
    // single job.
    r#"
    ALTER TABLE jobs ADD COLUMN pressure_stops INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE engine_events (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms  INTEGER NOT NULL,
        kind   TEXT    NOT NULL CHECK (kind <> ''),
        detail TEXT    NOT NULL
    ) STRICT;
    "#,
    // 4: authentication. The name of the API token that submitted a job (never the token itself).
    r#"
    ALTER TABLE jobs ADD COLUMN submitted_by TEXT;
    "#,
    // 5: faults. Unclean daemon deaths in a row under a job (crash-loop protection), and the quarantined
    // jobs `aura status` lists.
    r#"
    ALTER TABLE jobs ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_quarantined ON jobs (id) WHERE outcome = 'quarantined';
    "#,
];

/// Page cache per connection, KiB.
const PAGE_CACHE_KIB: i64 = 256;

pub(crate) const LATEST_VERSION: u32 = MIGRATIONS.len() as u32;

/// Opens a connection with the settings every store connection shares. Errors name the file, because
/// the most likely cause is a wrong path or a file that is not a database.
pub(crate) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
    read_only: bool,
) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    // No URI parsing and no shared cache: the path is a plain file name chosen by the operator.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(busy_timeout).map_err(open_err)?;
    // The first statement that reads the file: this is where "file is not a database" shows up.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "job database is not in WAL mode; reads may wait for writes");
    }
    // NORMAL is durable against process crashes in WAL mode; only an OS crash can lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_err)?;
    if read_only {
        // Readers are opened read-write (a read-only WAL connection cannot create the -shm file) but
        // must never write: only the writer thread may, or group commit ordering would break.
        conn.pragma_update(None, "query_only", true)
            .map_err(open_err)?;
    }
    // SQLite's default page cache is 2 MiB per connection, filled as the database grows: a daemon with a
    // writer and a few readers would creep up by several MiB over its first thousands of jobs. The hot set
    // (B-tree interiors, the newest rows) fits in far less, and the OS page cache serves the rest.
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Brings the schema up to `LATEST_VERSION`, each migration in its own transaction. Safe to run from
/// several processes at once: the version is re-read under the write lock.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current =
        user_version(conn).map_err(|source| StoreError::Migration { version: 0, source })?;
    if current > LATEST_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: LATEST_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        let err = |source| StoreError::Migration { version, source };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if user_version(&tx).map_err(err)? >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(version, "job database migrated");
    }
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aura_model::{Job, JobId, JobSpec, Timestamp};
    use tempfile::TempDir;

    fn connect(dir: &TempDir) -> Connection {
        open_connection(&dir.path().join("aura.db"), Duration::from_secs(5), false).expect("open")
    }

    /// The schema as SQLite reports it, for comparing two databases.
    fn schema_of(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .expect("prepare");
        let rows = stmt.query_map([], |row| row.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("read the schema")
    }

    /// A database as a release that stopped at schema `version` left it.
    fn at_version(conn: &Connection, version: u32) {
        for sql in &MIGRATIONS[..version as usize] {
            conn.execute_batch(sql).expect("an old migration");
        }
        conn.pragma_update(None, "user_version", version)
            .expect("set the version");
    }

    #[test]
    fn every_older_database_migrates_to_the_schema_of_a_new_one() {
        let fresh_dir = TempDir::new().expect("tempdir");
        let mut fresh = connect(&fresh_dir);
        migrate(&mut fresh).expect("migrate an empty file");
        assert_eq!(user_version(&fresh).expect("version"), LATEST_VERSION);
        let latest = schema_of(&fresh);
        for table in ["jobs", "job_events", "engine_events"] {
            assert!(
                latest
                    .iter()
                    .any(|sql| sql.contains(&format!("CREATE TABLE {table}"))),
                "{table} missing: {latest:?}"
            );
        }
        for version in 0..=LATEST_VERSION {
            let dir = TempDir::new().expect("tempdir");
            let mut conn = connect(&dir);
            at_version(&conn, version);
            migrate(&mut conn).expect("migrate");
            assert_eq!(user_version(&conn).expect("version"), LATEST_VERSION);
            assert_eq!(schema_of(&conn), latest, "from version {version}");
            migrate(&mut conn).expect("migrating again is a no-op");
        }
    }

    /// A job stored by the first release reads back whole, with the later columns' defaults.
    #[test]
    fn a_job_stored_before_the_later_migrations_reads_back() {
        let dir = TempDir::new().expect("tempdir");
        let mut conn = connect(&dir);
        at_version(&conn, 1);
        let submitted = Timestamp::from_unix_millis(1_700_000_000_000);
        let job = Job::new(JobId(1), JobSpec::new("ffmpeg", ["-version"]), submitted);
        let row = crate::codec::encode_new(&job).expect("encode");
        conn.execute(
            "INSERT INTO jobs (id, state, priority, submitted_at_ms, updated_at_ms, attempt, failures, \
             kind, outcome, spec, state_data) VALUES (1, ?1, ?2, ?3, ?3, 1, 0, NULL, NULL, ?4, ?5)",
            rusqlite::params![
                row.state.state,
                row.priority,
                row.submitted_at_ms,
                row.spec,
                row.state.state_data
            ],
        )
        .expect("a version 1 row");
        migrate(&mut conn).expect("migrate");
        assert_eq!(
            crate::reader::get(&conn, JobId(1)).expect("read"),
            Some(job)
        );
    }

    #[test]
    fn read_connections_refuse_writes() {
        let dir = TempDir::new().expect("tempdir");
        let mut writer = connect(&dir);
        migrate(&mut writer).expect("migrate");
        let reader = open_connection(&dir.path().join("aura.db"), Duration::from_secs(5), true)
            .expect("open");
        assert!(reader.execute("DELETE FROM jobs", []).is_err());
        writer
            .execute("DELETE FROM jobs", [])
            .expect("the writer writes");
    }

    /// Each connection's page cache stays small, whatever SQLite's default: a daemon holds several.
    #[test]
    fn a_connection_caches_at_most_half_a_mebibyte() {
        let dir = TempDir::new().expect("tempdir");
        let conn = connect(&dir);
        let pragma = |name: &str| -> i64 {
            conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
                .expect("pragma")
        };
        // Negative: KiB; positive: pages.
        let size = pragma("cache_size");
        let bytes = if size < 0 {
            -size * 1024
        } else {
            size * pragma("page_size")
        };
        assert!(bytes <= 512 * 1024, "{bytes} bytes");
    }
}
