//! The mapping between model types and table rows: `Job` ⇄ `jobs`, `NewEvent`/`JobEventRecord` ⇄
//! `job_events`. Encoding happens on the caller's side so the writer thread only runs SQL.

use crate::error::StoreError;
use aura_model::{
    EngineEvent, EngineEventRecord, Job, JobEvent, JobEventRecord, JobId, JobSpec, JobState,
    LoggedEvent, MemoryRequest, NewEvent, StateName, Timestamp,
};
use rusqlite::Row;

/// The column list every job query selects, in the order `decode_job` reads it.
pub(crate) const JOB_COLUMNS: &str =
    "id, state, submitted_at_ms, attempt, failures, spec, state_data, memory_request, pressure_stops, submitted_by, interruptions, retry_of, retried_as";

/// What changes over a job's life, ready to bind: every `record` writes exactly this.
#[derive(Debug, Clone)]
pub(crate) struct StateRow {
    pub state: &'static str,
    pub updated_at_ms: i64,
    pub attempt: i64,
    pub failures: i64,
    pub outcome: Option<&'static str>,
    pub state_data: String,
    pub memory_request: Option<String>,
    pub pressure_stops: i64,
    pub interruptions: i64,
}

/// A new job's row: what never changes after submit (so it is encoded and written once), and its first
/// state.
#[derive(Clone, Debug)]
pub(crate) struct JobRow {
    pub priority: i64,
    pub submitted_at_ms: i64,
    pub kind: Option<String>,
    pub spec: String,
    pub submitted_by: Option<String>,
    pub retry_of: Option<i64>,
    pub state: StateRow,
    /// What PostgreSQL's claim query filters on (SQLite ignores them): the tags the `requires` label
    /// names, the fleet limits the job names, its `after` ids, the memory it reserves (bytes; 0 if
    /// none) and its GPUs.
    pub fleet: FleetColumns,
}

/// The columns of a job's row only PostgreSQL's claim query needs, derived from the spec at insert.
#[derive(Clone, Debug, Default)]
pub(crate) struct FleetColumns {
    pub requires: Vec<String>,
    pub providers: Vec<String>,
    pub after: Vec<i64>,
    pub mem_bytes: i64,
    pub gpus: i32,
}

impl FleetColumns {
    pub(crate) fn of(job: &Job) -> FleetColumns {
        FleetColumns {
            requires: aura_model::required_tags(&job.spec.labels),
            providers: job.spec.resources.providers.iter().cloned().collect(),
            after: job.spec.after.iter().map(|id| id.0).collect(),
            mem_bytes: job
                .memory_request
                .as_ref()
                .map_or(0, |m| i64::try_from(m.bytes.bytes()).unwrap_or(i64::MAX)),
            gpus: job
                .spec
                .resources
                .gpus
                .map_or(0, |g| i32::try_from(g).unwrap_or(i32::MAX)),
        }
    }
}

/// A waiting job's priority and spec, written again when an operator moves it in the queue.
#[derive(Clone, Debug)]
pub(crate) struct SpecRow {
    pub priority: i64,
    pub spec: String,
}

/// An event row, ready to bind; the job id comes from the command it travels with, and so does the
/// attempt unless the event names its own (one that happened before a requeue in the same write).
#[derive(Debug)]
pub(crate) struct EventRow {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
    pub attempt: Option<i64>,
}

pub(crate) fn to_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

/// The changing part of a job's row.
pub(crate) fn encode_state(job: &Job) -> Result<StateRow, StoreError> {
    let outcome = job.outcome().map(|o| o.name());
    Ok(StateRow {
        state: job.state.name().as_str(),
        updated_at_ms: Timestamp::now().unix_millis(),
        attempt: i64::from(job.attempt),
        failures: i64::from(job.failures),
        outcome,
        state_data: to_json("job state", &job.state)?,
        memory_request: job
            .memory_request
            .as_ref()
            .map(|m| to_json("memory request", m))
            .transpose()?,
        pressure_stops: i64::from(job.pressure_stops),
        interruptions: i64::from(job.interruptions),
    })
}

