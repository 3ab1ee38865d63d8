//! Property tests of the job state machine: random event sequences (legal and illegal) applied to a fresh
//! `Job` through `Job::apply`, checked against what `state.rs` documents at every step.

use aura_model::{
    Accounting, Backend, ByteSize, Event, ExitStatus, Job, JobId, JobSpec, JobState, Outcome,
    RetryPolicy, Run, StateName, StopReason, StopSignal, Timestamp, TreeHandle,
};
use proptest::prelude::*;

fn timestamp() -> impl Strategy<Value = Timestamp> {
    // Non-negative and well inside RFC 3339's range, so that JSON round trips are exact.
    (0i64..4_000_000_000_000).prop_map(Timestamp::from_unix_millis)
}

fn retry_policy() -> impl Strategy<Value = RetryPolicy> {
    (0u32..4, any::<bool>(), 0u32..4).prop_map(
        |(max_retries, requeue_interrupted, max_pressure_requeues)| RetryPolicy {
            max_retries,
            requeue_interrupted,
            max_pressure_requeues,
        },
    )
}

fn run() -> impl Strategy<Value = Run> {
    (timestamp(), 1u32..100_000, any::<u64>()).prop_map(|(started_at, pid, start_ticks)| Run {
        started_at,
        tree: TreeHandle {
            backend: Backend::CgroupV2,
            pid,
            start_ticks,
            cgroups: vec![],
        },
        cwd: format!("/jobs/{pid}").into(),
        paused_secs: 0.0,
    })
}

fn stop_reason() -> impl Strategy<Value = StopReason> {
    prop_oneof![
        Just(StopReason::Cancelled),
        Just(StopReason::TimedOut),
        Just(StopReason::Shutdown),
        Just(StopReason::MemoryPressure),
        Just(StopReason::Stalled),
        Just(StopReason::Killed),
    ]
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        3 => Just(ExitStatus::Code(0)),
        2 => (1i32..256).prop_map(ExitStatus::Code),
        2 => prop_oneof![Just(9), Just(15), Just(2), Just(6)].prop_map(ExitStatus::Signal),
    ]
}

