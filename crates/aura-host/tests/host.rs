//! The sampler and the process snapshot against the real host.
//!
//! Every test takes `SERIAL`: the fd-count test must not see descriptors opened by a sampler
//! thread running in a parallel test, and the CPU test wants the machine otherwise quiet.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aura_host::{process_snapshot, HostSampler, HostSnapshot, SamplerConfig};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cfg(dir: &std::path::Path, interval_ms: u64, history: usize) -> SamplerConfig {
    SamplerConfig {
        interval: Duration::from_millis(interval_ms),
        history,
        data_dir: dir.to_owned(),
        nvml: true,
    }
}

/// Waits until `after`, then for a snapshot with CPU ratios (i.e. not the first sample) that the sampler
/// took after that moment: one newer than whatever was latest then.
fn wait_for_ratios(s: &HostSampler, after: Instant, timeout: Duration) -> Arc<HostSnapshot> {
    std::thread::sleep(after.saturating_duration_since(Instant::now()));
    let deadline = Instant::now() + timeout;
    let before = s.latest();
    loop {
        if let Some(l) = s.latest() {
            let newer = before.as_ref().map_or(true, |b| !Arc::ptr_eq(b, &l));
            if newer && l.cpu.busy_ratio.is_some() {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no new sample in {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a thread named "aura-host" exists. The name is set by the new thread itself as it
/// starts, so right after `start()` it may take a moment to appear: poll briefly.
fn sampler_thread_alive() -> bool {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if sampler_thread_named() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sampler_thread_named() -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        std::fs::read_to_string(t.unwrap().path().join("comm"))
            .map(|c| c.trim() == "aura-host")
            .unwrap_or(false)
    })
}

#[test]
fn sampler_on_the_real_host() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = HostSampler::start(cfg(dir.path(), 100, 3)).unwrap();

    let first = s.latest().expect("first sample is taken by start()");
    assert!(first.cpu.busy_ratio.is_none() && first.cpu.per_core.is_none());
    assert!(sampler_thread_alive());

    let snap = wait_for_ratios(&s, Instant::now(), Duration::from_secs(5));
    let busy = snap.cpu.busy_ratio.unwrap();
    assert!((0.0..=1.0).contains(&busy), "{busy}");
    let per_core = snap.cpu.per_core.as_ref().unwrap();
    let ncpu = std::thread::available_parallelism().unwrap().get();
    assert_eq!(per_core.len(), ncpu);
    assert!(per_core.iter().all(|r| (0.0..=1.0).contains(r)));
    assert!(snap.cpu.seconds.user > 0.0 && snap.cpu.seconds.idle > 0.0);

    let m = &snap.memory;
    assert!(m.total > m.available && m.available > 0, "{m:?}");
    assert_eq!(m.used, m.total - m.available);
    assert!(snap.load_average.iter().all(|l| *l >= 0.0));

    let vol = snap.data_volume.as_ref().expect("statvfs of a temp dir");
    assert!(vol.total >= vol.free && vol.free >= vol.available && vol.total > 0);

    if std::path::Path::new("/proc/pressure/cpu").exists() {
        let p = snap.pressure.as_ref().expect("PSI present");
        assert!((0.0..=1.0).contains(&p.memory.some.avg10));
    }
    assert!(snap.networks.iter().any(|n| n.loopback && n.name == "lo"));
    assert!(snap
        .networks
        .iter()
        .all(|n| n.rx_bytes_per_second.is_some_and(|r| r >= 0.0)));
    assert!(snap.disks.iter().all(|d| !d.name.starts_with("loop")));

    if std::path::Path::new("/dev/nvidiactl").exists() {
        let gpus = snap.gpus.as_ref().unwrap_or_else(|| {
            panic!(
                "NVIDIA device present but no GPUs: {:?}",
                snap.gpu_unavailable
            )
        });
        assert!(!gpus.is_empty());
        println!("gpus: {gpus:?}");
    } else {
        assert!(snap.gpus.is_none());
        let why = snap.gpu_unavailable.as_deref().expect("a reason");
        assert!(!why.is_empty());
        println!("gpu_unavailable: {why}");
    }
    assert!(snap.sample_cpu_seconds > 0.0 && snap.sample_cpu_seconds < 0.1);
    println!(
        "sample_cpu_seconds: {:.1} µs",
        snap.sample_cpu_seconds * 1e6
    );
    // The JSON shape the HTTP layer will serve.
    let json = serde_json::to_value(&*snap).unwrap();
    assert!(json["cpu"]["busy_ratio"].is_f64());
    assert!(json["at"].is_string());

    // History is bounded and ordered oldest first.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.history().first().is_some_and(|h| Arc::ptr_eq(h, &first)) {
        assert!(Instant::now() < deadline, "history never rotated");
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = s.history();
    assert_eq!(h.len(), 3);
    assert!(h.windows(2).all(|w| w[0].at <= w[1].at));

    let t = Instant::now();
    s.stop();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(!sampler_thread_named(), "stop() joined the thread");
    s.stop(); // idempotent
    assert!(s.latest().is_some(), "snapshots stay readable after stop");
}

#[test]
fn dropping_the_last_handle_stops_the_thread() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = HostSampler::start(cfg(dir.path(), 50, 2)).unwrap();
    let clone = s.clone();
    drop(s);
    assert!(sampler_thread_alive());
    drop(clone);
    assert!(!sampler_thread_named());
}

#[test]
fn busy_loop_raises_cpu_ratio() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let ncpu = std::thread::available_parallelism().unwrap().get() as f64;
    let s = HostSampler::start(cfg(dir.path(), 1000, 10)).unwrap();
    let idle = wait_for_ratios(&s, Instant::now(), Duration::from_secs(5));

    let start = Instant::now();
    let busy_thread = std::thread::spawn(move || {
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(2400) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        x
    });
    // Samples come every second: the first one taken after 1.1 s covers a window that starts after the
    // loop did and (taken by 2.1 s and some slack) ends before it stops.
    let busy = wait_for_ratios(
        &s,
        start + Duration::from_millis(1100),
        Duration::from_secs(5),
    );
    busy_thread.join().unwrap();
    s.stop();

    let busiest = busy
        .cpu
        .per_core
        .as_ref()
        .map_or(0.0, |cores| cores.iter().copied().fold(0.0, f64::max));
    let (idle, busy) = (idle.cpu.busy_ratio.unwrap(), busy.cpu.busy_ratio.unwrap());
    println!("idle {idle:.3}, busy {busy:.3}, busiest core {busiest:.3}, cores {ncpu}");
    // One core spun for the whole window: the machine was at least one core's worth busy.
    assert!(
        busy >= 0.8 / ncpu,
        "busy ratio {busy} with one spinning core"
    );
    assert!(
        busiest >= 0.8,
        "busiest core {busiest} with one spinning core"
    );
}

#[test]
fn process_snapshot_of_the_test_process() {
    let _g = serial();
    let p = process_snapshot().unwrap();
    assert_eq!(p.pid, std::process::id());
    assert!(p.rss_bytes > 0 && p.virtual_bytes >= p.rss_bytes);
    assert!(p.threads >= 1);
    assert!(p.max_fds >= p.open_fds && p.open_fds >= 3);
    assert!(p.cpu_user_seconds >= 0.0 && p.cpu_system_seconds >= 0.0);
    let now = aura_model::Timestamp::now();
    let age = now.since(p.start_time);
    assert!(
        p.start_time <= now && age < Duration::from_secs(3600),
        "{age:?}"
    );

    let file = tempfile::tempfile().unwrap();
    let opened = process_snapshot().unwrap();
    assert_eq!(opened.open_fds, p.open_fds + 1);
    drop(file);
    assert_eq!(process_snapshot().unwrap().open_fds, p.open_fds);

    let before = p.children;
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let with_child = process_snapshot().unwrap().children;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(with_child, before + 1);
    println!("{p:?}");
}
