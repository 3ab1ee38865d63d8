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
    // 6: operator control. Two new states (held, paused) need a wider CHECK on `state`, and SQLite cannot
    // alter a constraint, so `jobs` is rebuilt: renamed away, created anew with every column so far plus
    // the retry links, copied, and dropped. `migrate` runs this with foreign keys off (dropping a table
    // that events refer to would fail) and legacy_alter_table on (otherwise the rename would repoint
    // `job_events.job_id` at the old table, which is then dropped); `foreign_key_check` confirms nothing
    // dangles before the commit. The AUTOINCREMENT counter is carried over, or the ids of the newest jobs,
    // if they were ever deleted, would be handed out again. The new table is created under its own name
    // (not renamed into place) so its schema text reads exactly as a fresh database's. `settings` keeps
    // node-wide switches (e.g. drained) across restarts.
    r#"
    ALTER TABLE jobs RENAME TO jobs_before_6;
    CREATE TABLE jobs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        state           TEXT    NOT NULL CHECK (state IN ('queued', 'held', 'running', 'paused', 'stopping', 'finished')),
        priority        INTEGER NOT NULL,
        submitted_at_ms INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        failures        INTEGER NOT NULL,
        pressure_stops  INTEGER NOT NULL DEFAULT 0,
        interruptions   INTEGER NOT NULL DEFAULT 0,
        kind            TEXT,
        outcome         TEXT,
        submitted_by    TEXT,
        retry_of        INTEGER,
        retried_as      INTEGER,
        memory_request  TEXT,
        spec            TEXT    NOT NULL,
        state_data      TEXT    NOT NULL
    ) STRICT;
    INSERT INTO jobs (id, state, priority, submitted_at_ms, updated_at_ms, attempt, failures,
                      pressure_stops, interruptions, kind, outcome, submitted_by, memory_request, spec,
                      state_data)
        SELECT id, state, priority, submitted_at_ms, updated_at_ms, attempt, failures,
               pressure_stops, interruptions, kind, outcome, submitted_by, memory_request, spec,
               state_data
        FROM jobs_before_6;
    DELETE FROM sqlite_sequence WHERE name = 'jobs';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'jobs', seq FROM sqlite_sequence WHERE name = 'jobs_before_6';
    DROP TABLE jobs_before_6;
    CREATE INDEX jobs_state_id ON jobs (state, id);
    CREATE INDEX jobs_kind_succeeded ON jobs (kind, id) WHERE outcome = 'succeeded';
    CREATE INDEX jobs_quarantined ON jobs (id) WHERE outcome = 'quarantined';

    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
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
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .map_err(open_err)?;
    if pages == 0 && !read_only {
        // A new database gives freed pages back in bounded steps (`Store::compact_step`) rather than
        // keeping them until a full VACUUM. Only possible before the first table exists, and before
        // WAL mode writes the file's header (the pragma is then ignored): so here, first.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(open_err)?;
    }
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
    migrate_to(conn, LATEST_VERSION)
}

/// Brings the schema up to `target` (at most `LATEST_VERSION`).
fn migrate_to(conn: &mut Connection, target: u32) -> Result<(), StoreError> {
    let current =
        user_version(conn).map_err(|source| StoreError::Migration { version: 0, source })?;
    if current > LATEST_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: LATEST_VERSION,
        });
    }
    if current >= target {
        return Ok(());
    }
    // A table rebuild (see migration 6) needs these; foreign_keys cannot change inside a transaction, so
    // they are set around all of them, and put back whatever happened: the connection goes on to serve
    // the store, which relies on foreign keys.
    let version = current + 1;
    let migrated = set_rebuild_pragmas(conn, true)
        .map_err(|source| StoreError::Migration { version, source })
        .and_then(|()| run_migrations(conn, current, target));
    let restored = set_rebuild_pragmas(conn, false)
        .map_err(|source| StoreError::Migration { version, source });
    migrated.and(restored)
}

/// Foreign keys off and legacy_alter_table on while `rebuilding`; the store's settings otherwise.
fn set_rebuild_pragmas(conn: &Connection, rebuilding: bool) -> rusqlite::Result<()> {
    conn.pragma_update(None, "foreign_keys", !rebuilding)?;
    conn.pragma_update(None, "legacy_alter_table", rebuilding)
}