fn accounting() -> impl Strategy<Value = Accounting> {
    // Mostly clean exits; sometimes the memory counters decide the outcome (or are half set: a flag
    // without the limit it refers to decides nothing).
    prop_oneof![
        4 => Just(Accounting::default()),
        1 => (
            any::<bool>(),
            proptest::option::of((1u64..1 << 40).prop_map(ByteSize)),
            proptest::option::of((1u64..1 << 40).prop_map(ByteSize)),
            0u64..3,
        )
            .prop_map(|(exceeded, limit, peak, oom_kills)| Accounting {
                memory_limit_exceeded: exceeded,
                memory_limit: limit,
                memory_peak: peak,
                oom_kills,
                ..Accounting::default()
            }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => run().prop_map(|run| Event::Started { run }),
        1 => ("[a-z]{1,8}", any::<bool>(), timestamp())
            .prop_map(|(error, storage, at)| Event::SpawnFailed { error, storage, at }),
        2 => (stop_reason(), timestamp()).prop_map(|(reason, at)| Event::StopRequested { reason, at }),
        3 => (
            exit_status(),
            proptest::collection::vec(Just(StopSignal::Term), 0..2),
            accounting(),
            timestamp(),
        )
            .prop_map(|(exit, signals_sent, accounting, at)| Event::Exited {
                exit,
                signals_sent,
                accounting,
                at,
            }),
        1 => ("[a-z ]{1,12}", timestamp()).prop_map(|(reason, at)| Event::Interrupted { reason, at }),
        1 => ("[a-z ]{1,12}", timestamp()).prop_map(|(reason, at)| Event::Quarantined { reason, at }),
        3 => timestamp().prop_map(|at| Event::Requeue { at }),
        1 => (1i64..100, "[a-z_]{1,12}", timestamp()).prop_map(|(id, outcome, at)| Event::DependencyFailed {
            job_id: JobId(id),
            outcome,
            at,
        }),
        2 => timestamp().prop_map(|at| Event::Paused { at }),
        2 => timestamp().prop_map(|at| Event::Resumed { at }),
        1 => timestamp().prop_map(|at| Event::Held { at }),
        1 => timestamp().prop_map(|at| Event::Released { at }),
    ]
}

/// Whether `apply` must accept `event` in `job`'s state, from the doc comments: the transitions of
/// `Job::apply`, and `Requeue` "allowed only when the retry policy says so".
fn legal(job: &Job, event: &Event) -> bool {
    match (&job.state, event) {
        (
            JobState::Queued { .. },
            Event::Started { .. } | Event::SpawnFailed { .. } | Event::DependencyFailed { .. },
        ) => true,
        (JobState::Held { .. }, Event::DependencyFailed { .. } | Event::Released { .. }) => true,
        (JobState::Queued { .. }, Event::Held { .. }) => true,
        (JobState::Queued { .. } | JobState::Held { .. }, Event::StopRequested { reason, .. }) => {
            matches!(reason, StopReason::Cancelled | StopReason::Killed)
        }
        (JobState::Running { .. }, Event::Paused { .. })
        | (JobState::Paused { .. }, Event::Resumed { .. }) => true,
        (
            JobState::Running { .. } | JobState::Paused { .. } | JobState::Stopping { .. },
            Event::StopRequested { .. },
        ) => true,
        (
            JobState::Running { .. } | JobState::Paused { .. } | JobState::Stopping { .. },
            Event::Exited { .. } | Event::Interrupted { .. } | Event::Quarantined { .. },
        ) => true,
        (JobState::Finished(_), Event::Requeue { .. }) => expected_may_retry(job),
        _ => false,
    }
}

/// The retry policy as `RetryPolicy` documents it, independently of `Job::may_retry`: cancels and
/// successes never retry; interruptions retry when `requeue_interrupted`; a job stopped by the pressure
/// responder is requeued at most `max_pressure_requeues` times, and a failed one gets `max_retries` extra
/// attempts (the counters include the attempt that just finished).
fn expected_may_retry(job: &Job) -> bool {
    let retry = job.spec.retry;
    match job.outcome() {
        // A job whose dependency failed would wait for it again in vain: it is never retried.
        None
        | Some(
            Outcome::Succeeded
            | Outcome::Cancelled
            | Outcome::Quarantined { .. }
            | Outcome::DependencyFailed { .. },
        ) => false,
        Some(Outcome::Interrupted { .. }) => retry.requeue_interrupted,
        Some(Outcome::MemoryPressure { .. }) => {
            job.pressure_stops - 1 < retry.max_pressure_requeues
        }
        Some(_) => job.failures - 1 < retry.max_retries,
    }
}

/// The outcome the docs promise for an exit: the memory counters first (over the limit, then the OOM
/// killer unless the main process succeeded), then the stop reason, then the exit status itself.
fn expected_exit_outcome(
    reason: Option<StopReason>,
    exit: ExitStatus,
    accounting: &Accounting,
) -> &'static str {
    if accounting.memory_limit_exceeded && accounting.memory_limit.is_some() {
        return "memory_limit_exceeded";
    }
    if accounting.oom_kills > 0 && exit != ExitStatus::Code(0) {
        return "oom_killed";
    }
    match (reason, exit) {
        (Some(StopReason::Cancelled | StopReason::Killed), _) => "cancelled",
        (Some(StopReason::TimedOut), _) => "timed_out",
        (Some(StopReason::Shutdown), _) => "interrupted",
        (Some(StopReason::MemoryPressure), _) => "memory_pressure",
        (Some(StopReason::Stalled), _) => "stalled",
        (None, ExitStatus::Code(0)) => "succeeded",
        (None, ExitStatus::Code(_)) => "failed",
        (None, ExitStatus::Signal(_)) => "killed",
    }
}

fn fresh(retry: RetryPolicy, submitted_at: Timestamp) -> Job {
    let mut spec = JobSpec::new("ffmpeg", ["-i", "in.mov", "out.mp4"]);
    spec.retry = retry;
    Job::new(JobId(7), spec, submitted_at)
}

