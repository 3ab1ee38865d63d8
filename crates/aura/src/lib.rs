//! The library half of the `aura` binary: its typed configuration and the runtime files through which
//! the CLI finds a local daemon — what the fuzz targets and tests reach without running the binary.

pub mod config;
pub mod config_doc;
pub mod runtime;
