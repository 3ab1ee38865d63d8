//! The ledger: capacity, what is reserved, named limits, and the `Reservation` RAII guard. One mutex,
//! held for arithmetic only (never across I/O or an await), so reserve+release costs well under a
//! microsecond.

use crate::resources::{Capacity, Request, Resource, Scalar};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A named limit (Slurm's licenses, OpenCue's limits): how many jobs may hold it at once and how many may
/// start per minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitConfig {
    /// Most holders (running jobs and leases) at once; `None`: no cap.
    pub max_concurrent: Option<u32>,
    /// Most starts in any 60 s window; `None`: no cap.
    pub per_minute: Option<u32>,
}

/// What running jobs really use, fed by the engine's sampler: memory is charged as max(reservation,
/// usage) per job, and a request must also fit what the host actually has free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveMemory {
    /// Σ max(0, usage − reservation) over running jobs: what they use beyond what they reserved.
    pub overrun_bytes: u64,
    /// Σ min(usage, reservation) over running jobs: the part of the reservations already in use (and
    /// so already missing from `available_bytes`).
    pub within_bytes: u64,
    /// The host's available memory minus the headroom kept for the rest of the machine; `None` where
    /// it is not known (then only reservations count).
    pub available_bytes: Option<u64>,
}

impl LiveMemory {
    /// The memory a new reservation may take now: the capacity left after charging every running job
    /// max(reservation, usage), and no more than the host actually has free once every reservation not
    /// yet in use is set aside. `total`/`reserved`: the ledger's memory capacity and reservations.
    pub fn free(&self, total: u64, reserved: u64) -> u64 {
        let charged = total
            .saturating_sub(reserved)
            .saturating_sub(self.overrun_bytes);
        match self.available_bytes {
            Some(available) => {
                let promised = reserved.saturating_sub(self.within_bytes);
                charged.min(available.saturating_sub(promised))
            }
            None => charged,
        }
    }
}

/// Why a request cannot be granted now (or ever, for `check_capacity`). Displayed to users verbatim.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shortfall {
    /// Too little of one resource is free now (for GPUs: too few devices with room).
    #[error("waiting for {}: needs {}, {} free after reservations", resource.name(), resource.format(*needed), resource.format(*available))]
    Resource {
        /// The resource that is short.
        resource: Resource,
        /// What the request needs, in the resource's unit (bytes, CPU millicores, devices).
        needed: u64,
        /// What is free now, in the same unit.
        available: u64,
    },
    /// Memory, where running jobs' real use decides: both figures, so a user sees which one holds it.
    #[error("waiting for memory: needs {}, {} free after reservations and {} actually free; running jobs use {} over their reservations", Resource::Memory.format(*needed), Resource::Memory.format(*unreserved), Resource::Memory.format(*actually_free), Resource::Memory.format(*overrun))]
    Memory {
        /// The request's memory, in bytes.
        needed: u64,
        /// Capacity left after reservations and running jobs' use beyond them, in bytes.
        unreserved: u64,
        /// What the host has free once reservations not yet in use are set aside, in bytes.
        actually_free: u64,
        /// What running jobs use beyond their reservations, in bytes.
        overrun: u64,
    },
    /// A named limit has all its slots held (or has none: a cap of 0).
    #[error("waiting for {name}: all {limit} slots in use")]
    // Shared names: a pass over a long queue blocked on one limit builds a shortfall per job.
    Limit {
        /// The limit's name.
        name: Arc<str>,
        /// Its `max_concurrent` (0 for a limit that admits nothing).
        limit: u32,
    },
    /// A named limit's starts for the last minute are used up.
    #[error("waiting for {name}: at most {per_minute} starts per minute, next in {:.1}s", retry_in.as_secs_f64())]
    Rate {
        /// The limit's name.
        name: Arc<str>,
        /// Its `per_minute`.
        per_minute: u32,
        /// How long until the oldest start leaves the 60 s window and frees a start.
        retry_in: Duration,
    },
    /// The request names a limit that is not configured; holds the name.
    #[error("unknown named limit {0:?}")]
    UnknownLimit(String),
    /// The request asks for more than the machine has in all: it can never be granted.
    #[error("{} requested ({}) exceeds this machine's capacity ({})", resource.name(), resource.format(*needed), resource.format(*capacity))]
    NeverFits {
        /// The resource that is short.
        resource: Resource,
        /// What the request needs, in the resource's unit (bytes, CPU millicores, devices).
        needed: u64,
        /// What the machine has in all, in the same unit (for GPUs: devices with enough VRAM and
        /// encoder sessions).
        capacity: u64,
    },
}