/// Checks one step; `before` is the job as it was, `job` as `apply` left it.
fn check_step(
    before: &Job,
    event: &Event,
    result: &Result<(), aura_model::TransitionError>,
    job: &Job,
) -> Result<(), TestCaseError> {
    let retry = job.spec.retry;
    // Identity and spec are never touched by a transition.
    prop_assert_eq!(job.id, before.id);
    prop_assert_eq!(&job.spec, &before.spec);
    prop_assert_eq!(job.submitted_at, before.submitted_at);
    prop_assert_eq!(&job.memory_request, &before.memory_request);
    prop_assert_eq!(&job.submitted_by, &before.submitted_by);

    prop_assert_eq!(
        result.is_ok(),
        legal(before, event),
        "{} while {:?}",
        event.name(),
        before.state
    );
    match result {
        Err(e) => {
            // "anything else is an error and leaves the job unchanged"
            prop_assert_eq!(job, before, "an illegal event changed the job");
            prop_assert_eq!(e.job, before.id);
            prop_assert_eq!(e.event, event.name());
            prop_assert_eq!(e.state, before.state.name().as_str());
        }
        Ok(()) => {
            let from = before.state.name();
            let to = job.state.name();
            // Attempts grow by exactly one per requeue, and only then.
            let requeued = from == StateName::Finished;
            prop_assert_eq!(job.attempt, before.attempt + u32::from(requeued));
            if requeued {
                prop_assert!(before.may_retry());
                prop_assert_eq!(&job.state, &JobState::Queued { since: at(event) });
            }
            // A finished job only leaves Finished through a requeue.
            if from == StateName::Finished {
                prop_assert!(
                    matches!(event, Event::Requeue { .. }),
                    "left finished through {}",
                    event.name()
                );
            }
            // Failures and pressure stops are counted once, when the attempt finishes with such an outcome.
            let newly_finished = to == StateName::Finished && from != StateName::Finished;
            let outcome = job.outcome().filter(|_| newly_finished);
            prop_assert_eq!(
                job.failures,
                before.failures + u32::from(outcome.is_some_and(Outcome::counts_as_failure))
            );
            prop_assert_eq!(
                job.pressure_stops,
                before.pressure_stops
                    + u32::from(matches!(outcome, Some(Outcome::MemoryPressure { .. })))
            );
            check_transition(before, event, job)?;
        }
    }
    // Bounds promised by the retry policy: at most max_retries + 1 failed attempts, and at most
    // max_pressure_requeues requeues after pressure stops (so that many + 1 stops).
    prop_assert!(
        job.failures <= retry.max_retries + 1,
        "failures {}",
        job.failures
    );
    prop_assert!(
        job.pressure_stops <= retry.max_pressure_requeues + 1,
        "pressure stops {}",
        job.pressure_stops
    );
    prop_assert!(job.attempt >= before.attempt);
    prop_assert_eq!(
        job.may_retry(),
        expected_may_retry(job),
        "{:?}",
        job.outcome()
    );
    // Every attempt but the current one ended in a requeue, so it was a failure, a pressure stop or an
    // interruption: attempts are bounded by the sum of those budgets (interruptions unbounded only when
    // requeue_interrupted).
    if !retry.requeue_interrupted {
        prop_assert!(job.attempt <= 1 + job.failures + job.pressure_stops);
    }
    // "Absent when the attempt never started": a finished record lacks a run only for a failed start
    // or a cancel in the queue.
    if let JobState::Finished(f) = &job.state {
        if f.run.is_none() {
            prop_assert!(
                matches!(
                    f.outcome,
                    Outcome::FailedToStart { .. }
                        | Outcome::StorageExhausted { .. }
                        | Outcome::Cancelled
                        | Outcome::DependencyFailed { .. }
                ),
                "no run for {:?}",
                f.outcome
            );
        }
    }
    Ok(())
}

fn at(event: &Event) -> Timestamp {
    match event {
        Event::Started { run } => run.started_at,
        Event::SpawnFailed { at, .. }
        | Event::StopRequested { at, .. }
        | Event::Exited { at, .. }
        | Event::Interrupted { at, .. }
        | Event::Quarantined { at, .. }
        | Event::DependencyFailed { at, .. }
        | Event::Requeue { at }
        | Event::Paused { at }
        | Event::Resumed { at }
        | Event::Held { at }
        | Event::Released { at } => *at,
    }
}

/// The run a job in `state` had, with a pause it was in ended at `at` (paused time never shrinks).
fn run_after(state: &JobState, at: Timestamp) -> Option<Run> {
    match state {
        JobState::Paused { run, since } => Some(Run {
            paused_secs: run.paused_secs
                + (at.unix_millis() - since.unix_millis()).max(0) as f64 / 1000.0,
            ..run.clone()
        }),
        other => other.run().cloned(),
    }
}

