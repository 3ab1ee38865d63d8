//! The limits a job spec or lease is validated against, pinned at their exact boundaries (the value at a
//! limit accepted, one past it refused with the message the user sees), and the small vocabularies a spec
//! is written in: stop signals, backends, names, durations.

use aura_model::{
    check_env_entry, limits, Backend, ByteSize, JobSpec, LeaseSpec, LiveUsage, ResourceRequest,
    SpecError, StopSequence, StopSignal, StopStep, DEFAULT_TIMEOUT,
};
use std::time::Duration;

fn spec() -> JobSpec {
    JobSpec::new("ffmpeg", ["-version"])
}

fn validated(edit: &dyn Fn(&mut JobSpec, u64), n: u64) -> Result<(), SpecError> {
    let mut s = spec();
    edit(&mut s, n);
    s.validate()
}

fn us(n: u64) -> usize {
    usize::try_from(n).expect("test sizes fit in usize")
}

fn u32_of(n: u64) -> u32 {
    u32::try_from(n).expect("test counts fit in u32")
}

/// Arguments of at most `MAX_ARG_BYTES` each that, with a one-byte program, make `total` bytes.
fn command_line_of(s: &mut JobSpec, total: u64) {
    s.program = "p".into();
    let mut left = us(total) - 1;
    s.args.clear();
    while left > 0 {
        let n = left.min(limits::MAX_ARG_BYTES);
        s.args.push("a".repeat(n));
        left -= n;
    }
}

struct Boundary {
    what: &'static str,
    edit: &'static dyn Fn(&mut JobSpec, u64),
    accepted: u64,
    refused: u64,
    message: String,
    /// Answered as "limit exceeded" (the request was too big) rather than as a malformed spec.
    size_limit: bool,
}