struct Limit {
    name: Arc<str>,
    config: LimitConfig,
    in_use: u32,
    /// Start times within the last minute, oldest first (bounded by `per_minute`).
    starts: VecDeque<Instant>,
}

#[derive(Clone, Copy, Default)]
struct GpuUse {
    vram: u64,
    sessions: u32,
}

pub(crate) struct Ledger {
    pub capacity: Capacity,
    pub total: Scalar,
    pub used: Scalar,
    gpus: Vec<GpuUse>,
    limits: HashMap<String, Limit>,
    /// Starvation guard: resources released while a job was blocked at the head of the queue are held
    /// for it (by its key), so that backfilled small jobs cannot keep it waiting forever.
    pub claim: Option<Claim>,
    pub active: usize,
    /// Running jobs' real memory use (see `LiveMemory`); all zero until the engine reports it.
    pub live: LiveMemory,
}

/// What is held for the head of the queue: the host-wide quantities released since it became head, and
/// the GPU devices (positions) that had room freed on them meanwhile.
#[derive(Clone, Debug, Default)]
pub(crate) struct Claim {
    pub key: i64,
    pub scalar: Scalar,
    pub devices: Vec<u32>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Ledger {
    pub fn free(&self) -> Scalar {
        let mut free = self.total.saturating_sub(&self.used);
        free.memory = self.live.free(self.total.memory, self.used.memory);
        free
    }

    /// Whether `request` fits in `free` (host-wide quantities), the GPUs but `held` (devices claimed for
    /// the head of the queue) and the named limits now.
    pub fn check(
        &mut self,
        request: &Request,
        free: &Scalar,
        held: &[u32],
        now: Instant,
    ) -> Result<Vec<u32>, Shortfall> {
        if let Some((resource, needed, available)) = request.scalar().fits_in(free) {
            let live = self.live;
            if resource == Resource::Memory && live != LiveMemory::default() {
                let unreserved = self
                    .total
                    .memory
                    .saturating_sub(self.used.memory)
                    .saturating_sub(live.overrun_bytes);
                let promised = self.used.memory.saturating_sub(live.within_bytes);
                return Err(Shortfall::Memory {
                    needed,
                    unreserved,
                    actually_free: live
                        .available_bytes
                        .map_or(unreserved, |a| a.saturating_sub(promised)),
                    overrun: live.overrun_bytes,
                });
            }
            return Err(Shortfall::Resource {
                resource,
                needed,
                available,
            });
        }
        for name in &request.providers {
            let limit = self
                .limits
                .get_mut(name)
                .ok_or_else(|| Shortfall::UnknownLimit(name.clone()))?;
            if let Some(max) = limit.config.max_concurrent {
                if limit.in_use >= max {
                    return Err(Shortfall::Limit {
                        name: limit.name.clone(),
                        limit: max,
                    });
                }
            }
            if let Some(per_minute) = limit.config.per_minute {
                while limit
                    .starts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= MINUTE)
                {
                    limit.starts.pop_front();
                }
                if limit.starts.len() as u32 >= per_minute {
                    let oldest = limit.starts.front().copied().unwrap_or(now);
                    let retry_in = MINUTE.saturating_sub(now.duration_since(oldest));
                    return Err(Shortfall::Rate {
                        name: limit.name.clone(),
                        per_minute,
                        retry_in,
                    });
                }
            }
        }
        self.pick_gpus(request, held)
    }

