//! The janitor: its thread (schedules, the low-disk trigger, runs asked for over the
//! API) and its tasks over the data dir's roots — `tmp/`, `uploads/`, `cache/`, `work/`, `logs/`,
//! `archive/` — and the database. Every file-system step goes through `aura_janitor`'s fd-relative walk
//! (no symlink followed, no mount crossed, locked entries skipped, re-checked before each removal); this
//! module decides *what* is due from the job records, which only the engine can read.

use crate::shared::Shared;
use aura_janitor::{Report, Root, SweepOptions};
use aura_model::janitor::{
    Action, ActionKind, RunAnswer, RunRequest, TaskName, TaskReport, TaskRun, MAX_ACTIONS,
};
use aura_model::{EngineEvent, Job, JobId, Outcome, Timestamp};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

use crate::retention::{JanitorConfig, Layout};

/// A run asked for over the API, with where its answer goes.
pub(crate) struct RunOrder {
    pub request: RunRequest,
    pub reply: oneshot::Sender<RunAnswer>,
}

/// Runs waiting for the thread beyond the one it is on: a caller beyond them is told the janitor is busy.
pub(crate) const ORDERS: usize = 4;

/// The most jobs a dry run of `history` looks at (the store's cap on one call).
const DRY_RUN_LOOK: u32 = 1_000;

/// The janitor's thread; stopped and joined by `stop`.
pub(crate) struct JanitorThread {
    pub orders: std::sync::mpsc::SyncSender<RunOrder>,
    thread: std::thread::JoinHandle<()>,
}

impl JanitorThread {
    /// Its own thread: a task walks file systems and waits for the database for seconds at a time, which
    /// no async worker or the guards' 100 ms tick may do.
    pub(crate) fn start(
        shared: Arc<Shared>,
        actor: mpsc::Sender<crate::protocol::Command>,
    ) -> std::io::Result<JanitorThread> {
        let (orders, rx) = std::sync::mpsc::sync_channel(ORDERS);
        let rt = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("aura-janitor".into())
            .spawn(move || {
                let janitor = Janitor { shared, actor, rt };
                janitor.run(&rx);
            })?;
        Ok(JanitorThread { orders, thread })
    }

    /// Blocking: call off the async workers. A task under way finishes its current step first.
    pub(crate) fn stop(self) {
        drop(self.orders);
        let _ = self.thread.join();
    }
}

/// Settings keys under which each task's last run is kept across restarts (so that a weekly task of a
/// daemon restarted daily still runs weekly).
fn last_run_key(task: TaskName) -> String {
    format!("janitor.last_run.{task}")
}

struct Janitor {
    shared: Arc<Shared>,
    actor: mpsc::Sender<crate::protocol::Command>,
    rt: tokio::runtime::Handle,
}

impl Janitor {
    fn config(&self) -> &JanitorConfig {
        &self.shared.config.janitor
    }

