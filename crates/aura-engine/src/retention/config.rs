//! The janitor's configuration (the `[janitor]` section: each task's schedule and age) and the data
//! dir's roots it acts below.

use aura_model::janitor::TaskName;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);

/// One file task's schedule and age.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Whether it runs on its schedule (a run asked for by name runs it regardless).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often it runs.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub every: Duration,
    /// Entries modified more recently are kept.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub older_than: Duration,
}

fn yes() -> bool {
    true
}

impl TaskConfig {
    fn new(every: Duration, older_than: Duration) -> TaskConfig {
        TaskConfig {
            enabled: true,
            every,
            older_than,
        }
    }
}

/// The `work` task: job directories by how their job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkTaskConfig {
    /// Whether it runs on its schedule. Default: on.
    pub enabled: bool,
    /// How often it runs. Default: daily.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub every: Duration,
    /// A succeeded job's directory is archived (or deleted) this long after the job ended and its last
    /// change. Default: 7 days.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub older_than: Duration,
    /// A failed, cancelled, timed-out or never-started job's directory is deleted this long after.
    /// Default: 3 days.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub failed_older_than: Duration,
    /// Archive succeeded jobs' directories to `archive/work/<id>.tar.zst` (still downloadable through
    /// the API) rather than delete them. Default: true.
    pub archive: bool,
    /// zstd level of archives and compressed logs (1–19). Default: 3.
    pub compression_level: i32,
}

impl Default for WorkTaskConfig {
    fn default() -> Self {
        WorkTaskConfig {
            enabled: true,
            every: DAY,
            older_than: 7 * DAY,
            failed_older_than: 3 * DAY,
            archive: true,
            compression_level: 3,
        }
    }
}

/// The `history` task: job rows and engine events past retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryTaskConfig {
    /// Whether it runs on its schedule. Default: on.
    pub enabled: bool,
    /// How often it runs. Default: weekly.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub every: Duration,
    /// Finished jobs older than this are exported to `archive/history/` and deleted with their events.
    /// Default: 30 days.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub older_than: Duration,
    /// Engine events (the action log) older than this are deleted. Default: 90 days.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub engine_events_older_than: Duration,
}

impl Default for HistoryTaskConfig {
    fn default() -> Self {
        HistoryTaskConfig {
            enabled: true,
            every: 7 * DAY,
            older_than: 30 * DAY,
            engine_events_older_than: 90 * DAY,
        }
    }
}

/// The `compact` task: the database given back its free pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactTaskConfig {
    /// Whether it runs on its schedule. Default: on.
    pub enabled: bool,
    /// How often it runs. Default: weekly.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub every: Duration,
    /// Pages given back per step: each step holds the database's writer, so state changes wait at most
    /// one step. Default: 256 (1 MiB at 4 KiB pages).
    pub step_pages: u32,
}

impl Default for CompactTaskConfig {
    fn default() -> Self {
        CompactTaskConfig {
            enabled: true,
            every: 7 * DAY,
            step_pages: 256,
        }
    }
}

/// The janitor's settings, with the defaults of `aura serve`: the `[janitor]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JanitorConfig {
    /// Whether tasks run on their schedules and on low disk (runs asked for over the API always run).
    /// Default: on.
    pub enabled: bool,
    /// Below this share of the data volume available, the space-freeing tasks run early (at most every
    /// `early_every`) and `/readyz` says the disk is nearly full. Default: 0.10.
    pub low_free_disk: f64,
    /// How often the free space is looked at. Default: 30 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub check_every: Duration,
    /// The least time between two early runs. Default: 10 min.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub early_every: Duration,
    /// A task that never ran runs this long after the daemon starts. Default: 5 min.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub first_run_after: Duration,
    /// `tmp/`: hourly, files older than 24 h.
    pub tmp: TaskConfig,
    /// `uploads/`: hourly, uploads older than 48 h that no unfinished job names.
    pub uploads: TaskConfig,
    /// `cache/`: hourly, entries older than 24 h.
    pub cache: TaskConfig,
    /// `work/<id>`: daily; see its fields.
    pub work: WorkTaskConfig,
    /// `logs/<id>`: daily, finished jobs' logs compressed after 7 days.
    pub logs: TaskConfig,
    /// `archive/work/`: daily, archives deleted after 30 days.
    pub archive: TaskConfig,
    /// The job history: weekly; see its fields.
    pub history: HistoryTaskConfig,
    /// The database: weekly; see its fields.
    pub compact: CompactTaskConfig,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        JanitorConfig {
            enabled: true,
            low_free_disk: 0.10,
            check_every: Duration::from_secs(30),
            early_every: Duration::from_secs(600),
            first_run_after: Duration::from_secs(300),
            tmp: TaskConfig::new(HOUR, DAY),
            uploads: TaskConfig::new(HOUR, 2 * DAY),
            cache: TaskConfig::new(HOUR, DAY),
            work: WorkTaskConfig::default(),
            logs: TaskConfig::new(DAY, 7 * DAY),
            archive: TaskConfig::new(DAY, 30 * DAY),
            history: HistoryTaskConfig::default(),
            compact: CompactTaskConfig::default(),
        }
    }
}