/// A whole row, for the insert.
pub(crate) fn encode_new(job: &Job) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        priority: i64::from(job.spec.priority),
        submitted_at_ms: job.submitted_at.unix_millis(),
        kind: job.spec.kind().map(str::to_owned),
        spec: to_json("job spec", &job.spec)?,
        submitted_by: job.submitted_by.clone(),
        retry_of: job.retry_of.map(|id| id.0),
        state: encode_state(job)?,
        fleet: FleetColumns::of(job),
    })
}

/// The part of a row `record_priority` writes besides the state.
pub(crate) fn encode_spec(job: &Job) -> Result<SpecRow, StoreError> {
    Ok(SpecRow {
        priority: i64::from(job.spec.priority),
        spec: to_json("job spec", &job.spec)?,
    })
}

pub(crate) fn encode_event(event: &NewEvent) -> Result<EventRow, StoreError> {
    encode_logged(event.at, &event.event, event.attempt)
}

/// A job's or the engine's event as a row: its kind, its detail as JSON.
pub(crate) fn encode_logged(
    at: Timestamp,
    event: &impl LoggedEvent,
    attempt: Option<u32>,
) -> Result<EventRow, StoreError> {
    let (kind, detail) = event.to_parts().map_err(|source| StoreError::Encode {
        what: "event",
        source,
    })?;
    Ok(EventRow {
        at_ms: at.unix_millis(),
        kind,
        detail: to_json("event detail", &detail)?,
        attempt: attempt.map(i64::from),
    })
}

/// Puts a state change that is not committed yet (kept while the volume refuses writes) over the job as
/// read, so that readers see what happened rather than the last state the volume took.
pub(crate) fn overlay(
    job: &mut Job,
    row: &StateRow,
    spec: Option<&SpecRow>,
) -> Result<(), StoreError> {
    let id = job.id;
    let corrupt = |detail: String| StoreError::Corrupt { id, detail };
    if let Some(spec) = spec {
        job.spec =
            serde_json::from_str(&spec.spec).map_err(|e| corrupt(format!("kept spec: {e}")))?;
    }
    job.state =
        serde_json::from_str(&row.state_data).map_err(|e| corrupt(format!("kept state: {e}")))?;
    job.memory_request = row
        .memory_request
        .as_deref()
        .map(serde_json::from_str::<MemoryRequest>)
        .transpose()
        .map_err(|e| corrupt(format!("kept memory request: {e}")))?;
    let count = |v: i64| u32::try_from(v).map_err(|e| corrupt(format!("kept counter: {e}")));
    job.attempt = count(row.attempt)?;
    job.failures = count(row.failures)?;
    job.pressure_stops = count(row.pressure_stops)?;
    job.interruptions = count(row.interruptions)?;
    Ok(())
}

/// A job's columns as read, before decoding: what both backends' rows give.
pub(crate) struct RawJob {
    pub id: i64,
    pub state: String,
    pub submitted_at_ms: i64,
    pub attempt: i64,
    pub failures: i64,
    pub spec: String,
    pub state_data: String,
    pub memory_request: Option<String>,
    pub pressure_stops: i64,
    pub submitted_by: Option<String>,
    pub interruptions: i64,
    pub retry_of: Option<i64>,
    pub retried_as: Option<i64>,
    /// The node that claimed or ran it (PostgreSQL only).
    pub node: Option<String>,
}

/// Reads a row selected with `JOB_COLUMNS`. JSON that no longer parses, or a state column that disagrees
/// with the state JSON, is `Corrupt` rather than a panic or a silently wrong job.
pub(crate) fn decode_job(row: &Row<'_>) -> Result<Job, StoreError> {
    let id: i64 = row.get(0)?;
    let corrupt = |detail: String| StoreError::Corrupt {
        id: JobId(id),
        detail,
    };
    let int = |i: usize, name: &str| -> Result<i64, StoreError> {
        row.get(i).map_err(|e| corrupt(format!("{name}: {e}")))
    };
    decode_raw(RawJob {
        id,
        state: row.get(1)?,
        submitted_at_ms: row.get(2)?,
        attempt: int(3, "attempt")?,
        failures: int(4, "failures")?,
        spec: row.get(5)?,
        state_data: row.get(6)?,
        memory_request: row.get(7)?,
        pressure_stops: int(8, "pressure_stops")?,
        submitted_by: row.get(9)?,
        interruptions: int(10, "interruptions")?,
        retry_of: row.get(11)?,
        retried_as: row.get(12)?,
        node: None,
    })
}