fn boundaries() -> Vec<Boundary> {
    const MIB: u64 = 1 << 20;
    vec![
        Boundary {
            what: "argument count",
            edit: &|s, n| s.args = vec!["a".into(); us(n)],
            accepted: 4096,
            refused: 4097,
            message: "too many arguments (at most 4096)".into(),
            size_limit: true,
        },
        Boundary {
            what: "command line bytes",
            edit: &command_line_of,
            accepted: 1 << 20,
            refused: (1 << 20) + 1,
            message: "command line is longer than 1048576 bytes".into(),
            size_limit: true,
        },
        Boundary {
            what: "environment variables",
            edit: &|s, n| s.env = (0..n).map(|i| (format!("V{i}"), "x".into())).collect(),
            accepted: 1024,
            refused: 1025,
            message: "too many environment variables (at most 1024)".into(),
            size_limit: true,
        },
        Boundary {
            what: "secrets",
            edit: &|s, n| s.secrets = (0..n).map(|i| (format!("S{i}"), "key".into())).collect(),
            accepted: 64,
            refused: 65,
            message: "too many secrets (at most 64)".into(),
            size_limit: true,
        },
        Boundary {
            what: "labels",
            edit: &|s, n| s.labels = (0..n).map(|i| (format!("l{i}"), "x".into())).collect(),
            accepted: 64,
            refused: 65,
            message: "too many labels (at most 64)".into(),
            size_limit: true,
        },
        Boundary {
            what: "label key bytes",
            edit: &|s, n| _ = s.labels.insert("k".repeat(us(n)), "x".into()),
            accepted: 256,
            refused: 257,
            message: format!(
                "invalid label name {:?} (letters, digits, _ - . / only)",
                "k".repeat(257)
            ),
            size_limit: false,
        },
        Boundary {
            what: "label value bytes",
            edit: &|s, n| _ = s.labels.insert("kind".into(), "v".repeat(us(n))),
            accepted: 256,
            refused: 257,
            message: "label kind is longer than 256 bytes".into(),
            size_limit: true,
        },
        Boundary {
            what: "providers",
            edit: &|s, n| s.resources.providers = (0..n).map(|i| format!("p{i}")).collect(),
            accepted: 64,
            refused: 65,
            message: "too many providers (at most 64)".into(),
            size_limit: true,
        },
        Boundary {
            what: "provider name bytes",
            edit: &|s, n| _ = s.resources.providers.insert("p".repeat(us(n))),
            accepted: 256,
            refused: 257,
            message: format!(
                "invalid provider name {:?} (letters, digits, _ - . only)",
                "p".repeat(257)
            ),
            size_limit: false,
        },
        Boundary {
            what: "stop steps",
            edit: &|s, n| {
                s.stop = StopSequence(
                    (0..n)
                        .map(|_| StopStep {
                            signal: StopSignal::Int,
                            grace: Duration::from_secs(1),
                        })
                        .collect(),
                )
            },
            accepted: 8,
            refused: 9,
            message: "too many stop steps (at most 8)".into(),
            size_limit: true,
        },
        Boundary {
            what: "grace period (ms)",
            edit: &|s, n| s.stop.0[0].grace = Duration::from_millis(n),
            accepted: 3_600_000,
            refused: 3_600_001,
            message: "invalid stop sequence: a grace period is at most 1 hour".into(),
            size_limit: false,
        },
        Boundary {
            what: "timeout (ms)",
            edit: &|s, n| s.timeout = Duration::from_millis(n),
            accepted: 30 * 24 * 3_600_000,
            refused: 30 * 24 * 3_600_000 + 1,
            message: "timeout out of range: at most 30 days".into(),
            size_limit: false,
        },
        Boundary {
            what: "max_retries",
            edit: &|s, n| s.retry.max_retries = u32_of(n),
            accepted: 100,
            refused: 101,
            message: "max_retries out of range: at most 100".into(),
            size_limit: false,
        },
        Boundary {
            what: "max_pressure_requeues",
            edit: &|s, n| s.retry.max_pressure_requeues = u32_of(n),
            accepted: 100,
            refused: 101,
            message: "max_pressure_requeues out of range: at most 100".into(),
            size_limit: false,
        },
        Boundary {
            what: "gpus",
            edit: &|s, n| s.resources.gpus = Some(u32_of(n)),
            accepted: 64,
            refused: 65,
            message: "gpus out of range: at most 64".into(),
            size_limit: false,
        },
        Boundary {
            what: "cpu (thousandths of a core), upper",
            edit: &|s, n| s.resources.cpu = Some(n as f64 / 1000.0),
            accepted: 4_096_000,
            refused: 4_096_001,
            message: "cpu out of range: must be in [0.001, 4096]".into(),
            size_limit: false,
        },
        Boundary {
            what: "cpu (thousandths of a core), lower",
            edit: &|s, n| s.resources.cpu = Some(n as f64 / 1000.0),
            accepted: 1,
            refused: 0,
            message: "cpu out of range: must be in [0.001, 4096]".into(),
            size_limit: false,
        },
        Boundary {
            what: "stated memory (it is also the limit)",
            edit: &|s, n| s.resources.memory = Some(ByteSize(n)),
            accepted: MIB,
            refused: MIB - 1,
            message: "memory out of range: a stated memory request is also the job's limit: at least 1 MiB"
                .into(),
            size_limit: false,
        },
        Boundary {
            what: "memory_max",
            edit: &|s, n| s.resources.memory_max = Some(ByteSize(n)),
            accepted: MIB,
            refused: MIB - 1,
            message: "memory_max out of range: must be at least 1 MiB".into(),
            size_limit: false,
        },
        Boundary {
            what: "memory_max against the request",
            edit: &|s, n| {
                s.resources.memory = Some(ByteSize(1 << 30));
                s.resources.memory_max = Some(ByteSize(n));
            },
            accepted: 1 << 30,
            refused: (1 << 30) - 1,
            message: "memory_max out of range: must be at least the memory request".into(),
            size_limit: false,
        },
    ]
}

