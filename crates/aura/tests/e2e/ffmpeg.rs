//! Real FFmpeg: an encode produces a valid video, and a cancel lets FFmpeg finalise it.

use super::*;

pub(super) fn probe_duration(path: &Path) -> Option<f64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn encode_produces_a_valid_video_and_cancel_finalises_it() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let out_dir = tempfile::tempdir().unwrap();
    // Jobs run as their own account: the output directory is theirs to write.
    std::fs::set_permissions(
        out_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let encode = |name: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec!["-nostdin".into(), "-y".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(
            [
                "-f",
                "lavfi",
                "-i",
                "testsrc=duration=3:size=320x240:rate=25",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.push(out_dir.path().join(name).display().to_string());
        JobSpec::new("ffmpeg", args)
    };
    let id = submit(&client, &encode("full.mp4", &[])).await;
    let view = wait_done(&client, id).await;
    assert!(outcome(&view).is_success(), "{view:?}");
    let full = probe_duration(&out_dir.path().join("full.mp4")).expect("ffprobe reads the encode");
    assert!((2.9..3.2).contains(&full), "duration {full}");

    // `-re` reads the source in real time, so the encode is still running when it is cancelled.
    let mut long = encode("cancelled.mp4", &["-re"]);
    let i = long
        .args
        .iter()
        .position(|a| a.starts_with("testsrc"))
        .unwrap();
    long.args[i] = "testsrc=duration=60:size=320x240:rate=25".into();
    let id = submit(&client, &long).await;
    wait_running(&client, id, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.cancel(id).await.unwrap();
    let view = wait_done(&client, id).await;
    assert_eq!(outcome(&view), &Outcome::Cancelled);
    let JobState::Finished(f) = &view.job.state else {
        unreachable!()
    };
    assert_eq!(
        f.signals_sent.iter().map(|s| s.name()).collect::<Vec<_>>(),
        vec!["SIGINT"],
        "FFmpeg stops on SIGINT"
    );
    let partial = probe_duration(&out_dir.path().join("cancelled.mp4"))
        .expect("the cancelled encode is playable");
    assert!(partial > 0.5 && partial < 30.0, "duration {partial}");
    // FFmpeg's last progress block says `progress=end` on SIGINT too: the record keeps the share reached.
    let progress = f
        .accounting
        .progress
        .as_ref()
        .expect("the encode's progress");
    assert!(progress.done, "{progress:?}");
    assert!(
        progress.percent.is_some_and(|p| p > 0.0 && p < 60.0),
        "a cancelled encode is not 100 % done: {progress:?}"
    );
}