fn run_migrations(conn: &mut Connection, current: u32, target: u32) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target as usize)
        .skip(current as usize)
    {
        let version = index as u32 + 1;
        let err = |source| StoreError::Migration { version, source };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if user_version(&tx).map_err(err)? >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(err)?;
        // Foreign keys are off while migrating: a migration that left a dangling reference must not
        // commit.
        let dangling = dangling_references(&tx).map_err(err)?;
        if !dangling.is_empty() {
            return Err(StoreError::MigrationBrokeReferences {
                version,
                dangling: dangling.len(),
                first: dangling.into_iter().take(3).collect::<Vec<_>>().join("; "),
            });
        }
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(version, "job database migrated");
    }
    Ok(())
}

/// What `PRAGMA foreign_key_check` reports, one line per row that refers to a missing row.
fn dangling_references(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
    let rows = stmt.query_map([], |row| {
        let table: String = row.get(0)?;
        let rowid: Option<i64> = row.get(1)?;
        let parent: String = row.get(2)?;
        Ok(format!(
            "{table} row {} refers to a missing {parent} row",
            rowid.map_or_else(|| "?".to_owned(), |r| r.to_string())
        ))
    })?;
    rows.collect()
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
    fn at_version(conn: &mut Connection, version: u32) {
        migrate_to(conn, version).expect("an old migration");
        assert_eq!(user_version(conn).expect("version"), version);
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
            at_version(&mut conn, version);
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
        at_version(&mut conn, 1);
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

    /// Every value of `sql`'s rows, for comparing a table before and after a migration.
    fn rows_of(conn: &Connection, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = conn.prepare(sql).expect("prepare");
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..columns)
                    .map(|i| row.get::<_, rusqlite::types::Value>(i))
                    .collect()
            })
            .expect("query");
        rows.collect::<Result<_, _>>().expect("read rows")
    }

    fn sequence_of(conn: &Connection, table: &str) -> Option<i64> {
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [table],
            |row| row.get(0),
        )
        .ok()
    }

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .expect("pragma")
    }

    /// Version 5's columns: what migration 6 must carry over unchanged.
    const V5_JOB_COLUMNS: &str = "id, state, priority, submitted_at_ms, updated_at_ms, attempt, failures, \
        kind, outcome, spec, state_data, memory_request, pressure_stops, submitted_by, interruptions";

    /// Stores `job` as a version 5 release did, with one event.
    fn insert_v5(conn: &Connection, job: &Job, by: Option<&str>) {
        let row = crate::codec::encode_new(job).expect("encode");
        conn.execute(
            &format!(
                "INSERT INTO jobs ({V5_JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                 ?11, ?12, 2, ?13, 1)"
            ),
            rusqlite::params![
                job.id.0,
                row.state.state,
                row.priority,
                row.submitted_at_ms,
                row.state.updated_at_ms,
                row.state.attempt,
                row.state.failures,
                row.kind,
                row.state.outcome,
                row.spec,
                row.state.state_data,
                row.state.memory_request,
                by,
            ],
        )
        .expect("a version 5 job");
        conn.execute(
            "INSERT INTO job_events (job_id, at_ms, attempt, kind, detail) \
             VALUES (?1, 1, 1, 'submitted', '{}')",
            [job.id.0],
        )
        .expect("a version 5 event");
    }

    /// Migration 6 rebuilds `jobs`: every row and event survives, ids are never handed out again (the
    /// newest job here was deleted), the events still refer to `jobs`, and the connection is left with
    /// foreign keys enforced.
    #[test]
    fn rebuilding_jobs_keeps_rows_events_ids_and_foreign_keys() {
        let dir = TempDir::new().expect("tempdir");
        let mut conn = connect(&dir);
        at_version(&mut conn, 5);
        let submitted = Timestamp::from_unix_millis(1_700_000_000_000);
        let mut jobs = Vec::new();
        for n in 1..=4 {
            let mut spec = JobSpec::new("ffmpeg", ["-i", "in.mkv"]);
            spec.priority = n as i32;
            spec.labels.insert("kind".into(), "encode".into());
            let job = Job::new(JobId(n), spec, submitted);
            insert_v5(&conn, &job, (n % 2 == 0).then_some("ci"));
            jobs.push(job);
        }
        conn.execute_batch(
            "UPDATE jobs SET outcome = 'succeeded' WHERE id = 1; \
             UPDATE jobs SET outcome = 'quarantined' WHERE id = 2; \
             DELETE FROM job_events WHERE job_id = 4; DELETE FROM jobs WHERE id = 4;",
        )
        .expect("shape the old data");
        let select_jobs = format!("SELECT {V5_JOB_COLUMNS} FROM jobs ORDER BY id");
        let select_events =
            "SELECT seq, job_id, at_ms, attempt, kind, detail FROM job_events ORDER BY seq";
        let (old_jobs, old_events) = (rows_of(&conn, &select_jobs), rows_of(&conn, select_events));
        assert_eq!((old_jobs.len(), old_events.len()), (3, 3));
        assert_eq!(sequence_of(&conn, "jobs"), Some(4));

        migrate(&mut conn).expect("migrate to 6");
        assert_eq!(user_version(&conn).expect("version"), 6);
        assert_eq!(rows_of(&conn, &select_jobs), old_jobs);
        assert_eq!(rows_of(&conn, select_events), old_events);
        assert_eq!(
            rows_of(&conn, "SELECT retry_of, retried_as FROM jobs WHERE retry_of IS NOT NULL OR retried_as IS NOT NULL"),
            Vec::<Vec<rusqlite::types::Value>>::new()
        );
        for job in &jobs[..3] {
            let read = crate::reader::get(&conn, job.id)
                .expect("read")
                .expect("kept");
            assert_eq!(read.spec, job.spec);
        }
        // The partial indexes came back with the table, and still serve their queries.
        assert_eq!(
            crate::reader::quarantined(&conn, 10).expect("quarantined"),
            [JobId(2)]
        );
        let indexes = rows_of(
            &conn,
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        );
        let text = |s: &str| rusqlite::types::Value::Text(s.to_owned());
        assert_eq!(
            indexes,
            [
                vec![text("job_events_job_seq"), text("job_events")],
                vec![text("jobs_kind_succeeded"), text("jobs")],
                vec![text("jobs_quarantined"), text("jobs")],
                vec![text("jobs_state_id"), text("jobs")],
            ]
        );
        let events_sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'job_events'",
                [],
                |row| row.get(0),
            )
            .expect("job_events' schema");
        assert!(events_sql.contains("REFERENCES jobs (id)"), "{events_sql}");

        // The next id follows the deleted newest job, not the newest row left.
        assert_eq!(sequence_of(&conn, "jobs"), Some(4));
        assert_eq!(sequence_of(&conn, "jobs_before_6"), None);
        conn.execute(
            "INSERT INTO jobs (state, priority, submitted_at_ms, updated_at_ms, attempt, failures, spec, \
             state_data) VALUES ('held', 0, 0, 0, 1, 0, '{}', '{}')",
            [],
        )
        .expect("a new state is allowed");
        assert_eq!(conn.last_insert_rowid(), 5);

        assert_eq!(pragma(&conn, "foreign_keys"), 1);
        assert_eq!(pragma(&conn, "legacy_alter_table"), 0);
        let orphan = conn.execute(
            "INSERT INTO job_events (job_id, at_ms, attempt, kind, detail) VALUES (999, 1, 1, 'x', '{}')",
            [],
        );
        assert!(orphan.is_err(), "an event of a missing job is refused");
        conn.execute(
            "INSERT INTO settings (key, value) VALUES ('drained', 'true')",
            [],
        )
        .expect("settings exist");
    }

    /// A migration that would leave dangling references is rolled back, and the connection still
    /// enforces foreign keys afterwards.
    #[test]
    fn a_migration_that_leaves_dangling_references_is_rolled_back() {
        let dir = TempDir::new().expect("tempdir");
        let mut conn = connect(&dir);
        at_version(&mut conn, 5);
        // Only possible behind the store's back: it always writes with foreign keys on.
        conn.pragma_update(None, "foreign_keys", false)
            .expect("foreign keys off");
        conn.execute(
            "INSERT INTO job_events (job_id, at_ms, attempt, kind, detail) VALUES (7, 1, 1, 'x', '{}')",
            [],
        )
        .expect("a dangling event");
        conn.pragma_update(None, "foreign_keys", true)
            .expect("foreign keys on");
        match migrate(&mut conn) {
            Err(
                e @ StoreError::MigrationBrokeReferences {
                    version: 6,
                    dangling: 1,
                    ..
                },
            ) => {
                assert!(e.to_string().contains("job_events row 1"), "{e}");
            }
            other => panic!("expected MigrationBrokeReferences, got {other:?}"),
        }
        assert_eq!(user_version(&conn).expect("version"), 5);
        assert!(schema_of(&conn).iter().all(|sql| !sql.contains("held")));
        assert_eq!(pragma(&conn, "foreign_keys"), 1);
        assert_eq!(pragma(&conn, "legacy_alter_table"), 0);
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
