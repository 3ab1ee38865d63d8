//! The mapping between model types and table rows: `Job` ⇄ `jobs`, `NewEvent`/`JobEventRecord` ⇄
//! `job_events`. Encoding happens on the caller's side so the writer thread only runs SQL.

use crate::error::StoreError;
use aura_model::{
    EngineEventRecord, Job, JobEventRecord, JobId, JobSpec, JobState, MemoryRequest, NewEvent,
    StateName, Timestamp,
};
use rusqlite::Row;

/// The column list every job query selects, in the order `decode_job` reads it.
pub(crate) const JOB_COLUMNS: &str =
    "id, state, submitted_at_ms, attempt, failures, spec, state_data, memory_request, pressure_stops";

/// A job's row, ready to bind.
#[derive(Debug)]
pub(crate) struct JobRow {
    pub state: &'static str,
    pub priority: i64,
    pub submitted_at_ms: i64,
    pub updated_at_ms: i64,
    pub attempt: i64,
    pub failures: i64,
    pub kind: Option<String>,
    pub outcome: Option<&'static str>,
    pub spec: String,
    pub state_data: String,
    pub memory_request: Option<String>,
    pub pressure_stops: i64,
}

/// An event row, ready to bind; the job id and attempt come from the command it travels with.
#[derive(Debug)]
pub(crate) struct EventRow {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
}

fn to_json<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

pub(crate) fn encode_parts(
    spec: &JobSpec,
    state: &JobState,
    submitted_at: Timestamp,
    attempt: u32,
    failures: u32,
    pressure_stops: u32,
    memory_request: Option<&MemoryRequest>,
) -> Result<JobRow, StoreError> {
    let outcome = match state {
        JobState::Finished(f) => Some(f.outcome.name()),
        _ => None,
    };
    Ok(JobRow {
        state: state.name().as_str(),
        priority: i64::from(spec.priority),
        submitted_at_ms: submitted_at.unix_millis(),
        updated_at_ms: Timestamp::now().unix_millis(),
        attempt: i64::from(attempt),
        failures: i64::from(failures),
        kind: spec.kind().map(str::to_owned),
        outcome,
        spec: to_json("job spec", spec)?,
        state_data: to_json("job state", state)?,
        memory_request: memory_request
            .map(|m| to_json("memory request", m))
            .transpose()?,
        pressure_stops: i64::from(pressure_stops),
    })
}

pub(crate) fn encode_job(job: &Job) -> Result<JobRow, StoreError> {
    encode_parts(
        &job.spec,
        &job.state,
        job.submitted_at,
        job.attempt,
        job.failures,
        job.pressure_stops,
        job.memory_request.as_ref(),
    )
}

pub(crate) fn encode_event(event: &NewEvent) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        at_ms: event.at.unix_millis(),
        kind: event.kind.clone(),
        detail: to_json("event detail", &event.detail)?,
    })
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
        memory_request,
        state,
    })
}

/// Reads `seq, job_id, at_ms, attempt, kind, detail`.
pub(crate) fn decode_event(row: &Row<'_>) -> Result<JobEventRecord, StoreError> {
    let job_id = JobId(row.get(1)?);
    let detail: String = row.get(5)?;
    let seq: i64 = row.get(0)?;
    Ok(JobEventRecord {
        seq,
        job_id,
        at: Timestamp::from_unix_millis(row.get(2)?),
        attempt: row.get(3)?,
        kind: row.get(4)?,
        detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt {
            id: job_id,
            detail: format!("event {seq} detail: {e}"),
        })?,
    })
}

/// Reads `seq, at_ms, kind, detail` of `engine_events`.
pub(crate) fn decode_engine_event(row: &Row<'_>) -> Result<EngineEventRecord, StoreError> {
    let seq: i64 = row.get(0)?;
    let detail: String = row.get(3)?;
    Ok(EngineEventRecord {
        seq,
        at: Timestamp::from_unix_millis(row.get(1)?),
        kind: row.get(2)?,
        detail: serde_json::from_str(&detail).map_err(|e| StoreError::CorruptEngineEvent {
            seq,
            detail: e.to_string(),
        })?,
    })
}

pub(crate) fn parse_state_name(text: &str) -> Option<StateName> {
    text.parse().ok()
}