/// Decodes a job's columns, whichever backend read them.
pub(crate) fn decode_raw(raw: RawJob) -> Result<Job, StoreError> {
    let id = JobId(raw.id);
    let corrupt = |detail: String| StoreError::Corrupt { id, detail };
    let count = |v: i64, name: &str| u32::try_from(v).map_err(|e| corrupt(format!("{name}: {e}")));
    let attempt = count(raw.attempt, "attempt")?;
    let failures = count(raw.failures, "failures")?;
    let pressure_stops = count(raw.pressure_stops, "pressure_stops")?;
    let interruptions = count(raw.interruptions, "interruptions")?;
    let spec: JobSpec =
        serde_json::from_str(&raw.spec).map_err(|e| corrupt(format!("spec: {e}")))?;
    let state: JobState =
        serde_json::from_str(&raw.state_data).map_err(|e| corrupt(format!("state: {e}")))?;
    let memory_request = raw
        .memory_request
        .map(|text| serde_json::from_str::<MemoryRequest>(&text))
        .transpose()
        .map_err(|e| corrupt(format!("memory request: {e}")))?;
    if state.name().as_str() != raw.state {
        return Err(corrupt(format!(
            "state column says {:?} but the state data is {:?}",
            raw.state,
            state.name().as_str()
        )));
    }
    Ok(Job {
        id,
        spec,
        submitted_at: Timestamp::from_unix_millis(raw.submitted_at_ms),
        attempt,
        failures,
        pressure_stops,
        interruptions,
        memory_request,
        submitted_by: raw.submitted_by,
        retry_of: raw.retry_of.map(JobId),
        retried_as: raw.retried_as.map(JobId),
        node: raw.node,
        state,
    })
}

/// Decodes an event's columns, whichever backend read them.
pub(crate) fn decode_event_parts(
    seq: i64,
    job_id: i64,
    at_ms: i64,
    attempt: u32,
    kind: String,
    detail: &str,
) -> Result<JobEventRecord, StoreError> {
    let job_id = JobId(job_id);
    let detail = serde_json::from_str(detail).map_err(|e| StoreError::Corrupt {
        id: job_id,
        detail: format!("event {seq} detail: {e}"),
    })?;
    Ok(JobEventRecord {
        seq,
        job_id,
        at: Timestamp::from_unix_millis(at_ms),
        attempt,
        event: JobEvent::from_parts(kind, detail),
    })
}

/// Decodes an engine event's columns, whichever backend read them.
pub(crate) fn decode_engine_parts(
    seq: i64,
    at_ms: i64,
    kind: String,
    detail: &str,
) -> Result<EngineEventRecord, StoreError> {
    let detail = serde_json::from_str(detail).map_err(|e| StoreError::CorruptEngineEvent {
        seq,
        detail: e.to_string(),
    })?;
    Ok(EngineEventRecord {
        seq,
        at: Timestamp::from_unix_millis(at_ms),
        event: EngineEvent::from_parts(kind, detail),
    })
}

/// Reads `seq, job_id, at_ms, attempt, kind, detail`.
pub(crate) fn decode_event(row: &Row<'_>) -> Result<JobEventRecord, StoreError> {
    let detail: String = row.get(5)?;
    decode_event_parts(
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        &detail,
    )
}

/// Reads `seq, at_ms, kind, detail` of `engine_events`.
pub(crate) fn decode_engine_event(row: &Row<'_>) -> Result<EngineEventRecord, StoreError> {
    let detail: String = row.get(3)?;
    decode_engine_parts(row.get(0)?, row.get(1)?, row.get(2)?, &detail)
}

pub(crate) fn parse_state_name(text: &str) -> Option<StateName> {
    text.parse().ok()
}
