//! The one sampler thread: every `sample_interval` it reads current memory, process count and CPU of
//! every registered tree and keeps the peaks in the trees' atomics; trees with a memory limit are also
//! sampled every `watch_interval` in between (the watchdog and OOM checks). A newly registered tree is
//! sampled at once (its "memory at start"). Finished trees flag themselves `done` and are dropped from
//! the registry on the next round, so the registry does not grow with the number of jobs ever run.

use crate::tree::TreeStats;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) enum Wake {
    /// A tree just registered: sample it alone, at once (its "memory at start").
    New(Arc<TreeStats>),
    Stop,
}

#[derive(Debug)]
pub(crate) struct Sampler {
    // A plain Mutex: held only to push or to clone the list, never across I/O.
    registry: Arc<Mutex<Vec<Arc<TreeStats>>>>,
    wake: SyncSender<Wake>,
}

impl Sampler {
    pub fn start(
        interval: Duration,
        watch_interval: Duration,
    ) -> std::io::Result<(Sampler, std::thread::JoinHandle<()>)> {
        let registry: Arc<Mutex<Vec<Arc<TreeStats>>>> = Arc::default();
        let (wake, rx) = std::sync::mpsc::sync_channel(64);
        let reg = registry.clone();
        let thread = std::thread::Builder::new()
            .name("aura-sampler".into())
            .spawn(move || run(reg, rx, interval, watch_interval))?;
        Ok((Sampler { registry, wake }, thread))
    }

    /// Registers a tree and asks for an immediate sample of it (of it alone: a busy engine registers
    /// trees far more often than the sampling interval). Never blocks; with the channel full the tree
    /// waits for the next round.
    pub fn register(&self, stats: Arc<TreeStats>) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stats.clone());
        match self.wake.try_send(Wake::New(stats)) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks the thread to stop (blocking send: call off the runtime).
    pub fn stop(&self) {
        let _ = self.wake.send(Wake::Stop);
    }
}

fn run(
    registry: Arc<Mutex<Vec<Arc<TreeStats>>>>,
    rx: Receiver<Wake>,
    interval: Duration,
    watch_interval: Duration,
) {
    let mut next_full = Instant::now() + interval;
    let mut watching = false;
    loop {
        let now = Instant::now();
        let wake_at = if watching {
            next_full.min(now + watch_interval)
        } else {
            next_full
        };
        let mut snapshot = None;
        // A round that is due runs next whatever is queued, or a steady stream of new trees would starve
        // it; one message is still taken, so a stop is never starved either.
        let message = if now < wake_at {
            match rx.recv_timeout(wake_at - now) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => break,
            }
        };
        match message {
            Some(Wake::Stop) => break,
            Some(Wake::New(tree)) => {
                tree.sample(&mut snapshot);
                watching |= tree.watched();
                if Instant::now() < wake_at {
                    continue;
                }
            }
            None => {}
        }
        let full = Instant::now() >= next_full;
        if full {
            next_full = Instant::now() + interval;
        }
        let trees: Vec<Arc<TreeStats>> = {
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            reg.retain(|t| !t.done.load(std::sync::atomic::Ordering::Relaxed));
            watching = reg.iter().any(|t| t.watched());
            reg.iter()
                .filter(|t| full || t.watched())
                .cloned()
                .collect()
        };
        for t in trees {
            if full {
                t.sample(&mut snapshot);
            } else {
                t.watch(&mut snapshot);
            }
        }
    }
}
