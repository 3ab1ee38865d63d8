//! What Aura knows of media tools, as pure functions over what they print: progress as FFmpeg reports it
//! (`-progress` blocks and its stderr status line) and the generic `aura-progress` line other tools write.

mod progress;

pub use progress::{generic_line, status_line, ProgressBlocks, Report};