impl JanitorConfig {
    /// Whether a task runs on its schedule, how often, and its age threshold.
    pub fn schedule(&self, task: TaskName) -> (bool, Duration, Option<Duration>) {
        let plain = |t: &TaskConfig| (t.enabled, t.every, Some(t.older_than));
        match task {
            TaskName::Tmp => plain(&self.tmp),
            TaskName::Uploads => plain(&self.uploads),
            TaskName::Cache => plain(&self.cache),
            TaskName::Logs => plain(&self.logs),
            TaskName::Archive => plain(&self.archive),
            TaskName::Work => (
                self.work.enabled,
                self.work.every,
                Some(self.work.older_than),
            ),
            TaskName::History => (
                self.history.enabled,
                self.history.every,
                Some(self.history.older_than),
            ),
            TaskName::Compact => (self.compact.enabled, self.compact.every, None),
        }
    }

    /// Checks what serde cannot: shares in range, periods and ages above zero.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.low_free_disk) {
            return Err("janitor.low_free_disk must be in [0, 1)".into());
        }
        if self.check_every.is_zero() || self.early_every.is_zero() {
            return Err(
                "janitor.check_every and janitor.early_every must be greater than zero".into(),
            );
        }
        for task in TaskName::ALL {
            let (_, every, older) = self.schedule(task);
            if every < Duration::from_secs(1) {
                return Err(format!("janitor.{task}.every must be at least 1s"));
            }
            if older.is_some_and(|o| o.is_zero()) {
                return Err(format!(
                    "janitor.{task}.older_than must be greater than zero"
                ));
            }
        }
        if self.work.failed_older_than.is_zero() || self.history.engine_events_older_than.is_zero()
        {
            return Err("janitor.work.failed_older_than and janitor.history.engine_events_older_than must be greater than zero".into());
        }
        if !(1..=19).contains(&self.work.compression_level) {
            return Err("janitor.work.compression_level must be in 1..=19".into());
        }
        if self.compact.step_pages == 0 {
            return Err("janitor.compact.step_pages must be at least 1".into());
        }
        Ok(())
    }
}

/// The folder of `archive/` that holds archived job directories.
pub(crate) const ARCHIVED_WORK: &str = "work";

/// The file a job's directory is archived to, in `archive/work/`.
pub(crate) fn archived_name(id: aura_model::JobId) -> String {
    format!("{id}.tar.zst")
}

/// The data dir's roots the janitor acts below.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub tmp: PathBuf,
    pub uploads: PathBuf,
    pub cache: PathBuf,
    pub work: PathBuf,
    pub logs: PathBuf,
    pub archive_work: PathBuf,
    pub archive_history: PathBuf,
}

impl Layout {
    pub(crate) fn of(config: &crate::EngineConfig) -> Layout {
        let archive = config.archive_root();
        Layout {
            tmp: config.data_dir.join("tmp"),
            uploads: config.upload_root(),
            cache: config.data_dir.join("cache"),
            work: config.work_root(),
            logs: config.log_root(),
            archive_work: archive.join(ARCHIVED_WORK),
            archive_history: archive.join("history"),
        }
    }

    /// The roots the engine creates at start (work and logs have their own modes, set by `start`).
    pub(crate) fn plain_roots(&self) -> [&Path; 5] {
        [
            &self.tmp,
            &self.uploads,
            &self.cache,
            &self.archive_work,
            &self.archive_history,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_documents_schedule_and_bad_settings_are_refused() {
        let config = JanitorConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.schedule(TaskName::Tmp), (true, HOUR, Some(DAY)));
        assert_eq!(
            config.schedule(TaskName::Uploads),
            (true, HOUR, Some(2 * DAY))
        );
        assert_eq!(config.schedule(TaskName::Work), (true, DAY, Some(7 * DAY)));
        assert_eq!(config.work.failed_older_than, 3 * DAY);
        assert_eq!(
            config.schedule(TaskName::History),
            (true, 7 * DAY, Some(30 * DAY))
        );
        assert_eq!(config.history.engine_events_older_than, 90 * DAY);
        assert_eq!(config.schedule(TaskName::Compact), (true, 7 * DAY, None));
        let bad = [
            JanitorConfig {
                low_free_disk: 1.0,
                ..JanitorConfig::default()
            },
            JanitorConfig {
                check_every: Duration::ZERO,
                ..JanitorConfig::default()
            },
            JanitorConfig {
                tmp: TaskConfig::new(Duration::from_millis(10), DAY),
                ..JanitorConfig::default()
            },
            JanitorConfig {
                cache: TaskConfig::new(HOUR, Duration::ZERO),
                ..JanitorConfig::default()
            },
            JanitorConfig {
                work: WorkTaskConfig {
                    compression_level: 0,
                    ..WorkTaskConfig::default()
                },
                ..JanitorConfig::default()
            },
            JanitorConfig {
                compact: CompactTaskConfig {
                    step_pages: 0,
                    ..CompactTaskConfig::default()
                },
                ..JanitorConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
