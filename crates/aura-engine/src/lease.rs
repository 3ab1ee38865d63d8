//! Leases: admission reservations held by work outside Aura's processes (a provider call, an in-process
//! render). The actor owns them, so that a lease's expiry frees capacity and starts queued jobs in the same
//! place as a job's end. A holder that stops renewing loses its lease at its deadline; nothing leaks even if
//! every client crashes. Leases live in memory: after a daemon restart a holder's renew finds none and it
//! acquires again.

use aura_admission::Reservation;
use aura_model::{LeaseSpec, ResourceRequest, Timestamp};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A lease as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseInfo {
    pub id: u64,
    pub holder: Option<String>,
    pub resources: ResourceRequest,
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub ttl: Duration,
    pub expires_at: Timestamp,
    /// GPU devices granted.
    pub gpus: Vec<u32>,
}

struct Lease {
    info: LeaseInfo,
    deadline: Instant,
    /// Released when the lease is dropped: on release, on expiry, at shutdown.
    _reservation: Reservation,
}

/// The actor's table of live leases.
pub(crate) struct Leases {
    leases: HashMap<u64, Lease>,
    next_id: u64,
}

fn expiry(ttl: Duration) -> (Instant, Timestamp) {
    let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    (
        Instant::now() + ttl,
        Timestamp::from_unix_millis(Timestamp::now().unix_millis().saturating_add(millis)),
    )
}

impl Leases {
    pub fn new() -> Leases {
        // Ids are not reused across restarts, so a holder from before a restart never renews someone
        // else's lease.
        let seed = Timestamp::now().unix_millis().unsigned_abs() << 16;
        Leases {
            leases: HashMap::new(),
            next_id: seed,
        }
    }

    pub fn insert(&mut self, spec: LeaseSpec, reservation: Reservation) -> LeaseInfo {
        self.next_id += 1;
        let (deadline, expires_at) = expiry(spec.ttl);
        let info = LeaseInfo {
            id: self.next_id,
            holder: spec.holder,
            resources: spec.resources,
            ttl: spec.ttl,
            expires_at,
            gpus: reservation.gpus().to_vec(),
        };
        self.leases.insert(
            info.id,
            Lease {
                info: info.clone(),
                deadline,
                _reservation: reservation,
            },
        );
        info
    }

    pub fn renew(&mut self, id: u64) -> Option<LeaseInfo> {
        let lease = self.leases.get_mut(&id)?;
        let (deadline, expires_at) = expiry(lease.info.ttl);
        lease.deadline = deadline;
        lease.info.expires_at = expires_at;
        Some(lease.info.clone())
    }

    pub fn release(&mut self, id: u64) -> bool {
        self.leases.remove(&id).is_some()
    }

    /// Drops every lease past its deadline; returns the ids dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.leases.remove(id);
        }
        expired
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }

    pub fn list(&self) -> Vec<LeaseInfo> {
        let mut all: Vec<LeaseInfo> = self.leases.values().map(|l| l.info.clone()).collect();
        all.sort_by_key(|l| l.id);
        all
    }
}
