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

/// Reads a row selected with `JOB_COLUMNS`. JSON that no longer parses, or a state column that disagrees
/// with the state JSON, is `Corrupt` rather than a panic or a silently wrong job.
pub(crate) fn decode_job(row: &Row<'_>) -> Result<Job, StoreError> {
    let id = JobId(row.get(0)?);
    let state_name: String = row.get(1)?;
    let submitted_at = Timestamp::from_unix_millis(row.get(2)?);
    let corrupt = |detail: String| StoreError::Corrupt { id, detail };
    let attempt: u32 = row.get(3).map_err(|e| corrupt(format!("attempt: {e}")))?;
    let failures: u32 = row.get(4).map_err(|e| corrupt(format!("failures: {e}")))?;
    let spec_json: String = row.get(5)?;
    let state_json: String = row.get(6)?;
    let spec: JobSpec =
        serde_json::from_str(&spec_json).map_err(|e| corrupt(format!("spec: {e}")))?;
    let state: JobState =
        serde_json::from_str(&state_json).map_err(|e| corrupt(format!("state: {e}")))?;
    let memory_request_json: Option<String> = row.get(7)?;
    let pressure_stops: u32 = row
        .get(8)
        .map_err(|e| corrupt(format!("pressure_stops: {e}")))?;
    let memory_request = memory_request_json
        .map(|text| serde_json::from_str::<MemoryRequest>(&text))
        .transpose()
        .map_err(|e| corrupt(format!("memory request: {e}")))?;
    let submitted_by: Option<String> = row.get(9)?;
    let interruptions: u32 = row
        .get(10)
        .map_err(|e| corrupt(format!("interruptions: {e}")))?;
    let retry_of: Option<i64> = row.get(11)?;
    let retried_as: Option<i64> = row.get(12)?;
    if state.name().as_str() != state_name {
        return Err(corrupt(format!(
            "state column says {state_name:?} but the state data is {:?}",
            state.name().as_str()
        )));
    }
    Ok(Job {
        id,
        spec,
        submitted_at,
        attempt,
        failures,
        pressure_stops,
        interruptions,
        memory_request,
        submitted_by,
        retry_of: retry_of.map(JobId),
        retried_as: retried_as.map(JobId),
        state,
    })
}

/// Reads `seq, job_id, at_ms, attempt, kind, detail`.
pub(crate) fn decode_event(row: &Row<'_>) -> Result<JobEventRecord, StoreError> {
    let job_id = JobId(row.get(1)?);
    let detail: String = row.get(5)?;
    let seq: i64 = row.get(0)?;
    let detail = serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt {
        id: job_id,
        detail: format!("event {seq} detail: {e}"),
    })?;
    Ok(JobEventRecord {
        seq,
        job_id,
        at: Timestamp::from_unix_millis(row.get(2)?),
        attempt: row.get(3)?,
        event: JobEvent::from_parts(row.get(4)?, detail),
    })
}

/// Reads `seq, at_ms, kind, detail` of `engine_events`.
pub(crate) fn decode_engine_event(row: &Row<'_>) -> Result<EngineEventRecord, StoreError> {
    let seq: i64 = row.get(0)?;
    let detail: String = row.get(3)?;
    let detail = serde_json::from_str(&detail).map_err(|e| StoreError::CorruptEngineEvent {
        seq,
        detail: e.to_string(),
    })?;
    Ok(EngineEventRecord {
        seq,
        at: Timestamp::from_unix_millis(row.get(1)?),
        event: EngineEvent::from_parts(row.get(2)?, detail),
    })
}

pub(crate) fn parse_state_name(text: &str) -> Option<StateName> {
    text.parse().ok()
}
