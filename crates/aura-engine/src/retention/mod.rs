//! The janitor's retention settings (`[janitor]`: each task's schedule and age, the data dir's roots)
//! and its board (what each task did, when it runs next): shared by the janitor thread that writes the
//! board and the handles that read it, apart from the thread so that neither imports the other.

mod board;
mod config;

pub(crate) use board::Board;
pub(crate) use config::{archived_name, Layout, ARCHIVED_WORK};
pub use config::{CompactTaskConfig, HistoryTaskConfig, JanitorConfig, TaskConfig, WorkTaskConfig};
