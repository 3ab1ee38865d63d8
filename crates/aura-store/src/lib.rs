//! Aura's persistent job store: the only crate that knows SQL.
//!
//! Two backends behind one `Store` API: SQLite for one node (`Store::open`), PostgreSQL for a fleet of
//! nodes sharing one database (`Store::open_postgres`, with its `Fleet`; see `pg`).
//!
//! On SQLite, jobs and their append-only event logs live in one database file (WAL mode). All writes go through a
//! single writer thread that group-commits whatever is queued into one transaction; reads use a small pool
//! of separate connections on tokio's blocking threads, so they never wait for a commit. Nothing here
//! blocks an async worker thread.

mod codec;
mod error;
mod fleet;
mod maintenance;
mod pg;
mod reader;
mod reserve;
mod schema;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod writer;

pub use error::StoreError;
pub use fleet::{ClaimFilter, Fleet, FleetLimit, FleetToken, PgConfig};
pub use maintenance::{AutoVacuum, CompactStep, RetainedJob};
pub use store::{Commit, ListFilter, Pending, Store, StoreOptions, StoreStats};