    /// First fit over the devices but `held`: the `request.gpus` devices with room for its VRAM and
    /// encoder sessions.
    fn pick_gpus(&self, request: &Request, held: &[u32]) -> Result<Vec<u32>, Shortfall> {
        if request.gpus == 0 {
            return Ok(Vec::new());
        }
        let mut picked = Vec::with_capacity(request.gpus as usize);
        for (i, (device, used)) in self.capacity.gpus.iter().zip(&self.gpus).enumerate() {
            if held.contains(&(i as u32)) {
                continue;
            }
            let vram_ok = device.vram_bytes.saturating_sub(used.vram) >= request.vram_bytes_per_gpu;
            let sessions_ok = device.encoder_sessions.saturating_sub(used.sessions)
                >= request.encoder_sessions_per_gpu;
            if vram_ok && sessions_ok {
                picked.push(i as u32);
                if picked.len() == request.gpus as usize {
                    return Ok(picked);
                }
            }
        }
        Err(Shortfall::Resource {
            resource: Resource::Gpu,
            needed: u64::from(request.gpus),
            available: picked.len() as u64,
        })
    }

    pub fn grant(&mut self, request: &Request, gpus: Vec<u32>, now: Instant) -> Grant {
        let scalar = request.scalar();
        self.used.add(&scalar);
        for &g in &gpus {
            if let Some(u) = self.gpus.get_mut(g as usize) {
                u.vram += request.vram_bytes_per_gpu;
                u.sessions += request.encoder_sessions_per_gpu;
            }
        }
        for name in &request.providers {
            if let Some(limit) = self.limits.get_mut(name) {
                limit.in_use += 1;
                if limit.config.per_minute.is_some() {
                    limit.starts.push_back(now);
                }
            }
        }
        self.active += 1;
        Grant {
            scalar,
            gpus: gpus
                .iter()
                .filter_map(|&g| self.capacity.gpus.get(g as usize).map(|d| d.index))
                .collect(),
            positions: gpus,
            vram_per_gpu: request.vram_bytes_per_gpu,
            sessions_per_gpu: request.encoder_sessions_per_gpu,
            providers: request.providers.iter().cloned().collect(),
        }
    }

    fn release(&mut self, grant: &Grant) {
        self.used.sub(&grant.scalar);
        for &g in &grant.positions {
            if let Some(u) = self.gpus.get_mut(g as usize) {
                u.vram = u.vram.saturating_sub(grant.vram_per_gpu);
                u.sessions = u.sessions.saturating_sub(grant.sessions_per_gpu);
            }
        }
        for name in &grant.providers {
            if let Some(limit) = self.limits.get_mut(name) {
                limit.in_use = limit.in_use.saturating_sub(1);
            }
        }
        self.active = self.active.saturating_sub(1);
        if let Some(claim) = &mut self.claim {
            claim.scalar.add(&grant.scalar);
            claim.scalar = claim.scalar.min(&self.total);
            for &g in &grant.positions {
                if !claim.devices.contains(&g) {
                    claim.devices.push(g);
                }
            }
        }
    }
}

/// What a reservation holds, to give back exactly.
pub(crate) struct Grant {
    scalar: Scalar,
    /// Positions in `Capacity::gpus` (the ledger's bookkeeping).
    positions: Vec<u32>,
    /// The same devices' own indexes (NVML's, what `CUDA_VISIBLE_DEVICES` names): positions differ from
    /// them when a device was left out of the capacity.
    gpus: Vec<u32>,
    vram_per_gpu: u64,
    sessions_per_gpu: u32,
    providers: Vec<String>,
}

