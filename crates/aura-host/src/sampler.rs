//! The background sampler: one thread ("aura-host") owning the [`Collector`], a fixed-size ring of
//! snapshots, and the cheap [`HostSampler`] handle requests read from. Requests never sample:
//! CPU usage is a difference between two samples, so it must come from here.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::collector::Collector;
use crate::snapshot::HostSnapshot;

/// How the background sampler samples the host; the default samples every second and keeps 300
/// snapshots (5 minutes).
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// Time between samples.
    pub interval: Duration,
    /// Snapshots kept; the oldest is dropped first. At least 1 is kept.
    pub history: usize,
    /// A path on the volume whose free space is reported.
    pub data_dir: PathBuf,
    /// Whether to try NVML at all.
    pub nvml: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            history: 300,
            data_dir: PathBuf::from("."),
            nvml: true,
        }
    }
}

/// State shared between the handle and the thread.
struct Shared {
    /// The ring. A plain Mutex: it is held only to push or clone `Arc`s, never across I/O.
    ring: Mutex<VecDeque<Arc<HostSnapshot>>>,
    capacity: usize,
    /// Set by `stop`; the Condvar wakes the sleeping thread at once instead of after `interval`.
    stopping: Mutex<bool>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks can leave the data half-updated, so a poisoned lock is usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn push(&self, s: HostSnapshot) {
        let mut ring = lock(&self.ring);
        while ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(Arc::new(s));
    }

    fn stop(&self) {
        *lock(&self.stopping) = true;
        self.wake.notify_all();
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            // Never join ourselves (a stop from inside the thread would deadlock).
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("host sampler thread panicked");
            }
        }
    }
}

/// Stops the thread when the last handle is dropped, so a forgotten `stop` leaks nothing.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Cheap, cloneable handle to the sampler thread.
#[derive(Clone)]
pub struct HostSampler {
    shared: Arc<Shared>,
    _guard: Arc<StopOnDrop>,
}

impl HostSampler {
    /// Starts the sampler thread ("aura-host"). NVML is initialised and a first sample taken
    /// before this returns, so `latest()` is `Some` at once unless that sample failed; CPU ratios
    /// need two samples, so the first snapshot has them as `None`.
    pub fn start(cfg: SamplerConfig) -> std::io::Result<HostSampler> {
        let shared = Arc::new(Shared {
            ring: Mutex::new(VecDeque::with_capacity(cfg.history.max(1))),
            capacity: cfg.history.max(1),
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        });
        let mut collector = Collector::new(cfg.data_dir.clone(), cfg.nvml);
        let mut failing = false;
        take(&shared, &mut collector, &mut failing);
        let interval = cfg.interval.max(Duration::from_millis(1));
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("aura-host".into())
            .spawn(move || run(&thread_shared, collector, interval, failing))?;
        *lock(&shared.thread) = Some(handle);
        Ok(HostSampler {
            _guard: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    /// The newest snapshot; `None` until the first sample succeeds.
    pub fn latest(&self) -> Option<Arc<HostSnapshot>> {
        lock(&self.shared.ring).back().cloned()
    }

    /// Oldest first, at most `history` entries.
    pub fn history(&self) -> Vec<Arc<HostSnapshot>> {
        lock(&self.shared.ring).iter().cloned().collect()
    }

    /// Stops and joins the thread. Blocking, but quick: the thread waits on a condvar that this
    /// signals, so it returns within one sample's time. Idempotent.
    pub fn stop(&self) {
        self.shared.stop();
    }
}

/// Samples once; logs a failure when it starts and a recovery when it ends, not every interval.
fn take(shared: &Shared, collector: &mut Collector, failing: &mut bool) {
    match collector.sample() {
        Ok(s) => {
            if *failing {
                tracing::info!("host sampling recovered");
                *failing = false;
            }
            shared.push(s);
        }
        Err(e) => {
            if !*failing {
                tracing::warn!(error = %e, "host sample failed");
                *failing = true;
            }
        }
    }
}

fn run(shared: &Shared, mut collector: Collector, interval: Duration, mut failing: bool) {
    // Deadlines advance by `interval` so the cadence does not drift by the sampling time.
    let mut next = Instant::now() + interval;
    loop {
        {
            let mut stopping = lock(&shared.stopping);
            loop {
                if *stopping {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                stopping = shared
                    .wake
                    .wait_timeout(stopping, next - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        take(shared, &mut collector, &mut failing);
        next += interval;
        // After a long stall (suspend, overload) skip the missed ticks instead of bursting.
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
    }
}
