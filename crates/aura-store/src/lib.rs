//! Aura's persistent job store: the only crate that knows SQL.
//!
//! Jobs and their append-only event logs live in one SQLite database (WAL mode). All writes go through a
//! single writer thread that group-commits whatever is queued into one transaction; reads use a small pool
//! of separate connections on tokio's blocking threads, so they never wait for a commit. Nothing here
//! blocks an async worker thread.

mod codec;
mod error;
mod maintenance;
mod reader;
mod reserve;
mod schema;
mod store;
mod writer;

pub use error::StoreError;
pub use maintenance::{AutoVacuum, CompactStep, RetainedJob};
pub use store::{Commit, ListFilter, Pending, Store, StoreOptions, StoreStats};
