//! The CPU throttle of running jobs, in a test binary of its own (cargo runs test binaries one after
//! another): its signal is CPU used outside Aura, which another test's daemon would be. Two busy jobs run;
//! a busy loop outside Aura starts; the jobs' CPU drops to the cap within a few guard intervals, and comes
//! back once the loop ends. Each change is an engine event.

use aura_client::Client;
use aura_model::{JobId, JobSpec, LoggedEvent};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

/// The share of the machine all jobs together may use while throttled.
const SHARE: f64 = 0.25;

/// A process outside Aura, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The jobs' CPU use, in cores, over `span` (from their sampled CPU seconds).
async fn cores(client: &Client, ids: &[JobId], span: Duration) -> f64 {
    let total = |views: Vec<aura_model::JobView>| -> f64 {
        views
            .iter()
            .filter_map(|v| v.live.as_ref())
            .map(|l| l.cpu_user_secs.unwrap_or(0.0) + l.cpu_system_secs.unwrap_or(0.0))
            .sum()
    };
    let mut before = Vec::new();
    for &id in ids {
        before.push(client.get(id).await.expect("get"));
    }
    let started = Instant::now();
    tokio::time::sleep(span).await;
    let mut after = Vec::new();
    for &id in ids {
        after.push(client.get(id).await.expect("get"));
    }
    (total(after) - total(before)) / started.elapsed().as_secs_f64()
}

/// Waits for an engine event of `kind` after `seq`; its sequence number and how long it took.
async fn engine_event(client: &Client, kind: &str, seq: i64, limit: Duration) -> (i64, Duration) {
    let start = Instant::now();
    loop {
        let events = client.engine_events(seq).await.expect("engine events");
        if let Some(e) = events.iter().find(|e| e.event.kind() == kind) {
            return (e.seq, start.elapsed());
        }
        assert!(start.elapsed() < limit, "no {kind} event within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_desktop_caps_running_jobs_and_gets_its_cpu_back() {
    let share = SHARE.to_string();
    let daemon = Daemon::start(&[
        // The throttle is what is tested (the shared machine's defaults leave it off); admission is
        // not: the loop outside must not pause it (those defaults see to that).
        ("AURA_GUARDS__THROTTLE__ENABLED", "true"),
        ("AURA_GUARDS__THROTTLE__CPU_SHARE", &share),
    ]);
    let (url, token) = (&daemon.url, &daemon.token);
    let client = Client::authorized(url, token).expect("client");
    let machine = cpus();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let spec = JobSpec::new("sh", ["-c", "while :; do :; done"]);
        ids.push(client.submit(&spec).await.expect("submit").job.id);
    }
    // Whatever else runs on the machine now (a build) is outside Aura too: wait for calm first.
    let calm = Instant::now();
    while client.status().await.expect("status").throttled.is_some() {
        assert!(
            calm.elapsed() < Duration::from_secs(90),
            "the machine stayed busy outside Aura for 90 s: nothing to measure against"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let free = cores(&client, &ids, Duration::from_secs(2)).await;
    eprintln!("jobs alone: {free:.2} cores of {machine}");
    let seq = client
        .engine_events(0)
        .await
        .expect("engine events")
        .last()
        .map_or(0, |e| e.seq);

    let desktop = Killed(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("busy loop"),
    );
    let (seq, took) = engine_event(&client, "cpu_throttled", seq, Duration::from_secs(15)).await;
    eprintln!("throttled {took:?} after the busy loop started");
    let status = client.status().await.expect("status");
    assert!(status.throttled.is_some(), "{status:?}");
    let capped = cores(&client, &ids, Duration::from_secs(3)).await;
    eprintln!(
        "jobs throttled: {capped:.2} cores (cap {:.2})",
        SHARE * machine
    );
    assert!(
        capped < SHARE * machine + 0.25,
        "jobs used {capped:.2} cores under a cap of {:.2}",
        SHARE * machine
    );
    let metrics = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("aura_cpu_throttled 1"), "{metrics}");

    drop(desktop);
    let (_, took) = engine_event(&client, "cpu_restored", seq, Duration::from_secs(20)).await;
    eprintln!("restored {took:?} after the busy loop ended");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let back = cores(&client, &ids, Duration::from_secs(2)).await;
    eprintln!("jobs restored: {back:.2} cores");
    assert!(
        back > SHARE * machine + 0.25,
        "jobs still at {back:.2} cores after the cap was lifted"
    );
    assert!(client.status().await.expect("status").throttled.is_none());
    for id in ids {
        client.cancel(id).await.expect("cancel");
    }
}