#[test]
fn every_limit_accepts_its_value_and_refuses_one_past_it() {
    for b in boundaries() {
        assert_eq!(
            validated(b.edit, b.accepted).map_err(|e| e.to_string()),
            Ok(()),
            "{} = {} must be accepted",
            b.what,
            b.accepted
        );
        let err = validated(b.edit, b.refused).expect_err(b.what);
        assert_eq!(err.to_string(), b.message, "{} = {}", b.what, b.refused);
        assert_eq!(
            err.is_size_limit(),
            b.size_limit,
            "{}: is_size_limit of {err}",
            b.what
        );
    }
}

#[test]
fn an_environment_entry_is_one_string_under_the_per_string_limit() {
    // `NAME=VALUE`: the name, the `=` and the value together.
    let most = limits::MAX_ARG_BYTES;
    assert_eq!(check_env_entry("KEY", most - 4), Ok(()));
    let err = check_env_entry("KEY", most - 3).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("environment entry KEY=… is longer than {most} bytes")
    );
    assert!(err.is_size_limit());
}

#[test]
fn names_allow_letters_digits_and_a_few_marks() {
    let provider = |name: &str| {
        let mut s = spec();
        s.resources.providers.insert(name.into());
        s.validate().map_err(|e| e.to_string())
    };
    let label = |name: &str| {
        let mut s = spec();
        s.labels.insert(name.into(), "x".into());
        s.validate().map_err(|e| e.to_string())
    };
    let secret = |name: &str| {
        let mut s = spec();
        s.secrets.insert("API_KEY".into(), name.into());
        s.validate().map_err(|e| e.to_string())
    };
    for good in [
        "openai",
        "ElevenLabs",
        "v2",
        "eleven_labs",
        "a-b",
        "x.y",
        "A_9-z.0",
    ] {
        assert_eq!(provider(good), Ok(()), "provider {good:?}");
        assert_eq!(label(good), Ok(()), "label {good:?}");
        assert_eq!(secret(good), Ok(()), "secret {good:?}");
    }
    // Only label keys may hold `/` (`team/kind`).
    assert_eq!(label("team/kind"), Ok(()));
    for bad in ["", "bad name", "a/b", "é", "a:b", "a=b"] {
        assert_eq!(
            provider(bad),
            Err(format!(
                "invalid provider name {bad:?} (letters, digits, _ - . only)"
            ))
        );
        assert_eq!(
            secret(bad),
            Err(format!(
                "invalid secret name {bad:?} (letters, digits, _ - . only)"
            ))
        );
        if bad != "a/b" {
            assert_eq!(
                label(bad),
                Err(format!(
                    "invalid label name {bad:?} (letters, digits, _ - . / only)"
                ))
            );
        }
    }
}

#[test]
fn secret_variables_are_environment_names_not_shadowing_env() {
    let secret_var = |var: &str| {
        let mut s = spec();
        s.secrets.insert(var.into(), "openai".into());
        s.env.insert("PATH".into(), "/bin".into());
        s.validate().map_err(|e| e.to_string())
    };
    assert_eq!(secret_var("OPENAI_API_KEY"), Ok(()));
    assert_eq!(
        secret_var(""),
        Err("invalid environment variable name \"\"".into())
    );
    assert_eq!(
        secret_var("A=B"),
        Err("invalid environment variable name \"A=B\"".into())
    );
    assert_eq!(
        secret_var("PATH"),
        Err("environment variable \"PATH\" is set both in env and in secrets".into())
    );
}