/// The admission controller's shared ledger. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    pub(crate) ledger: Arc<Mutex<Ledger>>,
}

/// Resources held by one job (or lease) from admission until it is dropped. Dropping it is the only way to
/// release, so no code path can forget.
#[must_use = "dropping a reservation releases it at once"]
pub struct Reservation {
    ledger: Arc<Mutex<Ledger>>,
    grant: Grant,
    /// CPU given back while the job is paused (not in `grant`, so a drop releases only what is held).
    suspended_cpu: u64,
}

impl Reservation {
    /// The GPU devices granted, by their own indexes (`GpuDevice::index`), e.g. for `CUDA_VISIBLE_DEVICES`.
    pub fn gpus(&self) -> &[u32] {
        &self.grant.gpus
    }

    /// Gives the CPU of this reservation back while keeping the rest (a paused job keeps its memory,
    /// GPUs and named limits: it will need them again, and they are still in use). Idempotent.
    pub fn suspend_cpu(&mut self) {
        let mut ledger = lock(&self.ledger);
        let cpu = std::mem::take(&mut self.grant.scalar.cpu);
        ledger.used.cpu = ledger.used.cpu.saturating_sub(cpu);
        self.suspended_cpu += cpu;
    }

    /// Takes the CPU given back by [`suspend_cpu`](Self::suspend_cpu) again, even where others took it
    /// meanwhile: the job runs again now, and admission waits until enough CPU is free once more.
    /// Idempotent.
    pub fn restore_cpu(&mut self) {
        let mut ledger = lock(&self.ledger);
        let cpu = std::mem::take(&mut self.suspended_cpu);
        ledger.used.cpu += cpu;
        self.grant.scalar.cpu += cpu;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.ledger).release(&self.grant);
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("gpus", &self.grant.gpus)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    // The ledger holds plain numbers; a panic elsewhere cannot leave it half-updated in a way that matters
    // more than stopping admission would.
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reserved and free amounts, for status and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    /// What jobs may reserve in all.
    pub capacity: Capacity,
    /// Memory reserved now, in bytes.
    pub reserved_memory_bytes: u64,
    /// CPU reserved now, in thousandths of a core.
    pub reserved_cpu_millis: u64,
    /// Disk space reserved now, in bytes.
    pub reserved_disk_bytes: u64,
    /// Reservations held now (admitted jobs and leases).
    pub active: usize,
    /// Each named limit: its slots held now and its configuration.
    pub limits: BTreeMap<String, (u32, LimitConfig)>,
}

impl Admission {
    /// A ledger with `capacity` and the named `limits`, nothing reserved.
    pub fn new(capacity: Capacity, limits: BTreeMap<String, LimitConfig>) -> Admission {
        let total = Scalar {
            memory: capacity.memory_bytes,
            cpu: capacity.cpu_millis,
            disk: capacity.disk_bytes,
        };
        let gpus = vec![GpuUse::default(); capacity.gpus.len()];
        let limits = limits
            .into_iter()
            .map(|(name, config)| {
                (
                    name.clone(),
                    Limit {
                        name: Arc::from(name),
                        config,
                        in_use: 0,
                        starts: VecDeque::new(),
                    },
                )
            })
            .collect();
        Admission {
            ledger: Arc::new(Mutex::new(Ledger {
                capacity,
                total,
                used: Scalar::default(),
                gpus,
                limits,
                claim: None,
                active: 0,
                live: LiveMemory::default(),
            })),
        }
    }

