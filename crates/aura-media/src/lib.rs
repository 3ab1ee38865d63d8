//! What Aura knows of media tools, as pure functions over what they print and take: progress as FFmpeg
//! reports it (`-progress` blocks and its stderr status line), the generic `aura-progress` line other tools
//! write, read from a byte stream (`ProgressReader`), and FFmpeg's command line (the progress channel Aura
//! adds, the output duration it promises).

mod ffmpeg;
mod lines;
mod progress;

pub use ffmpeg::{is_ffmpeg, parse_time, plan, probe_command, probe_duration, Channel, Plan};
pub use lines::{Format, ProgressReader, MAX_LINE};
pub use progress::{generic_line, status_line, ProgressBlocks, Report};
