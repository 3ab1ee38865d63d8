//! What the janitor has done and when each task runs next: the board its thread writes and handles read.

use super::config::JanitorConfig;
use aura_model::janitor::{JanitorStatus, TaskName, TaskReport, TaskStatus, TaskTotals};
use aura_model::Timestamp;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// What the janitor has done, read by handles (`GET /api/janitor`, `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct Board {
    // A std Mutex: held to copy or update a few fields, never across I/O.
    inner: Mutex<BoardInner>,
}

#[derive(Debug, Default)]
pub(crate) struct BoardInner {
    pub(crate) last_run: BTreeMap<TaskName, Timestamp>,
    last: BTreeMap<TaskName, TaskReport>,
    totals: BTreeMap<TaskName, TaskTotals>,
    pub(crate) running: Option<TaskName>,
    /// When the thread started (the first run of a task that never ran counts from here).
    pub(crate) started: Option<Timestamp>,
}

impl Board {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BoardInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every task's standing under `config`.
    pub(crate) fn status(&self, config: &JanitorConfig) -> JanitorStatus {
        let inner = self.lock();
        let tasks = TaskName::ALL
            .into_iter()
            .map(|task| {
                let (enabled, every, older) = config.schedule(task);
                let last_run = inner.last_run.get(&task).copied();
                let next_run = (enabled && config.enabled)
                    .then(|| next_run(last_run, inner.started, every, config.first_run_after))
                    .flatten();
                TaskStatus {
                    task,
                    enabled,
                    every_seconds: every.as_secs(),
                    older_than_seconds: older.map(|o| o.as_secs()),
                    last_run,
                    next_run,
                    last: inner.last.get(&task).cloned(),
                    totals: inner.totals.get(&task).copied().unwrap_or_default(),
                }
            })
            .collect();
        JanitorStatus {
            tasks,
            running: inner.running,
            low_free_disk: config.low_free_disk,
        }
    }

    pub(crate) fn record(&self, task: TaskName, report: &TaskReport) {
        let mut inner = self.lock();
        if let Some(started) = report.started {
            inner.last_run.insert(task, started);
        }
        inner.last.insert(task, report.clone());
        let totals = inner.totals.entry(task).or_default();
        totals.runs += 1;
        totals.files_removed += report.files_removed;
        totals.archived += report.archived;
        totals.bytes_freed += report.bytes_freed;
        totals.errors += report.errors;
    }
}

pub(crate) fn next_run(
    last: Option<Timestamp>,
    started: Option<Timestamp>,
    every: Duration,
    first: Duration,
) -> Option<Timestamp> {
    let at = match last {
        Some(last) => last.to_system_time() + every,
        None => started?.to_system_time() + first,
    };
    Some(Timestamp::from_system_time(at))
}

#[cfg(test)]
mod tests {
    use super::super::config::HOUR;
    use super::*;

    #[test]
    fn a_task_runs_every_period_after_its_last_run_or_first_after_start() {
        let start = Timestamp::from_unix_millis(1_000_000);
        let last = Timestamp::from_unix_millis(5_000_000);
        assert_eq!(
            next_run(Some(last), Some(start), HOUR, Duration::from_secs(300)),
            Some(Timestamp::from_unix_millis(5_000_000 + 3_600_000))
        );
        assert_eq!(
            next_run(None, Some(start), HOUR, Duration::from_secs(300)),
            Some(Timestamp::from_unix_millis(1_300_000))
        );
        assert_eq!(next_run(None, None, HOUR, Duration::from_secs(300)), None);
        let board = Board::default();
        let mut config = JanitorConfig::default();
        config.cache.enabled = false;
        board.lock().started = Some(start);
        board.record(
            TaskName::Tmp,
            &TaskReport {
                started: Some(last),
                files_removed: 3,
                bytes_freed: 10,
                ..TaskReport::default()
            },
        );
        let status = board.status(&config);
        let tmp = &status.tasks[0];
        assert_eq!(
            (
                tmp.task,
                tmp.last_run,
                tmp.totals.files_removed,
                tmp.totals.runs
            ),
            (TaskName::Tmp, Some(last), 3, 1)
        );
        let cache = status
            .tasks
            .iter()
            .find(|t| t.task == TaskName::Cache)
            .unwrap();
        assert_eq!((cache.enabled, cache.next_run), (false, None));
    }
}