    /// Refuses a request that can never fit this machine, naming the resource and both numbers.
    pub fn check_capacity(&self, request: &Request) -> Result<(), Shortfall> {
        let ledger = lock(&self.ledger);
        let never = |resource, needed, capacity| {
            Err(Shortfall::NeverFits {
                resource,
                needed,
                capacity,
            })
        };
        if let Some((resource, needed, capacity)) = request.scalar().fits_in(&ledger.total) {
            return never(resource, needed, capacity);
        }
        if request.gpus > 0 {
            let devices = &ledger.capacity.gpus;
            let suitable = devices
                .iter()
                .filter(|d| {
                    d.vram_bytes >= request.vram_bytes_per_gpu
                        && d.encoder_sessions >= request.encoder_sessions_per_gpu
                })
                .count() as u64;
            if suitable < u64::from(request.gpus) {
                return never(Resource::Gpu, u64::from(request.gpus), suitable);
            }
        }
        for name in &request.providers {
            match ledger.limits.get(name) {
                None => return Err(Shortfall::UnknownLimit(name.clone())),
                Some(l) if l.config.max_concurrent == Some(0) || l.config.per_minute == Some(0) => {
                    return Err(Shortfall::Limit {
                        name: l.name.clone(),
                        limit: 0,
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Reserves `request` now if it fits, ignoring the queue (for leases and tests; jobs go through
    /// `Scheduler::pass`).
    pub fn try_reserve(&self, request: &Request, now: Instant) -> Result<Reservation, Shortfall> {
        let mut ledger = lock(&self.ledger);
        let free = ledger.free();
        let gpus = ledger.check(request, &free, &[], now)?;
        let grant = ledger.grant(request, gpus, now);
        Ok(Reservation {
            ledger: self.ledger.clone(),
            grant,
            suspended_cpu: 0,
        })
    }

    pub(crate) fn reservation(&self, grant: Grant) -> Reservation {
        Reservation {
            ledger: self.ledger.clone(),
            grant,
            suspended_cpu: 0,
        }
    }

    /// When a per-minute limit that is full now frees a start: the time to re-run the scheduling pass.
    pub fn next_rate_window(&self, now: Instant) -> Option<Duration> {
        let ledger = lock(&self.ledger);
        ledger
            .limits
            .values()
            .filter(|l| {
                l.config
                    .per_minute
                    .is_some_and(|max| l.starts.len() as u32 >= max)
            })
            .filter_map(|l| l.starts.front())
            .map(|oldest| MINUTE.saturating_sub(now.duration_since(*oldest)))
            .min()
    }

    /// Running jobs' real memory use, from the engine's sampler; it changes what `free` memory is for
    /// every later pass. Returns whether memory for new reservations grew (a queued job may fit now).
    pub fn set_live_memory(&self, live: LiveMemory) -> bool {
        let mut ledger = lock(&self.ledger);
        let before = ledger.free().memory;
        ledger.live = live;
        ledger.free().memory > before
    }

    /// Running jobs' real memory use, as last set by [`set_live_memory`](Self::set_live_memory).
    pub fn live_memory(&self) -> LiveMemory {
        lock(&self.ledger).live
    }

    /// The memory jobs may reserve in all (without copying the whole `usage`).
    pub fn memory_capacity(&self) -> u64 {
        lock(&self.ledger).capacity.memory_bytes
    }

    /// Capacity, reservations and named limits' use, as one consistent snapshot.
    pub fn usage(&self) -> Usage {
        let ledger = lock(&self.ledger);
        Usage {
            capacity: ledger.capacity.clone(),
            reserved_memory_bytes: ledger.used.memory,
            reserved_cpu_millis: ledger.used.cpu,
            reserved_disk_bytes: ledger.used.disk,
            active: ledger.active,
            limits: ledger
                .limits
                .iter()
                .map(|(n, l)| (n.clone(), (l.in_use, l.config)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GpuDevice;

    const GIB: u64 = 1 << 30;

    fn admission() -> Admission {
        let capacity = Capacity {
            memory_bytes: 4 * GIB,
            cpu_millis: 2000,
            disk_bytes: 100 * GIB,
            gpus: vec![
                GpuDevice {
                    index: 0,
                    vram_bytes: 8 * GIB,
                    encoder_sessions: 3,
                },
                // Device 1 is not offered (say NVML could not read its memory): positions and device
                // indexes differ from here on.
                GpuDevice {
                    index: 2,
                    vram_bytes: 24 * GIB,
                    encoder_sessions: 8,
                },
            ],
        };
        let limits = BTreeMap::from([
            (
                "openai".to_owned(),
                LimitConfig {
                    max_concurrent: Some(2),
                    per_minute: None,
                },
            ),
            (
                "elevenlabs".to_owned(),
                LimitConfig {
                    max_concurrent: None,
                    per_minute: Some(3),
                },
            ),
        ]);
        Admission::new(capacity, limits)
    }

    #[test]
    fn a_paused_job_gives_back_its_cpu_and_keeps_its_memory() {
        let a = admission();
        let now = Instant::now();
        let mut req = Request::memory(3 * GIB);
        req.cpu_millis = 1500;
        let mut paused = a.try_reserve(&req, now).unwrap();
        let mut cpu_only = Request::memory(0);
        cpu_only.cpu_millis = 1500;
        assert!(a.try_reserve(&cpu_only, now).is_err(), "CPU is taken");
        paused.suspend_cpu();
        paused.suspend_cpu();
        let usage = a.usage();
        assert_eq!(
            (usage.reserved_cpu_millis, usage.reserved_memory_bytes),
            (0, 3 * GIB)
        );
        let other = a
            .try_reserve(&cpu_only, now)
            .expect("the paused job's CPU is free");
        assert!(
            a.try_reserve(&Request::memory(2 * GIB), now).is_err(),
            "its memory is not"
        );
        // Resumed while another holds its CPU: over-committed until one ends, never negative after.
        paused.restore_cpu();
        paused.restore_cpu();
        assert_eq!(a.usage().reserved_cpu_millis, 3000);
        drop(other);
        paused.suspend_cpu();
        drop(paused);
        let usage = a.usage();
        assert_eq!(
            (
                usage.reserved_cpu_millis,
                usage.reserved_memory_bytes,
                usage.active
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn dropping_a_reservation_gives_everything_back() {
        let a = admission();
        let now = Instant::now();
        let mut req = Request::memory(3 * GIB);
        req.cpu_millis = 1500;
        req.gpus = 1;
        req.vram_bytes_per_gpu = 10 * GIB;
        req.providers.insert("openai".into());
        let r = a.try_reserve(&req, now).unwrap();
        assert_eq!(r.gpus(), &[2], "only device 2 has 10 GiB of VRAM");
        let err = a.try_reserve(&Request::memory(2 * GIB), now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "waiting for memory: needs 2.0 GiB, 1.0 GiB free after reservations"
        );
        drop(r);
        let u = a.usage();
        assert_eq!(
            (u.reserved_memory_bytes, u.reserved_cpu_millis, u.active),
            (0, 0, 0)
        );
        assert_eq!(u.limits["openai"].0, 0);
        assert!(a.try_reserve(&req, now).is_ok());
    }

    #[test]
    fn named_limits_and_rates() {
        let a = admission();
        let t0 = Instant::now();
        let mut openai = Request::default();
        openai.providers.insert("openai".into());
        let held: Vec<_> = (0..2)
            .map(|_| a.try_reserve(&openai, t0).unwrap())
            .collect();
        assert_eq!(
            a.try_reserve(&openai, t0).unwrap_err(),
            Shortfall::Limit {
                name: "openai".into(),
                limit: 2
            }
        );
        drop(held);
        assert!(a.try_reserve(&openai, t0).is_ok());

        let mut tts = Request::default();
        tts.providers.insert("elevenlabs".into());
        for _ in 0..3 {
            drop(a.try_reserve(&tts, t0).unwrap());
        }
        match a.try_reserve(&tts, t0 + Duration::from_secs(10)) {
            Err(Shortfall::Rate { retry_in, .. }) => assert_eq!(retry_in, Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
        assert!(a.try_reserve(&tts, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn requests_that_can_never_fit_name_the_resource_and_both_numbers() {
        let a = admission();
        let err = a.check_capacity(&Request::memory(5 * GIB)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory requested (5.0 GiB) exceeds this machine's capacity (4.0 GiB)"
        );
        let gpu = Request {
            gpus: 1,
            encoder_sessions_per_gpu: 9,
            ..Request::default()
        };
        assert!(matches!(
            a.check_capacity(&gpu),
            Err(Shortfall::NeverFits {
                resource: Resource::Gpu,
                ..
            })
        ));
        let mut unknown = Request::default();
        unknown.providers.insert("nope".into());
        assert_eq!(
            a.check_capacity(&unknown),
            Err(Shortfall::UnknownLimit("nope".into()))
        );
        assert!(a.check_capacity(&Request::memory(4 * GIB)).is_ok());
    }

    #[test]
    fn capacity_and_live_memory_read_back_what_was_set() {
        let a = admission();
        assert_eq!(a.memory_capacity(), 4 * GIB);
        assert_eq!(a.live_memory(), LiveMemory::default());
        let live = LiveMemory {
            overrun_bytes: 3,
            within_bytes: 5,
            available_bytes: Some(7),
        };
        a.set_live_memory(live);
        assert_eq!(a.live_memory(), live);
    }

    /// Only growth wakes the scheduler: an unchanged or smaller free figure must not trigger a pass.
    #[test]
    fn set_live_memory_reports_only_growth_of_free_memory() {
        let a = admission();
        let overrun = |gib: u64| LiveMemory {
            overrun_bytes: gib * GIB,
            ..LiveMemory::default()
        };
        // (reported use, whether free memory grew)
        let table = [
            (LiveMemory::default(), false),
            (overrun(1), false),
            (overrun(1), false),
            (overrun(2), false),
            (overrun(1), true),
            (LiveMemory::default(), true),
            (LiveMemory::default(), false),
        ];
        for (i, (live, grew)) in table.into_iter().enumerate() {
            assert_eq!(a.set_live_memory(live), grew, "row {i}: {live:?}");
        }
    }

    #[test]
    fn next_rate_window_is_when_a_full_rate_limit_frees_a_start() {
        let a = admission();
        let t0 = Instant::now();
        assert_eq!(a.next_rate_window(t0), None, "no starts yet");
        let mut tts = Request::default();
        tts.providers.insert("elevenlabs".into());
        for i in 0..3 {
            assert_eq!(a.next_rate_window(t0), None, "{i} of 3 starts used");
            drop(a.try_reserve(&tts, t0).unwrap());
        }
        assert_eq!(
            a.next_rate_window(t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(
            a.next_rate_window(t0 + Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
    }

    /// Encoder sessions and VRAM are reserved on the device picked: once device 0's 3 sessions (or its
    /// 8 GiB) are taken, the next request goes to device 2, and back to 0 once they are returned.
    #[test]
    fn gpu_sessions_and_vram_are_reserved_per_device() {
        let a = admission();
        let now = Instant::now();
        let gpu = |sessions: u32, vram: u64| Request {
            gpus: 1,
            encoder_sessions_per_gpu: sessions,
            vram_bytes_per_gpu: vram * GIB,
            ..Request::default()
        };
        // (first request, second request) → devices of the second
        let table = [
            (gpu(3, 0), gpu(1, 0), [2]),
            (gpu(2, 0), gpu(1, 0), [0]),
            (gpu(0, 8), gpu(0, 1), [2]),
            (gpu(0, 7), gpu(0, 1), [0]),
        ];
        for (i, (first, second, devices)) in table.into_iter().enumerate() {
            let held = a.try_reserve(&first, now).unwrap();
            assert_eq!(held.gpus(), [0], "row {i}: first fit");
            let next = a.try_reserve(&second, now).unwrap();
            assert_eq!(next.gpus(), devices, "row {i}");
            drop((held, next));
        }
    }

    /// Each capacity bound admits a request exactly at it and refuses one past it, naming the resource
    /// and both numbers; a limit configured to zero can never be held.
    #[test]
    fn check_capacity_boundaries() {
        let capacity = admission().usage().capacity;
        let limit = |max_concurrent, per_minute| LimitConfig {
            max_concurrent,
            per_minute,
        };
        let a = Admission::new(
            capacity,
            BTreeMap::from([
                ("none".to_owned(), limit(Some(0), None)),
                ("paused".to_owned(), limit(None, Some(0))),
                ("open".to_owned(), limit(Some(1), Some(1))),
                ("free".to_owned(), LimitConfig::default()),
            ]),
        );
        let never = |resource, needed, capacity| {
            Err(Shortfall::NeverFits {
                resource,
                needed,
                capacity,
            })
        };
        let gpus = |gpus: u32, vram: u64, sessions: u32| Request {
            gpus,
            vram_bytes_per_gpu: vram,
            encoder_sessions_per_gpu: sessions,
            ..Request::default()
        };
        let provider = |name: &str| {
            let mut r = Request::default();
            r.providers.insert(name.to_owned());
            r
        };
        let zero = |name: &str| {
            Err(Shortfall::Limit {
                name: name.into(),
                limit: 0,
            })
        };
        let table = [
            (Request::memory(4 * GIB), Ok(())),
            (
                Request::memory(4 * GIB + 1),
                never(Resource::Memory, 4 * GIB + 1, 4 * GIB),
            ),
            (
                Request {
                    cpu_millis: 2000,
                    ..Request::default()
                },
                Ok(()),
            ),
            (
                Request {
                    cpu_millis: 2001,
                    ..Request::default()
                },
                never(Resource::Cpu, 2001, 2000),
            ),
            (
                Request {
                    disk_bytes: 100 * GIB,
                    ..Request::default()
                },
                Ok(()),
            ),
            (
                Request {
                    disk_bytes: 100 * GIB + 1,
                    ..Request::default()
                },
                never(Resource::Disk, 100 * GIB + 1, 100 * GIB),
            ),
            // Both devices have 8 GiB and 3 sessions; only one has more.
            (gpus(2, 8 * GIB, 3), Ok(())),
            (gpus(2, 8 * GIB + 1, 0), never(Resource::Gpu, 2, 1)),
            (gpus(2, 0, 4), never(Resource::Gpu, 2, 1)),
            (gpus(1, 8 * GIB + 1, 4), Ok(())),
            (gpus(3, 0, 0), never(Resource::Gpu, 3, 2)),
            (gpus(0, u64::MAX, u32::MAX), Ok(())),
            (provider("none"), zero("none")),
            (provider("paused"), zero("paused")),
            (provider("open"), Ok(())),
            (provider("free"), Ok(())),
        ];
        for (i, (request, want)) in table.into_iter().enumerate() {
            assert_eq!(a.check_capacity(&request), want, "row {i}: {request:?}");
        }
    }

    #[test]
    fn usage_counts_live_reservations() {
        let a = admission();
        let now = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| a.try_reserve(&Request::memory(GIB), now).unwrap())
            .collect();
        let u = a.usage();
        assert_eq!((u.active, u.reserved_memory_bytes), (3, 3 * GIB));
        drop(held);
        assert_eq!(a.usage().active, 0);
    }

    #[test]
    fn a_reservation_debugs_as_its_devices() {
        let a = admission();
        let req = Request {
            gpus: 1,
            vram_bytes_per_gpu: 10 * GIB,
            ..Request::default()
        };
        let r = a.try_reserve(&req, Instant::now()).unwrap();
        assert_eq!(format!("{r:?}"), "Reservation { gpus: [2], .. }");
    }
}