/// The target state of a legal, non-requeue transition, as the docs describe it.
fn check_transition(before: &Job, event: &Event, job: &Job) -> Result<(), TestCaseError> {
    match (&before.state, event) {
        (JobState::Queued { .. }, Event::Started { run }) => {
            prop_assert_eq!(&job.state, &JobState::Running { run: run.clone() });
        }
        (JobState::Queued { .. }, Event::SpawnFailed { error, storage, at }) => {
            let f = finished(job)?;
            let error = error.clone();
            prop_assert_eq!(
                &f.outcome,
                &if *storage {
                    Outcome::StorageExhausted { error }
                } else {
                    Outcome::FailedToStart { error }
                }
            );
            prop_assert_eq!(f.finished_at, *at);
            prop_assert!(f.run.is_none(), "an attempt that never started has no run");
        }
        (
            JobState::Queued { .. },
            Event::DependencyFailed {
                job_id,
                outcome,
                at,
            },
        ) => {
            let f = finished(job)?;
            prop_assert_eq!(
                &f.outcome,
                &Outcome::DependencyFailed {
                    job_id: *job_id,
                    outcome: outcome.clone()
                }
            );
            prop_assert_eq!(f.finished_at, *at);
            prop_assert!(f.run.is_none(), "a job whose dependency failed never ran");
        }
        (JobState::Queued { .. }, Event::Held { at }) => {
            prop_assert_eq!(&job.state, &JobState::Held { since: *at });
        }
        (JobState::Held { .. }, Event::Released { at }) => {
            prop_assert_eq!(&job.state, &JobState::Queued { since: *at });
        }
        (JobState::Running { run }, Event::Paused { at }) => {
            prop_assert_eq!(
                &job.state,
                &JobState::Paused {
                    run: run.clone(),
                    since: *at
                }
            );
        }
        (JobState::Paused { .. }, Event::Resumed { at }) => {
            let run = run_after(&before.state, *at).expect("a paused job has a run");
            prop_assert_eq!(&job.state, &JobState::Running { run });
        }
        (JobState::Held { .. }, Event::DependencyFailed { .. }) => {
            let f = finished(job)?;
            prop_assert_eq!(f.outcome.name(), "dependency_failed");
            prop_assert!(f.run.is_none());
        }
        (JobState::Queued { .. } | JobState::Held { .. }, Event::StopRequested { at, .. }) => {
            let f = finished(job)?;
            prop_assert_eq!(&f.outcome, &Outcome::Cancelled);
            prop_assert_eq!(f.finished_at, *at);
            prop_assert!(f.run.is_none());
        }
        (
            JobState::Running { .. } | JobState::Paused { .. },
            Event::StopRequested { reason, at },
        ) => {
            let run = run_after(&before.state, *at).expect("a started job has a run");
            prop_assert_eq!(
                &job.state,
                &JobState::Stopping {
                    run,
                    reason: *reason,
                    requested_at: *at
                }
            );
        }
        // "A second stop request keeps the first reason": nothing changes at all.
        (JobState::Stopping { .. }, Event::StopRequested { .. }) => {
            prop_assert_eq!(job, before);
        }
        (
            JobState::Running { .. } | JobState::Paused { .. } | JobState::Stopping { .. },
            Event::Exited {
                exit,
                signals_sent,
                accounting,
                at,
            },
        ) => {
            let run = &run_after(&before.state, *at).expect("a started job has a run");
            let reason = match &before.state {
                JobState::Stopping { reason, .. } => Some(*reason),
                _ => None,
            };
            let f = finished(job)?;
            prop_assert_eq!(
                f.outcome.name(),
                expected_exit_outcome(reason, *exit, accounting)
            );
            prop_assert_eq!(f.run.as_ref(), Some(run));
            prop_assert_eq!(f.exit, Some(*exit));
            prop_assert_eq!(&f.signals_sent, signals_sent);
            prop_assert_eq!(&f.accounting, accounting);
            prop_assert_eq!(f.finished_at, *at);
        }
        (
            JobState::Running { .. } | JobState::Paused { .. } | JobState::Stopping { .. },
            Event::Interrupted { reason, at },
        ) => {
            let run = &run_after(&before.state, *at).expect("a started job has a run");
            let f = finished(job)?;
            prop_assert_eq!(
                &f.outcome,
                &Outcome::Interrupted {
                    reason: reason.clone()
                }
            );
            prop_assert_eq!(f.run.as_ref(), Some(run));
            prop_assert_eq!(f.finished_at, *at);
            prop_assert_eq!(job.interruptions, before.interruptions + 1);
        }
        (
            JobState::Running { .. } | JobState::Paused { .. } | JobState::Stopping { .. },
            Event::Quarantined { reason, at },
        ) => {
            let run = &run_after(&before.state, *at).expect("a started job has a run");
            let f = finished(job)?;
            prop_assert_eq!(
                &f.outcome,
                &Outcome::Quarantined {
                    reason: reason.clone(),
                    interruptions: before.interruptions + 1,
                }
            );
            prop_assert_eq!(f.run.as_ref(), Some(run));
            prop_assert!(!job.may_retry(), "quarantine is final");
        }
        (JobState::Finished(_), Event::Requeue { .. }) => {}
        (state, event) => {
            return Err(TestCaseError::fail(format!(
                "accepted {} while {}",
                event.name(),
                state.name().as_str()
            )))
        }
    }
    Ok(())
}