#[test]
fn stop_signals_are_the_linux_signals_by_name_or_number() {
    // (signal, number on Linux, name shown, name on the wire)
    let table = [
        (StopSignal::Hup, 1, "SIGHUP", "HUP"),
        (StopSignal::Int, 2, "SIGINT", "INT"),
        (StopSignal::Quit, 3, "SIGQUIT", "QUIT"),
        (StopSignal::Kill, 9, "SIGKILL", "KILL"),
        (StopSignal::Usr1, 10, "SIGUSR1", "USR1"),
        (StopSignal::Usr2, 12, "SIGUSR2", "USR2"),
        (StopSignal::Term, 15, "SIGTERM", "TERM"),
    ];
    for (signal, number, name, wire) in table {
        assert_eq!(signal.number(), number, "{signal:?}");
        assert_eq!(signal.name(), name, "{signal:?}");
        assert_eq!(
            serde_json::to_string(&signal).unwrap(),
            format!("\"{wire}\"")
        );
        for written in [
            wire.to_owned(),
            name.to_owned(),
            name.to_ascii_lowercase(),
            number.to_string(),
            format!(" {wire} "),
        ] {
            assert_eq!(written.parse::<StopSignal>(), Ok(signal), "{written:?}");
        }
    }
    for unknown in ["STOP", "SIGSTOP", "19", "0", "", "SIG"] {
        assert_eq!(
            unknown.parse::<StopSignal>().unwrap_err().to_string(),
            format!("unknown signal {unknown:?} (use INT, TERM, HUP, QUIT, USR1, USR2 or KILL)")
        );
    }
}

#[test]
fn backends_show_their_wire_names() {
    for (backend, name) in [
        (Backend::CgroupV2, "cgroup_v2"),
        (Backend::Hybrid, "hybrid"),
        (Backend::CgroupV1, "cgroup_v1"),
        (Backend::ProcessGroup, "process_group"),
    ] {
        assert_eq!(backend.as_str(), name);
        assert_eq!(backend.to_string(), name);
        assert_eq!(
            serde_json::to_string(&backend).unwrap(),
            format!("\"{name}\"")
        );
    }
}

#[test]
fn a_job_that_states_no_timeout_gets_one_hour() {
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(3600));
    assert_eq!(spec().timeout, Duration::from_secs(3600));
    let parsed: JobSpec = serde_json::from_str(r#"{"program":"true"}"#).unwrap();
    assert_eq!(parsed.timeout, Duration::from_secs(3600));
    let json = serde_json::to_value(&parsed).unwrap();
    assert_eq!(json["timeout"], "1h");
}

#[test]
fn durations_read_whole_seconds_as_numbers() {
    let parsed: JobSpec = serde_json::from_str(r#"{"program":"true","timeout":90}"#).unwrap();
    assert_eq!(parsed.timeout, Duration::from_secs(90));
    let lease: LeaseSpec = serde_json::from_str(r#"{"ttl":30}"#).unwrap();
    assert_eq!(lease.ttl, Duration::from_secs(30));
}

#[test]
fn the_kind_label_names_the_class_of_work() {
    let mut s = spec();
    assert_eq!(s.kind(), None);
    s.labels.insert("team".into(), "video".into());
    assert_eq!(s.kind(), None);
    s.labels.insert("kind".into(), "encode".into());
    assert_eq!(s.kind(), Some("encode"));
}

#[test]
fn lease_ttl_is_between_a_millisecond_and_an_hour() {
    let lease = |ttl: Duration| {
        LeaseSpec {
            resources: ResourceRequest::default(),
            ttl,
            holder: None,
        }
        .validate()
        .map_err(|e| e.to_string())
    };
    let refused = Err("ttl out of range: must be between 1ms and 1 hour".to_owned());
    assert_eq!(lease(Duration::ZERO), refused);
    assert_eq!(lease(Duration::from_millis(1)), Ok(()));
    assert_eq!(lease(Duration::from_secs(3600)), Ok(()));
    assert_eq!(lease(Duration::from_millis(3_600_001)), refused);
}

#[test]
fn memory_used_prefers_the_in_use_figure() {
    let usage = |in_use, current| LiveUsage {
        memory_in_use: in_use,
        memory_current: current,
        ..LiveUsage::default()
    };
    assert_eq!(usage(Some(300), Some(500)).memory_used(), Some(300));
    assert_eq!(usage(None, Some(500)).memory_used(), Some(500));
    assert_eq!(usage(None, None).memory_used(), None);
}
