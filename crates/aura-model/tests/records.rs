//! What the records built from the model say to their readers: outcomes and their CLI exit codes, state
//! names, transition errors, timestamps, sizes, event logs, host figures and redacted views.

use aura_model::host::CpuModes;
use aura_model::{
    events::Candidate, Accounting, Backend, ByteSize, EngineEvent, Event, ExitStatus, Job,
    JobEvent, JobId, JobSpec, JobState, JobView, LoggedEvent, NewEvent, Outcome, RetryPolicy, Run,
    StateName, StopReason, Timestamp, TreeHandle,
};
use std::time::{Duration, UNIX_EPOCH};

const T: Timestamp = Timestamp::from_unix_millis_const(1_000);

fn run() -> Run {
    Run {
        started_at: T,
        tree: TreeHandle {
            backend: Backend::CgroupV2,
            pid: 42,
            start_ticks: 7,
            cgroups: vec![],
        },
        cwd: "/jobs/7".into(),
        paused_secs: 0.0,
    }
}

fn job() -> Job {
    let mut spec = JobSpec::new("true", Vec::<String>::new());
    spec.retry = RetryPolicy {
        max_retries: 0,
        requeue_interrupted: false,
        max_pressure_requeues: 0,
    };
    Job::new(JobId(7), spec, T)
}

fn exited(code: i32) -> Event {
    Event::Exited {
        exit: ExitStatus::Code(code),
        signals_sent: vec![],
        accounting: Accounting::default(),
        at: T,
    }
}

#[test]
fn outcomes_name_themselves_and_map_to_cli_exit_codes() {
    let text = || String::from("x");
    // (outcome, name, success, exit code of `aura run --wait`)
    let table = [
        (Outcome::Succeeded, "succeeded", true, 0),
        (Outcome::Failed { exit_code: 3 }, "failed", false, 3),
        (Outcome::Killed { signal: 9 }, "killed", false, 137),
        (Outcome::Killed { signal: 15 }, "killed", false, 143),
        (Outcome::TimedOut, "timed_out", false, 124),
        (Outcome::Cancelled, "cancelled", false, 130),
        (
            Outcome::FailedToStart { error: text() },
            "failed_to_start",
            false,
            127,
        ),
        (
            Outcome::StorageExhausted { error: text() },
            "storage_exhausted",
            false,
            73,
        ),
        (
            Outcome::Interrupted { reason: text() },
            "interrupted",
            false,
            75,
        ),
        (
            Outcome::MemoryLimitExceeded {
                limit_bytes: 1 << 30,
                peak_bytes: None,
            },
            "memory_limit_exceeded",
            false,
            137,
        ),
        (
            Outcome::MemoryPressure { detail: text() },
            "memory_pressure",
            false,
            137,
        ),
        (Outcome::OomKilled { kills: 1 }, "oom_killed", false, 137),
        (
            Outcome::Quarantined {
                reason: text(),
                interruptions: 3,
            },
            "quarantined",
            false,
            70,
        ),
    ];
    for (outcome, name, success, code) in table {
        assert_eq!(outcome.name(), name);
        assert_eq!(outcome.is_success(), success, "{name}");
        assert_eq!(outcome.cli_exit_code(), code, "{outcome:?}");
        // The name is the wire tag, so filters and records agree.
        assert_eq!(serde_json::to_value(&outcome).unwrap()["kind"], name);
    }
}

#[test]
fn state_names_parse_back_from_what_they_show() {
    for name in StateName::ALL {
        assert_eq!(name.as_str().parse::<StateName>(), Ok(name));
        assert_eq!(
            serde_json::to_string(&name).unwrap(),
            format!("\"{}\"", name.as_str())
        );
    }
    assert_eq!(
        "done".parse::<StateName>(),
        Err(
            "unknown state \"done\" (use queued, held, running, paused, stopping or finished)"
                .into()
        )
    );
    assert!("Running".parse::<StateName>().is_err());
}

