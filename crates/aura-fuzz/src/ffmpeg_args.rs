//! The `ffmpeg_args` target: an FFmpeg command line as Aura plans its run (`aura_media::plan`: the
//! `-progress` pipe it adds, the duration and the inputs it reads), and the duration parsers on the way
//! (`parse_time`, `probe_duration`).

use aura_media::{is_ffmpeg, parse_time, plan, probe_command, probe_duration, Channel};
use std::time::Duration;

/// The bytes as text, split at NUL into arguments (as a job spec's argv holds them):
/// - the planned arguments hold every original one, in order; with the pipe, exactly `-progress pipe:3`
///   and then the originals; the stderr channel only where the user gave `-progress`;
/// - the expected duration is never zero; the inputs to probe are original arguments, each once, none a
///   pipe, and each gives an `ffprobe` call that cannot read it as an option;
/// - a duration `parse_time` accepts, written back to the microsecond, reads back the same.
pub fn ffmpeg_args(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let planned = plan(&args, 3);
    assert!(
        in_order(&args, &planned.args),
        "{args:?} -> {:?}",
        planned.args
    );
    match planned.progress {
        Channel::Pipe => {
            let mut expected = vec!["-progress".to_owned(), "pipe:3".to_owned()];
            expected.extend_from_slice(&args);
            assert_eq!(planned.args, expected);
        }
        Channel::Stderr => {
            assert_eq!(planned.args, args);
            assert!(args.iter().any(|a| a == "-progress"), "{args:?}");
        }
    }
    assert_ne!(planned.expected, Some(Duration::ZERO), "{args:?}");
    for (at, input) in planned.probe_inputs.iter().enumerate() {
        assert!(args.contains(input), "{input:?} is not among {args:?}");
        assert!(
            !planned.probe_inputs[..at].contains(input),
            "{input:?} twice"
        );
        assert!(
            input != "-" && !input.starts_with("pipe:") && !input.starts_with("fd:"),
            "{input:?}"
        );
        let probe = probe_command(input);
        let last = probe.last().expect("probe_command names the input");
        assert!(
            !last.starts_with('-') && last.ends_with(input.as_str()),
            "{probe:?}"
        );
    }

    for arg in &args {
        round_trip(arg);
        is_ffmpeg(arg);
    }
    round_trip(&text);
    probe_duration(&text);
}

/// Whether `sub` appears in `all` in order (other items between allowed).
fn in_order(sub: &[String], all: &[String]) -> bool {
    let mut rest = all.iter();
    sub.iter().all(|s| rest.any(|a| a == s))
}

fn round_trip(text: &str) {
    if let Some(d) = parse_time(text) {
        let shown = format!("{}.{:06}", d.as_secs(), d.subsec_micros());
        assert_eq!(parse_time(&shown), Some(d), "{text:?} read as {shown}");
        assert_eq!(
            d.subsec_nanos() % 1000,
            0,
            "{text:?}: finer than a microsecond"
        );
    }
}
