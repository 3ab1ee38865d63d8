//! PostgreSQL's versioned schema: the numbered migrations, recorded in `aura_schema`, run under an
//! advisory lock by whichever node starts first.

use crate::error::{pg_error, StoreError};
use tokio_postgres::Client;

/// Migrations in order; entry `i` brings the database to version `i + 1`. Append only: a released
/// migration is never edited, since fleets in the field have already run it.
const MIGRATIONS: &[&str] = &[
    // 1: everything SQLite's six migrations built, plus what the fleet needs. Jobs: the SQLite columns
    // (JSON kept as text, so that what is read back is exactly what was written, floats included), and
    // the claim's columns: who holds the job (`node_id`, NULL: nobody), its name (kept after the job
    // ends, for the view), the fencing epoch, and what the claim filters on, derived from the spec at
    // insert. Settings are per node. `nodes` is the membership; `fleet_limits` the fleet-wide limits;
    // `fleet_tokens` the hashes of the API tokens every node accepts.
    r#"
    CREATE TABLE jobs (
        id              BIGSERIAL PRIMARY KEY,
        state           TEXT    NOT NULL CHECK (state IN ('queued', 'held', 'running', 'paused', 'stopping', 'finished')),
        priority        BIGINT  NOT NULL,
        submitted_at_ms BIGINT  NOT NULL,
        updated_at_ms   BIGINT  NOT NULL,
        attempt         BIGINT  NOT NULL,
        failures        BIGINT  NOT NULL,
        pressure_stops  BIGINT  NOT NULL DEFAULT 0,
        interruptions   BIGINT  NOT NULL DEFAULT 0,
        kind            TEXT,
        outcome         TEXT,
        submitted_by    TEXT,
        retry_of        BIGINT,
        retried_as      BIGINT,
        memory_request  TEXT,
        spec            TEXT    NOT NULL,
        state_data      TEXT    NOT NULL,
        node_id         TEXT,
        node            TEXT,
        epoch           BIGINT  NOT NULL DEFAULT 0,
        claimed_at_ms   BIGINT,
        requires        TEXT[]  NOT NULL DEFAULT '{}',
        providers       TEXT[]  NOT NULL DEFAULT '{}',
        after_ids       BIGINT[] NOT NULL DEFAULT '{}',
        mem_bytes       BIGINT  NOT NULL DEFAULT 0,
        gpus            INT     NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_claimable ON jobs (priority DESC, id) WHERE state = 'queued' AND node_id IS NULL;
    CREATE INDEX jobs_state_id ON jobs (state, id);
    CREATE INDEX jobs_node_unfinished ON jobs (node_id, id) WHERE state <> 'finished';
    CREATE INDEX jobs_kind_succeeded ON jobs (kind, id) WHERE outcome = 'succeeded';
    CREATE INDEX jobs_quarantined ON jobs (id) WHERE outcome = 'quarantined';
    CREATE INDEX jobs_providers ON jobs USING gin (providers) WHERE providers <> '{}';

    CREATE TABLE job_events (
        seq     BIGSERIAL PRIMARY KEY,
        job_id  BIGINT NOT NULL REFERENCES jobs (id),
        at_ms   BIGINT NOT NULL,
        attempt BIGINT NOT NULL,
        kind    TEXT   NOT NULL CHECK (kind <> ''),
        detail  TEXT   NOT NULL
    );
    CREATE INDEX job_events_job_seq ON job_events (job_id, seq);

    CREATE TABLE engine_events (
        seq     BIGSERIAL PRIMARY KEY,
        at_ms   BIGINT NOT NULL,
        kind    TEXT   NOT NULL CHECK (kind <> ''),
        detail  TEXT   NOT NULL,
        node_id TEXT
    );

    CREATE TABLE settings (
        node_id TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT NOT NULL,
        PRIMARY KEY (node_id, key)
    );

    CREATE TABLE nodes (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        tags          TEXT[] NOT NULL DEFAULT '{}',
        url           TEXT,
        capacity      TEXT NOT NULL,
        incarnation   BIGINT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('up', 'dead', 'left')),
        heartbeat_at  TIMESTAMPTZ NOT NULL,
        registered_at TIMESTAMPTZ NOT NULL
    );

    CREATE TABLE fleet_limits (
        name           TEXT PRIMARY KEY,
        max_concurrent INT,
        per_minute     INT
    );

    -- The API tokens each node accepts, as hashes (never a token): every node accepts them all, so
    -- one token reaches the whole fleet.
    CREATE TABLE fleet_tokens (
        node_id TEXT NOT NULL,
        name    TEXT NOT NULL,
        hash    TEXT NOT NULL,
        scope   TEXT NOT NULL,
        PRIMARY KEY (node_id, name)
    );
    "#,
    // 2: slots of fleet limits held by leases (work outside Aura's processes) on any node, counted with
    // the jobs that hold them. A row lasts until its lease is released or expires (`expires_at_ms`, the
    // database's clock); a node's rows go when it registers again or is declared dead.
    r#"
    CREATE TABLE fleet_leases (
        node_id       TEXT   NOT NULL,
        lease_id      BIGINT NOT NULL,
        providers     TEXT[] NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        PRIMARY KEY (node_id, lease_id)
    );
    "#,
];

/// The newest schema version this build knows.
pub(crate) const LATEST_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the schema up to `LATEST_VERSION`, each migration in its own transaction. The caller holds
/// the migration lock, so the version read here cannot change under it.
pub(crate) async fn migrate(client: &Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS aura_schema (version INT PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| pg_error("creating the schema version table", e))?;
    let current: i32 = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM aura_schema", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| pg_error("reading the schema version", e))?;
    if current > LATEST_VERSION {
        return Err(StoreError::TooNew {
            found: u32::try_from(current).unwrap_or(u32::MAX),
            supported: LATEST_VERSION as u32,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        let script =
            format!("BEGIN; {sql}; INSERT INTO aura_schema (version) VALUES ({version}); COMMIT;");
        if let Err(e) = client.batch_execute(&script).await {
            // The connection may still be in the failed transaction; it is dropped right after.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(pg_error("migrating the job database", e));
        }
        tracing::info!(version, "job database migrated");
    }
    Ok(())
}
