//! Media jobs end to end with real FFmpeg: progress in the record and over server-sent events, an encode
//! to stdout, stall detection, pipelines of dependent jobs, `Last-Event-ID` replay, and event streams that
//! leave nothing behind.

use super::*;
use aura_model::{Progress, ProgressUpdate};
use std::os::unix::process::CommandExt;

pub(crate) fn have_ffmpeg() -> bool {
    let found = Command::new("ffmpeg").arg("-version").output().is_ok();
    if !found {
        eprintln!("skipping: ffmpeg is not installed (cargo xtask test installs it)");
    }
    found
}

/// One server-sent event as the tests read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Reads a `text/event-stream` response: every complete event, until `stop` says enough or the stream
/// ends, within `limit`.
pub(crate) async fn read_events(
    mut response: reqwest::Response,
    limit: Duration,
    mut stop: impl FnMut(&Sse) -> bool,
) -> Vec<Sse> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await else {
            return events;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = Sse::default();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event.event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    event.id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    event.data.push_str(v);
                }
            }
            if event.event.is_empty() && event.data.is_empty() {
                continue; // a heartbeat comment
            }
            let done = stop(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

pub(crate) async fn stream(
    daemon: &Daemon,
    path: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let url = format!("{}{path}", daemon.url);
    let mut request = authed(&url).get(&url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("stream request");
    assert_eq!(response.status(), 200, "{path}");
    let content_type = response.headers()["content-type"].to_str().unwrap_or("");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    response
}

fn finished_state(view: &JobView) -> &aura_model::Finished {
    match &view.job.state {
        JobState::Finished(f) => f,
        other => panic!("job {} not finished: {other:?}", view.job.id),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encode_reports_progress_in_its_record_and_over_sse() {
    if !have_ffmpeg() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    // `-re`: real time, so the encode takes its 10 s and reports all along.
    let id = submit(
        &client,
        &spec(
            "ffmpeg",
            &[
                "-nostdin",
                "-y",
                "-re",
                "-f",
                "lavfi",
                "-i",
                "testsrc=duration=10:size=320x240:rate=25",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "out.mp4",
            ],
        ),
    )
    .await;
    let response = stream(&daemon, &format!("/api/jobs/{id}/events/stream"), None).await;
    // The record shows the progress while the job runs.
    let running = wait_running(&client, id, 1).await;
    let mut live = None;
    for _ in 0..40 {
        live = client.get(id).await.unwrap().live.and_then(|l| l.progress);
        if live.as_ref().is_some_and(|p| p.reports > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = live.unwrap_or_else(|| panic!("no progress in the record: {running:?}"));
    assert_eq!(live.expected_secs, Some(10.0), "from the lavfi duration");
    let events = read_events(response, Duration::from_secs(60), |e| e.event == "end").await;
    let progress: Vec<Progress> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| serde_json::from_str::<ProgressUpdate>(&e.data).expect("a progress update"))
        .inspect(|u| assert_eq!(u.job_id, id))
        .map(|u| u.progress)
        .collect();
    assert!(progress.len() >= 5, "{progress:?}");
    let percents: Vec<f64> = progress.iter().filter_map(|p| p.percent).collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "percent never goes back: {percents:?}"
    );
    assert!(progress.iter().any(|p| p.fps.is_some_and(|f| f > 0.0)));
    assert!(progress.iter().any(|p| p.speed.is_some_and(|s| s > 0.0)));
    assert!(progress.iter().any(|p| p.eta_secs.is_some_and(|s| s > 0.0)));
    let kinds: Vec<String> = events
        .iter()
        .filter(|e| e.event == "job")
        .map(|e| serde_json::from_str::<aura_model::JobEventRecord>(&e.data).expect("a record"))
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(kinds, ["submitted", "started", "exited", "finished"]);
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("end"));
    // The record keeps the final progress: 100 %, done.
    let view = wait_done(&client, id).await;
    let last = finished_state(&view)
        .accounting
        .progress
        .clone()
        .expect("final progress in the record");
    assert!(last.done, "{last:?}");
    assert_eq!(last.percent, Some(100.0));
    assert_eq!(last.frame, Some(250));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encode_to_stdout_still_writes_a_valid_stream() {
    if !have_ffmpeg() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let id = submit(
        &client,
        &spec(
            "ffmpeg",
            &[
                "-nostdin",
                "-f",
                "lavfi",
                "-i",
                "testsrc=duration=3:size=160x120:rate=25",
                "-c:v",
                "mpeg2video",
                "-f",
                "mpegts",
                "-",
            ],
        ),
    )
    .await;
    let view = wait_done(&client, id).await;
    assert!(outcome(&view).is_success(), "{view:?}");
    let progress = finished_state(&view).accounting.progress.clone();
    assert!(
        progress
            .as_ref()
            .is_some_and(|p| p.done && p.percent == Some(100.0)),
        "progress went to its own pipe: {progress:?}"
    );
    // The captured stdout is the media stream itself, untouched by progress output.
    let mut bytes = Vec::new();
    let mut offset = 0;
    loop {
        let chunk = client.logs(id, "stdout", offset).await.expect("stdout");
        if chunk.data.is_empty() {
            break;
        }
        offset = chunk.next_offset;
        bytes.extend_from_slice(&chunk.data);
    }
    let file = daemon.scratch().join("stdout.ts");
    std::fs::write(&file, &bytes).unwrap();
    let seconds = super::ffmpeg::probe_duration(&file).expect("ffprobe reads the captured stream");
    assert!((2.5..3.5).contains(&seconds), "{seconds}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_stops_progressing_ends_stalled_and_one_without_progress_never_does() {
    if !have_ffmpeg() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let scratch = daemon.scratch();
    let fifo = scratch.join("in.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .expect("mkfifo");
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    // 8 s of video, then the writer keeps the FIFO open and sends nothing more.
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ ffmpeg -nostdin -loglevel error -f lavfi -i testsrc=d=8:size=160x120:rate=25 \
             -c:v mpeg2video -f mpegts -; sleep 60; }} > {0}",
            fifo.display()
        ))
        .process_group(0)
        .spawn()
        .expect("fifo writer");
    let out = scratch.join("stalled.ts");
    let mut stalling = spec(
        "ffmpeg",
        &[
            "-nostdin",
            "-y",
            "-i",
            fifo.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "mpegts",
            out.to_str().unwrap(),
        ],
    );
    stalling.stall_after = Some(Duration::from_secs(3));
    stalling.stop = "INT:2s,TERM:1s".parse().unwrap();
    // No progress reporting: never judged stalled, whatever its window.
    let mut quiet = spec("sleep", &["5"]);
    quiet.stall_after = Some(Duration::from_secs(1));
    let started = Instant::now();
    let stalled = submit(&client, &stalling).await;
    let quiet = submit(&client, &quiet).await;
    let view = wait_done(&client, stalled).await;
    let took = started.elapsed();
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_child(&writer),
        rustix::process::Signal::KILL,
    );
    let _ = writer.wait();
    assert_eq!(outcome(&view), &Outcome::Stalled, "{view:?}");
    // The window after the last advance, plus one look, plus the stop sequence: far from the 1 h timeout.
    assert!(took < Duration::from_secs(30), "{took:?}");
    let events = client.events(stalled).await.unwrap();
    let reason = events
        .iter()
        .find_map(|e| match &e.event {
            aura_model::JobEvent::Stalled { reason } => Some(reason.clone()),
            _ => None,
        })
        .expect("a stalled event");
    assert!(reason.contains("has not advanced"), "{reason}");
    let seconds =
        super::ffmpeg::probe_duration(&out).expect("ffprobe reads what the stalled job wrote");
    assert!(seconds > 0.0, "{seconds}");
    let quiet = wait_done(&client, quiet).await;
    assert!(outcome(&quiet).is_success(), "{quiet:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_step_pipeline_runs_in_order_and_a_failed_step_fails_the_rest() {
    if !have_ffmpeg() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let dir = daemon.scratch();
    let path = |name: &str| dir.join(name).display().to_string();
    let batch = |tts: serde_json::Value| {
        serde_json::json!({"jobs": [
            tts,
            {"name": "render", "after": ["tts"], "program": "ffmpeg", "args": [
                "-nostdin", "-y", "-f", "lavfi", "-i", "testsrc=d=2:size=160x120:rate=25",
                "-c:v", "libx264", "-preset", "ultrafast", path("video.mp4")]},
            {"name": "encode", "after": ["tts", "render"], "program": "ffmpeg", "args": [
                "-nostdin", "-y", "-i", path("video.mp4"), "-i", path("voice.wav"),
                "-c:v", "copy", "-c:a", "aac", "-shortest", path("final.mp4")]},
        ]})
    };
    let tts = serde_json::json!({"name": "tts", "program": "ffmpeg", "args": [
        "-nostdin", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=2", path("voice.wav")]});
    let url = format!("{}/api/jobs/batch", daemon.url);
    let response = authed(&url)
        .post(&url)
        .json(&batch(tts))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let page: aura_model::JobPage = response.json().await.unwrap();
    let ids: Vec<JobId> = page.jobs.iter().map(|v| v.job.id).collect();
    assert_eq!(page.jobs[2].job.spec.after, [ids[0], ids[1]]);
    let mut runs = Vec::new();
    for &id in &ids {
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
        let run = finished_state(&view).run.clone().expect("it ran");
        runs.push((run.started_at, finished_state(&view).finished_at));
    }
    assert!(
        runs[1].0 >= runs[0].1 && runs[2].0 >= runs[1].1,
        "in order: {runs:?}"
    );
    let seconds = super::ffmpeg::probe_duration(&dir.join("final.mp4")).expect("the muxed result");
    assert!((1.5..2.5).contains(&seconds), "{seconds}");

    // Step 1 fails: steps 2 and 3 end without starting.
    let failing = serde_json::json!({"name": "tts", "program": "ffmpeg", "args": [
        "-nostdin", "-y", "-i", path("no-such-input.txt"), path("voice2.wav")]});
    let response = authed(&url)
        .post(&url)
        .json(&batch(failing))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let page: aura_model::JobPage = response.json().await.unwrap();
    let ids: Vec<JobId> = page.jobs.iter().map(|v| v.job.id).collect();
    let first = wait_done(&client, ids[0]).await;
    assert_eq!(outcome(&first).name(), "failed");
    // Both wait for step 1, so both fail for it.
    for &id in &ids[1..] {
        let view = wait_done(&client, id).await;
        assert_eq!(
            outcome(&view),
            &Outcome::DependencyFailed {
                job_id: ids[0],
                outcome: "failed".into(),
            }
        );
        assert!(finished_state(&view).run.is_none(), "never started");
    }
    // A dependency that does not exist is refused, and nothing is queued.
    let mut orphan = spec("true", &[]);
    orphan.after = vec![JobId(999_999)];
    let error = client
        .submit(&orphan)
        .await
        .expect_err("unknown dependency");
    assert!(error.to_string().contains("999999"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_with_last_event_id_replays_exactly_the_missed_events() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let first = submit(&client, &spec("true", &[])).await;
    wait_done(&client, first).await;
    // A fresh all-jobs stream starts from now; read until the first job event of a new job.
    let response = stream(&daemon, "/api/events/stream?progress=false", None).await;
    let second = submit(&client, &spec("true", &[])).await;
    let seen = read_events(response, Duration::from_secs(20), |e| e.event == "job").await;
    let last_id = seen.last().and_then(|e| e.id.clone()).expect("an id");
    // Missed while away: the rest of the second job, and three more jobs.
    wait_done(&client, second).await;
    let mut missed_jobs = vec![second];
    for _ in 0..3 {
        let id = submit(&client, &spec("true", &[])).await;
        wait_done(&client, id).await;
        missed_jobs.push(id);
    }
    let expected: Vec<i64> = {
        let mut seqs = Vec::new();
        for &id in &missed_jobs {
            seqs.extend(client.events(id).await.unwrap().iter().map(|e| e.seq));
        }
        let after: i64 = last_id.split('.').next().unwrap().parse().unwrap();
        seqs.retain(|s| *s > after);
        seqs.sort();
        seqs
    };
    let response = stream(&daemon, "/api/events/stream?progress=false", Some(&last_id)).await;
    let want = expected.len();
    let mut got = 0;
    let replayed = read_events(response, Duration::from_secs(20), |e| {
        got += usize::from(e.event == "job");
        got == want
    })
    .await;
    let seqs: Vec<i64> = replayed
        .iter()
        .filter(|e| e.event == "job")
        .map(|e| {
            serde_json::from_str::<aura_model::JobEventRecord>(&e.data)
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(
        seqs, expected,
        "exactly the missed events, in order, none twice"
    );
    // A job's own stream resumes the same way: nothing after its end.
    let job_events = client.events(second).await.unwrap();
    let after = job_events[1].seq.to_string();
    let response = stream(
        &daemon,
        &format!("/api/jobs/{second}/events/stream"),
        Some(&after),
    )
    .await;
    let replayed = read_events(response, Duration::from_secs(20), |e| e.event == "end").await;
    let seqs: Vec<i64> = replayed
        .iter()
        .filter(|e| e.event == "job")
        .map(|e| {
            serde_json::from_str::<aura_model::JobEventRecord>(&e.data)
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(
        seqs,
        job_events[2..].iter().map(|e| e.seq).collect::<Vec<_>>()
    );
}

/// The daemon's fds, threads, RSS (KiB) and async tasks.
async fn daemon_resources(daemon: &Daemon) -> (u64, u64, u64, u64) {
    let url = format!("{}/api/diagnostics/resources", daemon.url);
    let d: aura_model::Diagnostics = http_get(url).await.unwrap().json().await.unwrap();
    let p = &d.process;
    (
        p.open_fds,
        p.threads,
        p.rss_bytes / 1024,
        d.tasks.unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn event_streams_leave_nothing_behind_and_are_capped() {
    let daemon = Daemon::start(&[("AURA_API__MAX_EVENT_STREAMS", "8")]);
    let client = daemon.client();
    // Something to stream while clients come and go.
    let mut busy = spec(
        "sh",
        &[
            "-c",
            "for i in $(seq 1200); do echo line $i; sleep 0.05; done",
        ],
    );
    busy.progress = aura_model::ProgressMode::Aura;
    let busy = submit(&client, &busy).await;
    let base = format!("{}/api/events/stream", daemon.url);
    let cycles = |n: usize| {
        let (base, job) = (
            base.clone(),
            format!("{}/api/jobs/{busy}/events/stream?logs=stdout", daemon.url),
        );
        async move {
            // Its own client, dropped at the end: its pooled connections close with it.
            let http = authed(&base);
            for i in 0..n {
                let url = if i % 2 == 0 { &base } else { &job };
                let mut response = http.get(url).send().await.expect("connect");
                assert_eq!(response.status(), 200);
                if i % 3 == 0 {
                    // Mid-stream: read what came, then hang up.
                    let _ = tokio::time::timeout(Duration::from_millis(20), response.chunk()).await;
                }
                drop(response);
            }
        }
    };
    // Warm up first (the job's log files, the runtime's worker state), then take the baseline.
    cycles(50).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds, threads, rss, tasks) = daemon_resources(&daemon).await;
    cycles(1000).await;
    // The streams are gone; the job that gave them something to say goes too. Its output kept the
    // blocking pool busy (on a loaded runner, with more threads than the baseline's), and a pool thread
    // used again within its idle time never ends: only what the streams held must be measured.
    let _ = client.cancel(busy).await;
    let http = authed(&base);
    // What each stream held goes when its client does; the blocking threads that read logs and the
    // store for the streams end after their idle time (10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now = daemon_resources(&daemon).await;
        let settled = now.0 <= fds + 2 && now.1 <= threads + 2 && now.3 <= tasks + 2;
        if settled || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(after.0 <= fds + 2, "fds {fds} → {}", after.0);
    assert!(after.1 <= threads + 2, "threads {threads} → {}", after.1);
    assert!(after.3 <= tasks + 2, "tasks {tasks} → {}", after.3);
    assert!(after.2 < rss + 10 * 1024, "RSS {rss} KiB → {} KiB", after.2);
    let metrics = http_get(format!("{}/metrics", daemon.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("aura_event_streams 0"), "{metrics}");
    // The cap: the ninth stream at once is refused with its problem code.
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(http.get(&base).send().await.unwrap());
    }
    let refused = http.get(&base).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_subscribers");
    drop(open);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_nothing_slows_no_job() {
    let daemon = Daemon::start(&[("AURA_MEDIA__PROGRESS_INTERVAL", "50ms")]);
    let client = daemon.client();
    // A raw connection that never reads its socket.
    let address = daemon.url.trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&address).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stuck
        .write_all(
            format!(
                "GET /api/events/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
                daemon.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Many events while it reads none; every job still completes (the `lagged` test goes past the buffers).
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..400 {
        ids.push(
            submit(
                &client,
                &spec("echo", &["a line of output to fill the stream"]),
            )
            .await,
        );
    }
    for id in ids {
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success());
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_from_stderr_from_the_generic_protocol_and_from_ffprobe() {
    if !have_ffmpeg() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let dir = daemon.scratch();
    let final_progress = |view: &JobView| {
        *finished_state(view)
            .accounting
            .progress
            .clone()
            .unwrap_or_else(|| panic!("no progress: {view:?}"))
    };
    // The job names its own `-progress` target: Aura reads FFmpeg's stderr status line instead.
    let own = dir.join("own-progress.txt").display().to_string();
    let input = dir.join("input.mp4").display().to_string();
    let id = submit(
        &client,
        &spec(
            "ffmpeg",
            &[
                "-nostdin",
                "-y",
                "-progress",
                &own,
                "-f",
                "lavfi",
                "-i",
                "testsrc=duration=4:size=160x120:rate=25",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                &input,
            ],
        ),
    )
    .await;
    let view = wait_done(&client, id).await;
    assert!(outcome(&view).is_success(), "{view:?}");
    let p = final_progress(&view);
    assert_eq!(p.source, Some(aura_model::ProgressSource::FfmpegStderr));
    assert_eq!(p.expected_secs, Some(4.0));
    assert!(p.percent.is_some_and(|v| v > 90.0), "{p:?}");
    assert!(
        std::fs::metadata(&own).is_ok(),
        "the job's own progress file is written"
    );

    // An input file's duration comes from ffprobe.
    let id = submit(
        &client,
        &spec(
            "ffmpeg",
            &[
                "-nostdin",
                "-y",
                "-re",
                "-i",
                &input,
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                &dir.join("again.mp4").display().to_string(),
            ],
        ),
    )
    .await;
    let view = wait_done(&client, id).await;
    assert!(outcome(&view).is_success(), "{view:?}");
    let p = final_progress(&view);
    assert!(
        p.expected_secs.is_some_and(|s| (3.9..4.1).contains(&s)),
        "expected duration from ffprobe: {p:?}"
    );
    assert_eq!(p.percent, Some(100.0));

    // A tool speaking the generic protocol on the fd Aura gives it, and on stderr.
    let mut generic = spec(
        "sh",
        &[
            "-c",
            "for i in 2 4 6; do echo \"aura-progress 0.$i\" >&\"$AURA_PROGRESS_FD\"; sleep 0.2; done; \
             echo 'aura-progress 80%' >&2; sleep 0.2; echo 'aura-progress 1' >&3",
        ],
    );
    generic.progress = aura_model::ProgressMode::Aura;
    let id = submit(&client, &generic).await;
    let view = wait_done(&client, id).await;
    assert!(outcome(&view).is_success(), "{view:?}");
    let p = final_progress(&view);
    assert_eq!(p.source, Some(aura_model::ProgressSource::Generic));
    assert_eq!(p.reports, 5, "{p:?}");
    assert!(p.done && p.percent == Some(100.0), "{p:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_streams_end_at_once_when_the_daemon_shuts_down() {
    let mut daemon = Daemon::start(&[]);
    let response = stream(&daemon, "/api/events/stream", None).await;
    daemon.signal(rustix::process::Signal::TERM);
    let events = read_events(response, Duration::from_secs(10), |e| e.event == "end").await;
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("end"),
        "{events:?}"
    );
    assert!(events
        .last()
        .is_some_and(|e| e.data.contains("shutting down")));
    // The stream held nothing open: no wait for the server's grace for busy connections.
    assert!(daemon.wait_exit() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_falls_a_whole_buffer_behind_gets_lagged_and_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A small kernel buffer on the stream's connection: the client falls behind after fewer events.
    let daemon = Daemon::start(&[("AURA_API__STREAM_SEND_BUFFER", "64KiB")]);
    let client = daemon.client();
    let address: std::net::SocketAddr = daemon.url.trim_start_matches("http://").parse().unwrap();
    // A small receive window: the kernel holds little for a client that does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(address).await.unwrap();
    stuck
        .write_all(
            format!(
                "GET /api/events/stream?progress=false HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
                daemon.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = stuck.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).contains(" 200 "));
    // Far more events than the shared buffer (4,096) and the stream's socket buffers (the server caps its
    // own) hold, while this client reads nothing.
    let mut ids = Vec::new();
    for _ in 0..1800 {
        ids.push(submit(&client, &spec("true", &[])).await);
    }
    for id in ids {
        wait_done(&client, id).await;
    }
    // Reading again: what the kernel held, then a final `lagged` with where to resume, then the end of
    // the response (the last chunk; the connection itself may stay open for another request).
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 64 * 1024];
    while !text.ends_with(b"\r\n0\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stuck.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    assert!(
        text.ends_with(b"\r\n0\r\n\r\n"),
        "the response did not end: {} bytes, {} job events, lagged: {}, tail {:?}",
        text.len(),
        String::from_utf8_lossy(&text).matches("event: job").count(),
        String::from_utf8_lossy(&text).contains("lagged"),
        String::from_utf8_lossy(&text[text.len().saturating_sub(300)..])
    );
    let text = String::from_utf8_lossy(&text);
    let lagged = text
        .split("\n\n")
        .find(|block| block.contains("event: lagged"))
        .unwrap_or_else(|| panic!("no lagged event in {} bytes", text.len()));
    assert!(lagged.contains("resume_after"), "{lagged}");
    let metrics = http_get(format!("{}/metrics", daemon.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("aura_event_streams_closed_total{reason=\"lagged\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encode_past_its_timeout_is_finalised_not_cut() {
    if !have_ffmpeg() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let out = daemon.scratch().join("timed-out.mp4");
    let mut encode = spec(
        "ffmpeg",
        &[
            "-nostdin",
            "-y",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=60:size=320x240:rate=25",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            out.to_str().unwrap(),
        ],
    );
    encode.timeout = Duration::from_secs(3);
    let id = submit(&client, &encode).await;
    let view = wait_done(&client, id).await;
    assert_eq!(outcome(&view), &Outcome::TimedOut);
    let signals: Vec<&str> = finished_state(&view)
        .signals_sent
        .iter()
        .map(|s| s.name())
        .collect();
    assert_eq!(
        signals,
        ["SIGINT"],
        "FFmpeg finished its file on the first signal"
    );
    let seconds =
        super::ffmpeg::probe_duration(&out).expect("ffprobe reads the MP4: its index was written");
    assert!((1.0..5.0).contains(&seconds), "{seconds}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_dependant_survives_a_daemon_crash() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client();
    let first = submit(&client, &spec("sleep", &["2"])).await;
    wait_running(&client, first, 1).await;
    let mut then = spec("true", &[]);
    then.after = vec![first];
    let then = submit(&client, &then).await;
    let waiting = client.get(then).await.unwrap();
    assert!(
        waiting
            .waiting
            .as_deref()
            .is_some_and(|w| w.contains("after")),
        "{waiting:?}"
    );
    // An unclean death: the first job is interrupted and requeued; its dependant must still wait for it.
    daemon.stop_now();
    daemon.spawn();
    let client = daemon.client();
    let first = wait_done(&client, first).await;
    assert!(outcome(&first).is_success(), "{first:?}");
    let then = wait_done(&client, then).await;
    assert!(outcome(&then).is_success(), "{then:?}");
    let started = finished_state(&then)
        .run
        .as_ref()
        .expect("it ran")
        .started_at;
    assert!(
        started >= finished_state(&first).finished_at,
        "after its dependency"
    );
}
