//! One task per running attempt: launches the tree, races its exit against the timeout, stop requests,
//! memory violations and (for a job that reports progress) its stall window, runs the stop sequence (or
//! kills at once for memory), collects the accounting and reports each step to the actor. It also has
//! ffprobe measure the inputs of an FFmpeg job whose duration its arguments do not tell.

use crate::protocol::Command;
use crate::shared::Shared;
use aura_model::{JobId, JobSpec, Run, StopReason, StopSignal, Timestamp};
use aura_supervisor::{LaunchError, RunningTree};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A launch the actor has queued with the supervisor (in its dispatch order), for the monitor to await.
pub(crate) type Launching = Pin<Box<dyn Future<Output = Result<RunningTree, LaunchError>> + Send>>;

pub(crate) struct Monitor {
    pub id: JobId,
    pub spec: JobSpec,
    pub cwd: PathBuf,
    pub shared: Arc<Shared>,
    pub stop: watch::Receiver<Option<StopReason>>,
    /// Set to kill this tree at once, whatever its stop sequence says (the emergency stage).
    pub kill: watch::Receiver<bool>,
    /// What admission reserved for it: its real use is charged against this.
    pub reserved_memory: u64,
    /// Its `kind` label, under which an overrun teaches admission.
    pub kind: Option<String>,
    /// Inputs for ffprobe to measure once the tree runs (see `media::plan`).
    pub probe_inputs: Vec<String>,
    pub actor: mpsc::Sender<Command>,
}

/// The next tick of an interval; never, without one.
async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The result of a blocking task; never, without one.
async fn finished<T>(
    task: Option<&mut tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Resolves once `rx` holds `true`; never, if its sender is gone.
async fn until_set(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|k| *k).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Monitor {
    /// Awaits the launch the actor queued, then supervises the tree.
    pub(crate) async fn run(mut self, launching: Launching) {
        let id = self.id;
        let mut tree = match launching.await {
            Ok(tree) => tree,
            // The actor took the job back before it started (it already knows).
            Err(LaunchError::Withdrawn) => return,
            Err(e) => {
                self.report(Command::SpawnFailed {
                    id,
                    storage: e.is_storage(),
                    error: e.to_string(),
                })
                .await;
                return;
            }
        };
        let probe = tree.probe();
        self.shared
            .register_probe(id, probe.clone(), self.reserved_memory, self.kind.take());
        let run = Run {
            started_at: Timestamp::from_system_time(tree.started_at()),
            tree: tree.handle().clone(),
            cwd: self.cwd.clone(),
        };
        self.report(Command::Started { id, run }).await;

        let stop_sequence = self.spec.stop.clone();
        // Whatever stops the tree, its grace ends when the engine kills every tree (shutdown deadline) or
        // this one (the emergency stage). A sender that is gone cuts nothing.
        let all = self.shared.kill_trees.subscribe();
        let own = self.kill.clone();
        let cut = || {
            let (all, own) = (all.clone(), own.clone());
            async move {
                tokio::select! {
                    () = until_set(all) => {}
                    () = until_set(own) => {}
                }
            }
        };
        let already_stopped = self.stop.borrow_and_update().is_some();
        let (exit, signals_sent) = if already_stopped {
            tree.stop_or_kill(&stop_sequence, cut()).await
        } else {
            let timeout = tokio::time::sleep(self.spec.timeout);
            tokio::pin!(timeout);
            // Only a job that reports progress can stall; it is looked at a few times per window.
            let window = probe.reports_progress().then(|| {
                self.spec
                    .stall_after
                    .unwrap_or(self.shared.config.media.stall_after)
            });
            // Only then: a trivial job pays for no timer.
            let mut stall_check = window.map(|w| {
                let period = (w / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
                let mut check = tokio::time::interval(period);
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                check
            });
            let mut probing = self.measure_inputs();
            loop {
                tokio::select! {
                    exit = tree.wait() => break (exit, Vec::new()),
                    () = &mut timeout => {
                        tracing::info!(job_id = %id, timeout = ?self.spec.timeout, "job timed out, stopping its tree");
                        self.report(Command::TimedOut { id }).await;
                        break tree.stop_or_kill(&stop_sequence, cut()).await;
                    }
                    // An error here means the actor is gone; stopping is the only safe thing to do then.
                    _ = self.stop.changed() => break tree.stop_or_kill(&stop_sequence, cut()).await,
                    violation = probe.memory_violation() => {
                        tracing::warn!(job_id = %id, ?violation, "memory violation, killing the tree");
                        self.report(Command::MemoryViolation { id, violation }).await;
                        break (tree.kill().await, vec![StopSignal::Kill]);
                    }
                    _ = tick(stall_check.as_mut()) => {
                        let stalled = window.and_then(|w| probe.stalled(w));
                        if let Some(reason) = stalled {
                            tracing::warn!(job_id = %id, %reason, "job stalled, stopping its tree");
                            self.report(Command::Stalled { id, reason }).await;
                            break tree.stop_or_kill(&stop_sequence, cut()).await;
                        }
                    }
                    measured = finished(probing.as_mut()) => {
                        probing = None;
                        if let Ok(Some(expected)) = measured {
                            tracing::debug!(job_id = %id, ?expected, "expected duration from ffprobe");
                            probe.set_expected(expected);
                        }
                    }
                }
            }
        };
        let accounting = tree.finish().await;
        self.shared.unregister_probe(id, Some(&accounting));
        self.report(Command::Exited {
            id,
            exit,
            signals_sent,
            accounting,
        })
        .await;
    }

    /// Has ffprobe measure the job's inputs on a blocking thread (each run bounded by `probe_timeout`):
    /// the longest is the expected duration. `None` when there is nothing to measure.
    fn measure_inputs(&mut self) -> Option<tokio::task::JoinHandle<Option<Duration>>> {
        let media = &self.shared.config.media;
        if self.probe_inputs.is_empty() || media.ffprobe.is_empty() {
            return None;
        }
        let inputs = std::mem::take(&mut self.probe_inputs);
        let (shared, cwd) = (self.shared.clone(), self.cwd.clone());
        Some(tokio::task::spawn_blocking(move || {
            let media = &shared.config.media;
            inputs
                .iter()
                .filter_map(|input| {
                    shared.supervisor.probe_duration(
                        &media.ffprobe,
                        input,
                        &cwd,
                        media.probe_timeout,
                    )
                })
                .max()
        }))
    }

    async fn report(&self, command: Command) {
        // Fails only if the actor has ended, in which case nobody is left to tell.
        let _ = self.actor.send(command).await;
    }
}
