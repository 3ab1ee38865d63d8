//! The FFmpeg plan against the real tools (Debian's `ffmpeg` and `ffprobe`, skipped where they are not
//! installed): the arguments `plan` returns run, their `-progress` pipe reads as blocks, and what
//! `probe_command` makes `ffprobe` print reads as the clip's duration.

use aura_media::{plan, probe_command, probe_duration, Channel, ProgressBlocks, Report};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Whether `tool` runs here; says so when it does not, so that a skipped test is visible.
fn installed(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipped: `{tool}` is not installed");
    }
    ok
}

/// A folder of its own under the system's temporary one, removed when dropped (a failed test included).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("aura-media-{test}-{}", std::process::id()));
        // Left over from an earlier run with the same pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary folder");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, args: &[String], dir: &Path) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A two-second lavfi clip, as a user would ask for it; `fd` as `plan` takes it.
fn encode_args(clip: &str) -> Vec<String> {
    [
        "-nostdin",
        "-y",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=2:size=160x120:rate=25",
        "-c:v",
        "mpeg4",
        clip,
    ]
    .map(String::from)
    .to_vec()
}

fn assert_about(got: Option<Duration>, expected: Duration, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no duration"));
    let off = got.max(expected) - got.min(expected);
    assert!(
        off <= Duration::from_millis(100),
        "{what}: {got:?}, expected about {expected:?}"
    );
}

#[test]
fn the_progress_pipe_of_a_real_encode_reads_as_blocks() {
    if !installed("ffmpeg") {
        return;
    }
    let dir = TempDir::new("progress-pipe");
    let user = encode_args("clip.mp4");
    // Stdout rather than fd 3: the standard library gives a child no extra descriptors.
    let plan = plan(&user, 1);
    assert_eq!(plan.progress, Channel::Pipe);
    assert_eq!(&plan.args[..2], ["-progress", "pipe:1"]);
    assert_eq!(plan.expected, Some(Duration::from_secs(2)));
    assert!(plan.probe_inputs.is_empty(), "{:?}", plan.probe_inputs);

    let output = run("ffmpeg", &plan.args, &dir.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut blocks = ProgressBlocks::default();
    let reports: Vec<Report> = stdout.lines().filter_map(|l| blocks.line(l)).collect();
    let last = reports
        .last()
        .unwrap_or_else(|| panic!("no blocks in {stdout:?}"));
    assert!(last.end, "the last block is not progress=end: {stdout:?}");
    assert_eq!(reports.iter().filter(|r| r.end).count(), 1, "{stdout:?}");
    assert!(stdout.trim_end().ends_with("progress=end"), "{stdout:?}");
    assert_eq!(last.frame, Some(50), "{last:?}");
    assert_about(last.out_time, Duration::from_secs(2), "the last out_time");
}

#[test]
fn ffprobe_tells_the_duration_of_a_real_encode() {
    if !installed("ffmpeg") || !installed("ffprobe") {
        return;
    }
    let dir = TempDir::new("probe");
    // A name that reads as an option unless `probe_command` guards it.
    let clip = "-clip.mp4";
    run("ffmpeg", &encode_args(&format!("./{clip}")), &dir.0);

    let plan = plan(&["-i".to_owned(), clip.to_owned(), "out.mkv".to_owned()], 3);
    assert_eq!(plan.expected, None);
    assert_eq!(plan.probe_inputs, [clip]);

    let output = run("ffprobe", &probe_command(clip), &dir.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_about(probe_duration(&stdout), Duration::from_secs(2), &stdout);
}