fn finished(job: &Job) -> Result<&aura_model::Finished, TestCaseError> {
    match &job.state {
        JobState::Finished(f) => Ok(f),
        other => Err(TestCaseError::fail(format!(
            "expected finished, got {other:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every step of a random event sequence obeys the documented transitions and counters.
    #[test]
    fn random_event_sequences_keep_the_invariants(
        retry in retry_policy(),
        submitted_at in timestamp(),
        events in proptest::collection::vec(event(), 0..80),
    ) {
        let mut job = fresh(retry, submitted_at);
        let mut requeues = 0u32;
        for event in events {
            let before = job.clone();
            let is_requeue = matches!(event, Event::Requeue { .. });
            let result = job.apply(event.clone());
            check_step(&before, &event, &result, &job)?;
            if is_requeue && result.is_ok() {
                requeues += 1;
            }
            prop_assert_eq!(job.attempt, 1 + requeues);
        }
        // The record reads back as it was written (the store and the API keep it as JSON).
        let json = serde_json::to_string(&job).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Job = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, job);
    }

    /// Cancels never retry, and a success is final: no event at all moves such a job again.
    #[test]
    fn cancelled_and_succeeded_jobs_are_final(
        retry in retry_policy(),
        cancel_while_running in any::<bool>(),
        succeed in any::<bool>(),
        run in run(),
        events in proptest::collection::vec(event(), 1..30),
    ) {
        let t = Timestamp::from_unix_millis(1_000);
        let mut job = fresh(retry, t);
        if succeed {
            job.apply(Event::Started { run }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            job.apply(Event::Exited {
                exit: ExitStatus::Code(0),
                signals_sent: vec![],
                accounting: Accounting::default(),
                at: t,
            }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(job.outcome(), Some(&Outcome::Succeeded));
        } else {
            if cancel_while_running {
                job.apply(Event::Started { run }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            job.apply(Event::StopRequested { reason: StopReason::Cancelled, at: t })
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if cancel_while_running {
                job.apply(Event::Exited {
                    exit: ExitStatus::Signal(15),
                    signals_sent: vec![StopSignal::Term],
                    accounting: Accounting::default(),
                    at: t,
                }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(job.outcome(), Some(&Outcome::Cancelled));
        }
        prop_assert!(!job.may_retry());
        let settled = job.clone();
        for event in events {
            prop_assert!(job.apply(event).is_err());
            prop_assert_eq!(&job, &settled);
        }
    }

    /// Driving a job through failures with requeues: exactly max_retries + 1 attempts fail, then the
    /// retry policy refuses; pressure stops and interruptions in between use their own budgets.
    #[test]
    fn retry_budget_is_exact(
        retry in retry_policy(),
        // For each attempt: 0 = fails, 1 = pressure stop, 2 = interrupted.
        kinds in proptest::collection::vec(0u8..3, 1..40),
        run in run(),
    ) {
        let t = Timestamp::from_unix_millis(5_000);
        let mut job = fresh(retry, t);
        let (mut failures, mut pressure, mut attempts) = (0u32, 0u32, 1u32);
        for kind in kinds {
            job.apply(Event::Started { run: run.clone() }).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let exit = |exit| Event::Exited {
                exit,
                signals_sent: vec![],
                accounting: Accounting::default(),
                at: t,
            };
            let may_retry = match kind {
                0 => {
                    job.apply(exit(ExitStatus::Code(1))).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    failures += 1;
                    failures <= retry.max_retries
                }
                1 => {
                    job.apply(Event::StopRequested { reason: StopReason::MemoryPressure, at: t })
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    job.apply(exit(ExitStatus::Signal(15))).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    pressure += 1;
                    pressure <= retry.max_pressure_requeues
                }
                _ => {
                    job.apply(Event::Interrupted { reason: "daemon died".into(), at: t })
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    retry.requeue_interrupted
                }
            };
            prop_assert_eq!((job.failures, job.pressure_stops), (failures, pressure));
            prop_assert_eq!(job.may_retry(), may_retry);
            let requeue = job.apply(Event::Requeue { at: t });
            prop_assert_eq!(requeue.is_ok(), may_retry);
            if !may_retry {
                break;
            }
            attempts += 1;
            prop_assert_eq!(job.attempt, attempts);
        }
    }
}
