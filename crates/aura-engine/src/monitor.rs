//! One task per running attempt: launches the tree, races its exit against the timeout, stop requests,
//! memory violations and (for a job that reports progress) its stall window, runs the stop sequence (or
//! kills at once for memory), collects the accounting and reports each step to the actor. It also has
//! ffprobe measure the inputs of an FFmpeg job whose duration its arguments do not tell, and freezes and
//! thaws the tree for an operator's pause and resume — the time paused counts neither toward the timeout
//! nor toward the stall window.

use crate::protocol::{ActReply, Command};
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
    /// An operator's pause and resume, forwarded by the actor.
    pub control: mpsc::Receiver<Control>,
}

/// What the actor forwards to a monitor: the tree is to be frozen or thawed. The monitor reports back
/// with [`Command::Frozen`], passing the reply on.
pub(crate) struct Control {
    /// Freeze (`true`) or thaw.
    pub pause: bool,
    pub by: Option<String>,
    pub reply: ActReply,
}

/// Room for the few control requests an operator can make at once; the actor refuses more.
pub(crate) const CONTROL_CAPACITY: usize = 4;

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
            paused_secs: 0.0,
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
            self.stop(&mut tree, &stop_sequence, cut()).await
        } else {
            let mut deadline = tokio::time::Instant::now() + self.spec.timeout;
            let timeout = tokio::time::sleep_until(deadline);
            tokio::pin!(timeout);
            // While paused: since when. The timeout and the stall check wait; both resume shifted by the
            // time the tree stood still.
            let mut paused_since: Option<tokio::time::Instant> = None;
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
                    () = &mut timeout, if paused_since.is_none() => {
                        tracing::info!(job_id = %id, timeout = ?self.spec.timeout, "job timed out, stopping its tree");
                        self.report(Command::TimedOut { id }).await;
                        break tree.stop_or_kill(&stop_sequence, cut()).await;
                    }
                    // An error here means the actor is gone; stopping is the only safe thing to do then.
                    _ = self.stop.changed() => break self.stop(&mut tree, &stop_sequence, cut()).await,
                    violation = probe.memory_violation() => {
                        tracing::warn!(job_id = %id, ?violation, "memory violation, killing the tree");
                        self.report(Command::MemoryViolation { id, violation }).await;
                        break (tree.kill().await, vec![StopSignal::Kill]);
                    }
                    Some(control) = self.control.recv() => {
                        let asked = tokio::time::Instant::now();
                        let result = match (control.pause, paused_since) {
                            (true, None) => tree.pause().await.map(|_| {
                                paused_since = Some(tokio::time::Instant::now());
                            }),
                            (false, Some(since)) => tree.resume().await.map(|_| {
                                let paused = since.elapsed();
                                deadline += paused;
                                timeout.as_mut().reset(deadline);
                                probe.resumed(paused);
                                paused_since = None;
                            }),
                            // The actor checks the job's state first; this is a request racing another.
                            (true, Some(_)) => Err(std::io::Error::other("the tree is already paused")),
                            (false, None) => Err(std::io::Error::other("the tree is not paused")),
                        };
                        if let Err(e) = &result {
                            tracing::warn!(job_id = %id, pause = control.pause, error = %e, "could not freeze or thaw the tree");
                        }
                        self.report(Command::Frozen {
                            id,
                            paused: control.pause,
                            result: result.map(|()| asked.elapsed()).map_err(|e| e.to_string()),
                            by: control.by,
                            reply: control.reply,
                        })
                        .await;
                    }
                    _ = tick(stall_check.as_mut()), if paused_since.is_none() => {
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
        // Whatever an operator asks now comes too late: the tree is gone.
        self.control.close();
        while let Ok(control) = self.control.try_recv() {
            let action = if control.pause {
                aura_model::JobAction::Pause
            } else {
                aura_model::JobAction::Resume
            };
            let _ = control.reply.send(Err(crate::EngineError::InvalidState {
                id,
                state: "stopping",
                action,
            }));
        }
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

    /// The stop sequence, cut short by `cut` — or, for a tree to be killed at once (`aura kill`, the
    /// emergency stage), SIGKILL to the whole tree without a first signal.
    async fn stop(
        &self,
        tree: &mut RunningTree,
        sequence: &aura_model::StopSequence,
        cut: impl Future<Output = ()>,
    ) -> (aura_model::ExitStatus, Vec<StopSignal>) {
        if let Some(exit) = tree.exit_status() {
            (exit, Vec::new())
        } else if *self.kill.borrow() {
            (tree.kill().await, vec![StopSignal::Kill])
        } else {
            tree.stop_or_kill(sequence, cut).await
        }
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