    fn run(&self, orders: &std::sync::mpsc::Receiver<RunOrder>) {
        self.restore_last_runs();
        let mut last_early: Option<Instant> = None;
        loop {
            let scheduled = self.config().enabled;
            if scheduled {
                let now = Timestamp::now();
                let status = self.shared.janitor.status(self.config());
                let due: Vec<TaskName> = status
                    .tasks
                    .iter()
                    .filter(|t| t.next_run.is_some_and(|n| n <= now))
                    .map(|t| t.task)
                    .collect();
                for task in due {
                    if self.shared.closing.borrow().to_owned() {
                        return;
                    }
                    self.run_task(task, false, false);
                }
                if self.disk_low()
                    && last_early.map_or(true, |at| at.elapsed() >= self.config().early_every)
                {
                    last_early = Some(Instant::now());
                    tracing::warn!("the data volume is low on free space: running the janitor's space-freeing tasks early");
                    for task in TaskName::ALL.into_iter().filter(|t| t.frees_space()) {
                        if self.config().schedule(task).0 {
                            self.run_task(task, false, true);
                        }
                    }
                }
            }
            let wait = if scheduled {
                self.until_next_due().min(self.config().check_every)
            } else {
                Duration::from_secs(3600)
            };
            match orders.recv_timeout(wait) {
                Ok(order) => {
                    let answer = self.run_order(&order.request);
                    let _ = order.reply.send(answer);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn until_next_due(&self) -> Duration {
        let now = SystemTime::now();
        self.shared
            .janitor
            .status(self.config())
            .tasks
            .iter()
            .filter_map(|t| t.next_run)
            .map(|n| n.to_system_time().duration_since(now).unwrap_or_default())
            .min()
            .unwrap_or(Duration::from_secs(3600))
            // At least a beat, so a task whose run failed to record does not spin.
            .max(Duration::from_millis(100))
    }

    fn disk_low(&self) -> bool {
        data_volume_free(&self.shared).is_some_and(|(_, share)| share < self.config().low_free_disk)
    }

    fn restore_last_runs(&self) {
        let stored: Vec<(TaskName, Timestamp)> = TaskName::ALL
            .into_iter()
            .filter_map(|task| {
                let ms = self
                    .rt
                    .block_on(self.shared.store.setting(&last_run_key(task)))
                    .ok()??;
                Some((task, Timestamp::from_unix_millis(ms.parse().ok()?)))
            })
            .collect();
        // The board's lock is taken only now: handles read it from async workers, never across I/O.
        let mut inner = self.shared.janitor.lock();
        inner.started = Some(Timestamp::now());
        inner.last_run.extend(stored);
    }

    fn run_order(&self, request: &RunRequest) -> RunAnswer {
        let tasks: Vec<TaskName> = if request.tasks.is_empty() {
            TaskName::ALL
                .into_iter()
                .filter(|t| self.config().schedule(*t).0)
                .collect()
        } else {
            // In the one order a full run takes them, each once.
            TaskName::ALL
                .into_iter()
                .filter(|t| request.tasks.contains(t))
                .collect()
        };
        let reports = tasks
            .into_iter()
            .map(|task| TaskRun {
                task,
                report: self.run_task(task, request.dry_run, false),
            })
            .collect();
        RunAnswer { reports }
    }

    fn run_task(&self, task: TaskName, dry_run: bool, early: bool) -> TaskReport {
        self.shared.janitor.lock().running = Some(task);
        let started = Timestamp::now();
        let clock = Instant::now();
        let mut report = match self.task(task, dry_run) {
            Ok(report) => report,
            Err(message) => TaskReport {
                errors: 1,
                error_messages: vec![message],
                ..TaskReport::default()
            },
        };
        report.started = Some(started);
        report.seconds = clock.elapsed().as_secs_f64();
        report.dry_run = dry_run;
        self.shared.janitor.lock().running = None;
        if dry_run {
            return report;
        }
        self.shared.janitor.record(task, &report);
        let key = last_run_key(task);
        let value = started.unix_millis().to_string();
        if let Err(e) = self
            .rt
            .block_on(self.shared.store.set_setting(&key, Some(&value)))
        {
            tracing::warn!(task = %task, error = %e, "cannot record the janitor task's last run");
        }
        let did = report.files_removed + report.archived + report.dirs_removed > 0;
        if did || report.errors > 0 {
            tracing::info!(
                task = %task,
                early,
                files_removed = report.files_removed,
                archived = report.archived,
                bytes_freed = report.bytes_freed,
                errors = report.errors,
                first_error = report.error_messages.first().map(String::as_str).unwrap_or(""),
                "janitor task ran"
            );
            let event = EngineEvent::JanitorRan {
                task,
                early,
                files_removed: report.files_removed,
                archived: report.archived,
                bytes_freed: report.bytes_freed,
                errors: report.errors,
            };
            let _ = self
                .actor
                .blocking_send(crate::protocol::Command::EngineEvent(event));
        }
        report
    }

    fn task(&self, task: TaskName, dry_run: bool) -> Result<TaskReport, String> {
        let layout = Layout::of(&self.shared.config);
        let config = self.config();
        let now = SystemTime::now();
        match task {
            TaskName::Tmp => sweep(&layout.tmp, "tmp", now - config.tmp.older_than, dry_run),
            TaskName::Cache => sweep(
                &layout.cache,
                "cache",
                now - config.cache.older_than,
                dry_run,
            ),
            TaskName::Archive => sweep(
                &layout.archive_work,
                "archive/work",
                now - config.archive.older_than,
                dry_run,
            ),
            TaskName::Uploads => self.uploads(&layout, now - config.uploads.older_than, dry_run),
            TaskName::Work => self.work(&layout, now, dry_run),
            TaskName::Logs => self.logs(&layout, now - config.logs.older_than, dry_run),
            TaskName::History => self.history(&layout, now, dry_run),
            TaskName::Compact => self.compact(dry_run),
        }
    }

    /// Uploads older than the cutoff that no unfinished job names as an input (and partial uploads a
    /// crash left behind).
    fn uploads(
        &self,
        layout: &Layout,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<TaskReport, String> {
        let root = open_root(&layout.uploads)?;
        let unfinished = self
            .rt
            .block_on(self.shared.store.unfinished())
            .map_err(|e| format!("reading the unfinished jobs: {e}"))?;
        let referenced: HashSet<String> = unfinished
            .iter()
            .flat_map(|job| job.spec.inputs.values().map(|id| id.as_str().to_owned()))
            .collect();
        let mut report = Report::default();
        let mut skipped = 0;
        for (name, modified) in entries(&layout.uploads)? {
            if modified >= cutoff {
                continue;
            }
            if referenced.contains(name.to_string_lossy().as_ref()) {
                skipped += 1;
                continue;
            }
            report.merge(aura_janitor::remove_entry(
                &root,
                &name,
                dry_run,
                MAX_ACTIONS,
            ));
        }
        let mut out = to_task_report(report, "uploads");
        out.skipped += skipped;
        Ok(out)
    }

    /// Job directories of finished jobs, by outcome and age: succeeded ones archived (or deleted),
    /// the others deleted; a directory whose job is not finished is never touched, and one whose job
    /// the store no longer knows is aged by its own mtime.
    fn work(&self, layout: &Layout, now: SystemTime, dry_run: bool) -> Result<TaskReport, String> {
        let config = &self.config().work;
        let root = open_root(&layout.work)?;
        let archive = if config.archive {
            Some(open_root(&layout.archive_work)?)
        } else {
            None
        };
        let mut report = Report::default();
        let mut skipped = 0;
        for (name, modified) in entries(&layout.work)? {
            let Some(id) = job_id_of(&name) else {
                // Spares (`.aura-spare-*`) are the supervisor's; anything else is not the janitor's.
                continue;
            };
            let (job, succeeded) = match self.job(id)? {
                Some(job) => {
                    let succeeded = matches!(job.outcome(), Some(Outcome::Succeeded));
                    if job.outcome().is_none() {
                        skipped += 1;
                        continue;
                    }
                    (Some(job), succeeded)
                }
                None => (None, false),
            };
            let age_from = job
                .as_ref()
                .and_then(finished_at)
                .map_or(modified, |f| f.max(modified));
            let due = if succeeded {
                config.older_than
            } else {
                config.failed_older_than
            };
            if age_from > now - due {
                continue;
            }
            if let (true, Some(dest)) = (succeeded, &archive) {
                let dest_name = OsString::from(crate::retention::archived_name(id));
                let level = config.compression_level;
                match aura_janitor::archive_dir(&root, &name, dest, &dest_name, level, dry_run) {
                    Ok(r) => report.merge(r),
                    Err(e) => {
                        report.error(format!("archiving work/{id}: {e}"));
                    }
                }
            } else {
                report.merge(aura_janitor::remove_entry(
                    &root,
                    &name,
                    dry_run,
                    MAX_ACTIONS,
                ));
            }
        }
        let mut out = to_task_report(report, "work");
        out.skipped += skipped;
        Ok(out)
    }

    /// Every `*.log` segment of finished jobs that ended before the cutoff, compressed in place; the
    /// logs of jobs whose records the history task deleted, removed.
    fn logs(
        &self,
        layout: &Layout,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<TaskReport, String> {
        let root = open_root(&layout.logs)?;
        let level = self.config().work.compression_level;
        let mut report = Report::default();
        let mut skipped = 0;
        for (name, modified) in entries(&layout.logs)? {
            let Some(id) = job_id_of(&name) else { continue };
            let ended = match self.job(id)? {
                Some(job) if job.outcome().is_none() => {
                    skipped += 1;
                    continue;
                }
                Some(job) => finished_at(&job).map_or(modified, |f| f.max(modified)),
                // The history task exported and deleted its job: nothing can read these logs any
                // more (the API reads a job's logs through its record), so they go.
                None if modified < cutoff => {
                    report.merge(aura_janitor::remove_entry(
                        &root,
                        &name,
                        dry_run,
                        MAX_ACTIONS,
                    ));
                    continue;
                }
                None => continue,
            };
            if ended >= cutoff {
                continue;
            }
            let job_dir = match root.open_child(&name) {
                Ok(Some(dir)) => dir,
                Ok(None) => continue,
                Err(e) => {
                    report.error(format!("logs/{id}: {e}"));
                    continue;
                }
            };
            for (attempt, _) in entries(job_dir.path())? {
                let Ok(Some(attempt_dir)) = job_dir.open_child(&attempt) else {
                    continue;
                };
                for (file, _) in entries(attempt_dir.path())? {
                    if !file.to_string_lossy().ends_with(".log") {
                        continue;
                    }
                    match aura_janitor::compress_file(&attempt_dir, &file, level, dry_run) {
                        Ok(mut r) => {
                            for action in &mut r.actions {
                                action.path = format!(
                                    "{}/{}/{}",
                                    name.to_string_lossy(),
                                    attempt.to_string_lossy(),
                                    action.path
                                );
                            }
                            report.merge(r);
                        }
                        Err(e) => {
                            report.error(format!("compressing logs/{id}: {e}"));
                        }
                    }
                }
            }
        }
        let mut out = to_task_report(report, "logs");
        out.skipped += skipped;
        Ok(out)
    }

    /// Finished jobs past retention: exported with their events to `archive/history/jobs-<ms>.jsonl.zst`
    /// (one zstd frame per batch, made durable before the batch is deleted, so that a crash between the
    /// two loses nothing and at worst exports a batch twice), then deleted; old engine events deleted.
    fn history(
        &self,
        layout: &Layout,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<TaskReport, String> {
        const BATCH: u32 = 500;
        let config = &self.config().history;
        let before = Timestamp::from_system_time(now - config.older_than);
        let store = &self.shared.store;
        let mut report = TaskReport::default();
        if dry_run {
            let due = self
                .rt
                .block_on(store.retention_candidates(before, DRY_RUN_LOOK))
                .map_err(|e| format!("reading jobs past retention: {e}"))?;
            if let (Some(first), Some(last)) = (due.first(), due.last()) {
                report.archived = due.len() as u64;
                // One look, not the whole table: a dry run says when there are more.
                let more = if due.len() as u32 >= DRY_RUN_LOOK {
                    " or more"
                } else {
                    ""
                };
                report.actions.push(Action {
                    path: format!(
                        "jobs {}..={} ({}{more} jobs)",
                        first.job.id,
                        last.job.id,
                        due.len()
                    ),
                    kind: ActionKind::Export,
                    bytes: 0,
                });
            }
            return Ok(report);
        }
        let mut export: Option<(std::fs::File, String)> = None;
        loop {
            let batch = self
                .rt
                .block_on(store.retention_candidates(before, BATCH))
                .map_err(|e| format!("reading jobs past retention: {e}"))?;
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                break;
            };
            let range = format!(
                "jobs {}..={} ({} jobs)",
                first.job.id,
                last.job.id,
                batch.len()
            );
            if export.is_none() {
                let name = format!("jobs-{}.jsonl.zst", Timestamp::now().unix_millis());
                let file = create_export(&layout.archive_history, &name)?;
                export = Some((file, format!("archive/history/{name}")));
            }
            let Some((file, path)) = export.as_mut() else {
                break;
            };
            let frame = encode_batch(&batch).map_err(|e| format!("encoding {range}: {e}"))?;
            append_durably(file, &frame).map_err(|e| format!("writing {path}: {e}"))?;
            let ids: Vec<JobId> = batch.iter().map(|r| r.job.id).collect();
            let deleted = self
                .rt
                .block_on(store.purge(ids))
                .map_err(|e| format!("deleting {range}: {e}"))?;
            report.archived += deleted;
            if report.actions.len() < MAX_ACTIONS {
                report.actions.push(Action {
                    path: format!("{range} → {path}"),
                    kind: ActionKind::Export,
                    bytes: frame.len() as u64,
                });
            }
            if deleted == 0 {
                // Every candidate changed under us (retried, depended on): ask again next run.
                break;
            }
        }
        let events_before = Timestamp::from_system_time(now - config.engine_events_older_than);
        loop {
            let deleted = self
                .rt
                .block_on(store.purge_engine_events(events_before, 5_000))
                .map_err(|e| format!("deleting old engine events: {e}"))?;
            if deleted == 0 {
                break;
            }
            if report.actions.len() < MAX_ACTIONS {
                report.actions.push(Action {
                    path: format!("{deleted} engine events"),
                    kind: ActionKind::Remove,
                    bytes: 0,
                });
            }
        }
        Ok(report)
    }

    /// The database's free pages given back in bounded steps (converting a database made before
    /// incremental vacuum once, with a full VACUUM, only where the volume has room for a copy).
    fn compact(&self, dry_run: bool) -> Result<TaskReport, String> {
        let store = &self.shared.store;
        let step_pages = self.config().compact.step_pages;
        let mut report = TaskReport::default();
        let (free_pages, _, page_size) = self
            .rt
            .block_on(store.freelist())
            .map_err(|e| format!("reading the database's free pages: {e}"))?;
        if dry_run {
            report.bytes_freed = free_pages * page_size;
            report.actions.push(Action {
                path: "aura.db".into(),
                kind: ActionKind::Compact,
                bytes: report.bytes_freed,
            });
            return Ok(report);
        }
        let sizes = |what: &str| {
            self.rt
                .block_on(async {
                    store.checkpoint().await?;
                    store.file_sizes().await
                })
                .map(|(db, wal)| db + wal)
                .map_err(|e| format!("sizing the database {what}: {e}"))
        };
        let before = sizes("before compaction")?;
        let mut step = self
            .rt
            .block_on(store.compact_step(step_pages))
            .map_err(|e| format!("compacting the database: {e}"))?;
        if step.auto_vacuum != aura_store::AutoVacuum::Incremental && free_pages > 0 {
            let room = data_volume_free(&self.shared).map(|(bytes, _)| bytes);
            if room.is_some_and(|r| r < 2 * before) {
                return Err(format!(
                    "the database ({}) predates incremental compaction, and converting it needs twice its size free on the volume",
                    aura_model::ByteSize(before)
                ));
            }
            tracing::info!(
                "converting the job database to incremental compaction (one full VACUUM)"
            );
            self.rt
                .block_on(store.convert_to_incremental())
                .map_err(|e| format!("converting the database: {e}"))?;
            step.freelist_pages = 0;
        }
        while step.freelist_pages > 0 {
            // Between steps the writer serves the engine's state changes.
            std::thread::sleep(Duration::from_millis(2));
            if *self.shared.closing.borrow() {
                break;
            }
            step = self
                .rt
                .block_on(store.compact_step(step_pages))
                .map_err(|e| format!("compacting the database: {e}"))?;
        }
        report.bytes_freed = before.saturating_sub(sizes("after compaction")?);
        report.actions.push(Action {
            path: "aura.db".into(),
            kind: ActionKind::Compact,
            bytes: report.bytes_freed,
        });
        Ok(report)
    }

    fn job(&self, id: JobId) -> Result<Option<Job>, String> {
        self.rt
            .block_on(self.shared.store.get(id))
            .map_err(|e| format!("reading job {id}: {e}"))
    }
}

/// The data volume as the host sampler last saw it: (available bytes, available share).
pub(crate) fn data_volume_free(shared: &Shared) -> Option<(u64, f64)> {
    let host = shared.host_sampler.latest()?;
    let volume = host.data_volume.as_ref()?;
    let share = volume.available as f64 / volume.total.max(1) as f64;
    Some((volume.available, share))
}

fn finished_at(job: &Job) -> Option<SystemTime> {
    match &job.state {
        aura_model::JobState::Finished(f) => Some(f.finished_at.to_system_time()),
        _ => None,
    }
}

fn job_id_of(name: &OsStr) -> Option<JobId> {
    let text = name.to_str()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().map(JobId)
}

fn open_root(path: &Path) -> Result<Root, String> {
    Root::open(path).map_err(|e| e.to_string())
}

/// A root's entries with their mtimes, listed by name (the steps that act on them re-check through
/// directory fds; a name that is gone by then is skipped).
fn entries(dir: &Path) -> Result<Vec<(OsString, SystemTime)>, String> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("listing {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in listing.flatten() {
        // lstat: the entry itself, never what a symlink points at.
        if let Ok(meta) = std::fs::symlink_metadata(entry.path()) {
            out.push((
                entry.file_name(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
    out.sort();
    Ok(out)
}

fn sweep(
    path: &Path,
    label: &str,
    cutoff: SystemTime,
    dry_run: bool,
) -> Result<TaskReport, String> {
    let root = open_root(path)?;
    let report = aura_janitor::sweep(
        &root,
        &SweepOptions {
            cutoff,
            dry_run,
            remove_empty_dirs: true,
            max_listed: MAX_ACTIONS,
        },
    );
    Ok(to_task_report(report, label))
}

/// The file-system walk's report in the API's terms, paths made relative to the data dir.
fn to_task_report(report: Report, label: &str) -> TaskReport {
    let archived = report
        .actions
        .iter()
        .filter(|a| !matches!(a.kind, aura_janitor::ActionKind::Remove))
        .count() as u64;
    TaskReport {
        files_removed: report.files_removed,
        dirs_removed: report.dirs_removed,
        archived,
        bytes_freed: report.bytes_freed,
        skipped: report.skipped_locked + report.skipped_mounts + report.skipped_changed,
        errors: report.errors,
        error_messages: report.error_messages,
        actions: report
            .actions
            .into_iter()
            .map(|a| Action {
                path: format!("{label}/{}", a.path),
                kind: match a.kind {
                    aura_janitor::ActionKind::Remove => ActionKind::Remove,
                    aura_janitor::ActionKind::Archive => ActionKind::Archive,
                    aura_janitor::ActionKind::Compress => ActionKind::Compress,
                },
                bytes: a.bytes,
            })
            .collect(),
        ..TaskReport::default()
    }
}

/// A new export file, `0600` (job records name commands and labels), created fresh.
fn create_export(dir: &Path, name: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(name))
        .map_err(|e| format!("creating {}/{name}: {e}", dir.display()))
}

/// One batch of jobs as JSON lines (`{"job": …, "events": […]}`), compressed as one zstd frame.
fn encode_batch(batch: &[aura_store::RetainedJob]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3)?;
    for retained in batch {
        let line = serde_json::json!({ "job": retained.job, "events": retained.events });
        serde_json::to_writer(&mut encoder, &line)?;
        encoder.write_all(b"\n")?;
    }
    encoder.finish()
}

fn append_durably(file: &mut std::fs::File, frame: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    file.write_all(frame)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_numbers_name_jobs() {
        assert_eq!(job_id_of(OsStr::new("42")), Some(JobId(42)));
        for other in [
            ".aura-spare-3",
            "42.tar.zst",
            "",
            "-1",
            "+4",
            "99999999999999999999",
        ] {
            assert_eq!(job_id_of(OsStr::new(other)), None, "{other}");
        }
    }
}