#[test]
fn the_run_is_known_once_started_and_kept_when_finished() {
    let mut j = job();
    assert_eq!(j.state.run(), None);
    j.apply(Event::Started { run: run() }).unwrap();
    assert_eq!(j.state.run(), Some(&run()));
    j.apply(Event::StopRequested {
        reason: StopReason::Cancelled,
        at: T,
    })
    .unwrap();
    assert_eq!(j.state.run(), Some(&run()));
    j.apply(exited(0)).unwrap();
    assert!(matches!(j.state, JobState::Finished(_)));
    assert_eq!(j.state.run(), Some(&run()));

    let mut never = job();
    never
        .apply(Event::SpawnFailed {
            error: "ENOENT".into(),
            storage: false,
            at: T,
        })
        .unwrap();
    assert_eq!(never.state.run(), None);
}

/// The message an illegal event gets names the job, the event and the state, as the API returns it.
#[test]
fn illegal_events_say_what_was_refused_and_where() {
    let mut finished = job();
    finished.apply(Event::Started { run: run() }).unwrap();
    finished.apply(exited(0)).unwrap();
    let events = [
        (Event::Started { run: run() }, "started"),
        (
            Event::SpawnFailed {
                error: "x".into(),
                storage: true,
                at: T,
            },
            "spawn_failed",
        ),
        (
            Event::StopRequested {
                reason: StopReason::Cancelled,
                at: T,
            },
            "stop_requested",
        ),
        (exited(1), "exited"),
        (
            Event::Interrupted {
                reason: "x".into(),
                at: T,
            },
            "interrupted",
        ),
        (
            Event::Quarantined {
                reason: "x".into(),
                at: T,
            },
            "quarantined",
        ),
    ];
    for (event, name) in events {
        assert_eq!(
            finished.clone().apply(event).unwrap_err().to_string(),
            format!("job 7: cannot apply {name} while finished")
        );
    }
    assert_eq!(
        finished
            .clone()
            .apply(Event::Requeue { at: T })
            .unwrap_err()
            .to_string(),
        "job 7: cannot apply requeued while finished: the retry policy allows no further attempt"
    );
    assert_eq!(
        job()
            .apply(Event::Requeue { at: T })
            .unwrap_err()
            .to_string(),
        "job 7: cannot apply requeued while queued"
    );
    assert_eq!(JobId(12345).to_string(), "12345");
}

#[test]
fn timestamps_convert_to_and_from_system_time_on_both_sides_of_the_epoch() {
    for ms in [0i64, 1, 1_500, 1_700_000_000_123, -1, -1_500] {
        let t = Timestamp::from_unix_millis(ms);
        assert_eq!(t.unix_millis(), ms);
        let system = if ms >= 0 {
            UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
        };
        assert_eq!(t.to_system_time(), system, "{ms}");
        assert_eq!(Timestamp::from_system_time(system), t, "{ms}");
    }
}

#[test]
fn elapsed_time_is_never_negative() {
    let (early, late) = (
        Timestamp::from_unix_millis(2_000),
        Timestamp::from_unix_millis(5_250),
    );
    assert_eq!(late.since(early), Duration::from_millis(3_250));
    assert_eq!(early.since(late), Duration::ZERO);
    assert_eq!(late.since(late), Duration::ZERO);
}

#[test]
fn sizes_in_terabytes_parse_and_show() {
    for (input, bytes) in [
        ("2T", 2u64 << 40),
        ("1tib", 1 << 40),
        ("3 TB", 3 << 40),
        ("0.5t", 1 << 39),
    ] {
        assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{input}");
    }
    // 2e7 TiB is past u64::MAX bytes.
    let err = "20000000T".parse::<ByteSize>().unwrap_err();
    assert_eq!(err.reason, "too large");
    assert_eq!(err.to_string(), "invalid size \"20000000T\": too large");
    for (bytes, shown) in [
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (5 << 40, "5.0 TiB"),
        // TiB is the largest unit: more is still shown in TiB, never in an unnamed unit.
        (2048 << 40, "2048.0 TiB"),
        (u64::MAX, "16777216.0 TiB"),
    ] {
        assert_eq!(ByteSize(bytes).to_string(), shown);
    }
}

#[test]
fn zero_counters_are_left_out_of_records() {
    let quiet = serde_json::to_value(Accounting::default()).unwrap();
    assert!(quiet.get("log_dropped_bytes").is_none(), "{quiet}");
    let dropped = Accounting {
        log_dropped_bytes: 4096,
        ..Accounting::default()
    };
    let json = serde_json::to_value(&dropped).unwrap();
    assert_eq!(json["log_dropped_bytes"], 4096);
    assert_eq!(serde_json::from_value::<Accounting>(json).unwrap(), dropped);

    let mut j = job();
    let json = serde_json::to_value(&j).unwrap();
    assert!(json.get("interruptions").is_none(), "{json}");
    j.interruptions = 2;
    let json = serde_json::to_value(&j).unwrap();
    assert_eq!(json["interruptions"], 2);
    assert_eq!(serde_json::from_value::<Job>(json).unwrap(), j);
}

#[test]
fn a_candidates_excess_is_memory_over_its_reservation() {
    let candidate = |memory_bytes, reserved_bytes| Candidate {
        id: JobId(1),
        priority: 0,
        started_at_ms: 0,
        memory_bytes,
        reserved_bytes,
    };
    assert_eq!(candidate(Some(700), 200).excess_bytes(), 500);
    assert_eq!(candidate(Some(200), 700).excess_bytes(), 0);
    assert_eq!(candidate(None, 700).excess_bytes(), 0);
}

#[test]
fn unknown_engine_events_are_written_back_as_they_were_read() {
    let detail = serde_json::json!({"gpu": 0, "celsius": 91});
    let event = EngineEvent::from_parts("gpu_overheated".into(), detail.clone());
    assert_eq!(
        event,
        EngineEvent::Unrecognized {
            kind: "gpu_overheated".into(),
            detail: detail.clone()
        }
    );
    assert_eq!(event.kind(), "gpu_overheated");
    assert_eq!(
        event.to_parts().unwrap(),
        ("gpu_overheated".to_owned(), detail)
    );
}

#[test]
fn stamping_fills_only_events_not_yet_stamped() {
    let mut events = [
        NewEvent::new(JobEvent::Requeued { attempt: 2 }),
        NewEvent {
            attempt: Some(1),
            ..NewEvent::new(JobEvent::Requeued { attempt: 2 })
        },
    ];
    NewEvent::stamp(&mut events, 3);
    assert_eq!(
        events.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [Some(3), Some(1)]
    );
}

#[test]
fn cpu_time_counts_every_mode_and_idle_and_iowait_are_not_busy() {
    let ticks = CpuModes::<i64> {
        user: 1,
        nice: 2,
        system: 4,
        idle: 8,
        iowait: 16,
        irq: 32,
        softirq: 64,
        steal: 128,
    };
    assert_eq!(ticks.total(), 255);
    assert_eq!(ticks.busy(), 255 - 8 - 16);
    let seconds = ticks.map(|t| t as f64 / 100.0);
    assert!((seconds.total() - 2.55).abs() < 1e-9, "{seconds:?}");
    assert_eq!(seconds.steal, 1.28);
}

#[test]
fn a_redacted_view_keeps_environment_names_but_not_values() {
    let mut spec = JobSpec::new("true", Vec::<String>::new());
    spec.env.insert("TOKEN".into(), "hunter2".into());
    spec.env.insert("LANG".into(), "C".into());
    spec.secrets
        .insert("OPENAI_API_KEY".into(), "openai".into());
    let mut view = JobView {
        job: Job::new(JobId(1), spec, T),
        live: None,
        waiting: None,
    };
    view.redact();
    let env = &view.job.spec.env;
    assert_eq!(
        env.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("LANG", "[redacted]"), ("TOKEN", "[redacted]")]
    );
    // A secret is only a name: nothing to hide.
    assert_eq!(view.job.spec.secrets["OPENAI_API_KEY"], "openai");
    let json = serde_json::to_string(&view).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
}
