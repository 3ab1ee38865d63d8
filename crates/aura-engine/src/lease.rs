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
    /// The lease's id, for renew and release; never reused, even across restarts.
    pub id: u64,
    /// Who holds it, as the holder named itself (for people reading the list).
    pub holder: Option<String>,
    /// What it reserves.
    pub resources: ResourceRequest,
    /// How long it lasts without a renew; each renew extends it by this much from then.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub ttl: Duration,
    /// When it expires unless renewed.
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

/// The largest integer a JavaScript number holds exactly, less room for 2^32 leases after the seed.
const MAX_SEED: u64 = (1 << 53) - 1 - (1 << 32);

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
        // else's lease: 1,024 ids per millisecond since the epoch. And they stay exact in a JavaScript
        // client (`JSON.parse` rounds integers above 2^53 − 1): ~2^51 today, 2^53 in the year 2248.
        let seed = (Timestamp::now().unix_millis().unsigned_abs() << 10).min(MAX_SEED);
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

    /// Drops every lease (fleet mode: the node lost its membership, and the fleet its leases'
    /// slots); returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.leases.len();
        self.leases.clear();
        n
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

/// Property tests of the lease table on a paused clock: random acquire / renew / release / expire-at-t
/// sequences against a model of the live leases and the admission ledger they hold.
#[cfg(test)]
mod ids {
    use super::*;

    #[test]
    fn lease_ids_stay_exact_in_javascript_and_grow_across_restarts() {
        let first = Leases::new().next_id;
        assert!(first < (1 << 53) - (1 << 32), "{first}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(Leases::new().next_id > first);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::AdmissionConfig;
    use aura_admission::{Admission, Capacity, LimitConfig, Request};
    use aura_model::ByteSize;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const PROVIDERS: [&str; 2] = ["openai", "runway"];

    #[derive(Clone, Debug)]
    struct Setup {
        capacity: Capacity,
        limits: BTreeMap<String, LimitConfig>,
    }

    fn setup() -> impl Strategy<Value = Setup> {
        (
            0u64..=64,
            0u64..=4_000,
            prop_oneof![0u64..=64, Just(u64::MAX)],
            0usize..=2,
            proptest::collection::vec(proptest::option::of(0u32..3), PROVIDERS.len()),
        )
            .prop_map(
                |(memory_bytes, cpu_millis, disk_bytes, gpus, slots)| Setup {
                    capacity: Capacity {
                        memory_bytes,
                        cpu_millis,
                        disk_bytes,
                        gpus: (0..gpus as u32)
                            .map(|index| aura_admission::GpuDevice {
                                index,
                                vram_bytes: 16,
                                encoder_sessions: 2,
                            })
                            .collect(),
                    },
                    // No per-minute rates: the actor reserves on the real clock, these tests run on tokio's.
                    limits: PROVIDERS
                        .iter()
                        .zip(slots)
                        .map(|(p, max_concurrent)| {
                            (
                                (*p).to_owned(),
                                LimitConfig {
                                    max_concurrent,
                                    per_minute: None,
                                },
                            )
                        })
                        .collect(),
                },
            )
    }

    fn lease_spec() -> impl Strategy<Value = LeaseSpec> {
        (
            proptest::option::of(1u64..=40),
            proptest::option::of(1u64..=3_000),
            proptest::option::of(0u64..=40),
            proptest::option::of(0u32..=2),
            proptest::option::of(1u64..=10),
            proptest::sample::subsequence(PROVIDERS.to_vec(), 0..=2),
            // 1 ms to 2 minutes, in seconds mostly so that deadlines coincide.
            prop_oneof![
                (1u64..=120).prop_map(Duration::from_secs),
                (1u64..=2_000).prop_map(Duration::from_millis),
            ],
            proptest::option::of("[a-z]{1,8}"),
        )
            .prop_map(|(memory, cpu, disk, gpus, vram, providers, ttl, holder)| {
                LeaseSpec {
                    resources: ResourceRequest {
                        memory: memory.map(ByteSize),
                        cpu: cpu.map(|m| m as f64 / 1000.0),
                        disk: disk.map(ByteSize),
                        gpus,
                        vram: vram.filter(|_| gpus.unwrap_or(0) > 0).map(ByteSize),
                        providers: providers.into_iter().map(str::to_owned).collect(),
                        ..ResourceRequest::default()
                    },
                    ttl,
                    holder,
                }
            })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire(LeaseSpec),
        /// Renew a live lease (picked by index), or an id that is not live.
        Renew(prop::sample::Index, bool),
        Release(prop::sample::Index, bool),
        /// Advance the clock by this many milliseconds, then expire as the actor's timer does.
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => lease_spec().prop_map(Op::Acquire),
            3 => (any::<prop::sample::Index>(), prop::bool::weighted(0.8))
                .prop_map(|(i, live)| Op::Renew(i, live)),
            2 => (any::<prop::sample::Index>(), prop::bool::weighted(0.8))
                .prop_map(|(i, live)| Op::Release(i, live)),
            3 => prop_oneof![0u64..=2_000, (0u64..=60).prop_map(|s| s * 1_000)].prop_map(Op::Expire),
        ]
    }

    struct Model {
        /// Live leases: deadline, ttl and the admission request they hold.
        live: BTreeMap<u64, (Instant, Duration, Request)>,
        /// Ids handed out and since released or expired.
        gone: BTreeSet<u64>,
        last_id: Option<u64>,
    }

    fn fail(msg: String) -> TestCaseError {
        TestCaseError::fail(msg)
    }

    /// The table and the ledger agree with the model: same ids, deadlines, reserved figures, and never
    /// more than the capacity.
    fn check(
        leases: &Leases,
        admission: &Admission,
        model: &Model,
        setup: &Setup,
    ) -> Result<(), TestCaseError> {
        let listed: Vec<u64> = leases.list().iter().map(|l| l.id).collect();
        prop_assert_eq!(&listed, &model.live.keys().copied().collect::<Vec<_>>());
        for (id, (deadline, ttl, _)) in &model.live {
            let lease = leases
                .leases
                .get(id)
                .ok_or_else(|| fail(format!("{id} missing")))?;
            prop_assert_eq!(lease.deadline, *deadline, "lease {}", id);
            prop_assert_eq!(lease.info.ttl, *ttl);
        }
        prop_assert_eq!(
            leases.next_deadline(),
            model.live.values().map(|(d, _, _)| *d).min()
        );
        let usage = admission.usage();
        let (mut memory, mut cpu, mut disk) = (0u64, 0u64, 0u64);
        for (_, _, r) in model.live.values() {
            memory += r.memory_bytes;
            cpu += r.cpu_millis;
            disk = disk.saturating_add(r.disk_bytes);
        }
        prop_assert_eq!(
            (
                usage.reserved_memory_bytes,
                usage.reserved_cpu_millis,
                usage.reserved_disk_bytes,
                usage.active
            ),
            (memory, cpu, disk, model.live.len())
        );
        let c = &setup.capacity;
        prop_assert!(memory <= c.memory_bytes && cpu <= c.cpu_millis && disk <= c.disk_bytes);
        for (name, config) in &setup.limits {
            let holders = model
                .live
                .values()
                .filter(|(_, _, r)| r.providers.contains(name))
                .count() as u32;
            prop_assert_eq!(usage.limits[name].0, holders);
            if let Some(max) = config.max_concurrent {
                prop_assert!(holders <= max, "{}: {} holders", name, holders);
            }
        }
        for gone in &model.gone {
            prop_assert!(!leases.leases.contains_key(gone), "{} came back", gone);
        }
        Ok(())
    }

    async fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let admission = Admission::new(setup.capacity.clone(), setup.limits.clone());
        let config = AdmissionConfig::default();
        let mut leases = Leases::new();
        let mut model = Model {
            live: BTreeMap::new(),
            gone: BTreeSet::new(),
            last_id: None,
        };
        // An id that was never issued (ids start at a seed far above it).
        let stranger = 17;
        for op in ops {
            match op {
                Op::Acquire(spec) => {
                    prop_assert!(spec.validate().is_ok(), "{:?}", spec);
                    // As the actor does: refuse what can never fit, then reserve now.
                    let request = config.lease_request(&spec.resources);
                    let reserved = admission
                        .check_capacity(&request)
                        .and_then(|()| admission.try_reserve(&request, std::time::Instant::now()));
                    let Ok(reservation) = reserved else {
                        continue;
                    };
                    let gpus = reservation.gpus().to_vec();
                    let now = Instant::now();
                    let wall = Timestamp::now();
                    let info = leases.insert(spec.clone(), reservation);
                    // Ids are fresh: increasing, never one seen before.
                    prop_assert!(model.last_id.map_or(true, |last| info.id > last));
                    prop_assert!(
                        !model.gone.contains(&info.id) && !model.live.contains_key(&info.id)
                    );
                    model.last_id = Some(info.id);
                    prop_assert_eq!(&info.resources, &spec.resources);
                    prop_assert_eq!(&info.holder, &spec.holder);
                    prop_assert_eq!(info.ttl, spec.ttl);
                    prop_assert_eq!(&info.gpus, &gpus);
                    prop_assert!(info.expires_at >= wall);
                    model
                        .live
                        .insert(info.id, (now + spec.ttl, spec.ttl, request));
                }
                Op::Renew(index, live) => {
                    let id = pick(&model, index, live).unwrap_or(stranger);
                    let before = leases.list().len();
                    let renewed = leases.renew(id);
                    match model.live.get_mut(&id) {
                        Some((deadline, ttl, _)) => {
                            let info = renewed.ok_or_else(|| fail(format!("renew {id}: none")))?;
                            prop_assert_eq!(info.id, id);
                            prop_assert_eq!(info.ttl, *ttl);
                            // Renew extends from now, by the lease's own ttl.
                            let now = Instant::now();
                            prop_assert!(now + *ttl >= *deadline, "renew moved the deadline back");
                            *deadline = now + *ttl;
                        }
                        None => {
                            prop_assert!(renewed.is_none(), "renewed unknown lease {}", id);
                            prop_assert_eq!(leases.list().len(), before);
                        }
                    }
                }
                Op::Release(index, live) => {
                    let id = pick(&model, index, live).unwrap_or(stranger);
                    let released = leases.release(id);
                    prop_assert_eq!(released, model.live.remove(&id).is_some(), "release {}", id);
                    if released {
                        model.gone.insert(id);
                    }
                    // A released id is unknown afterwards.
                    prop_assert!(!leases.release(id));
                    prop_assert!(leases.renew(id).is_none());
                }
                Op::Expire(millis) => {
                    tokio::time::advance(Duration::from_millis(millis)).await;
                    let now = Instant::now();
                    let expired: BTreeSet<u64> = leases.expire(now).into_iter().collect();
                    let due: BTreeSet<u64> = model
                        .live
                        .iter()
                        .filter(|(_, (deadline, _, _))| *deadline <= now)
                        .map(|(id, _)| *id)
                        .collect();
                    prop_assert_eq!(&expired, &due, "expired at {:?}", now);
                    for id in &expired {
                        model.live.remove(id);
                        model.gone.insert(*id);
                        prop_assert!(leases.renew(*id).is_none());
                    }
                    // Nothing left is due.
                    prop_assert!(leases.next_deadline().map_or(true, |d| d > now));
                }
            }
            check(&leases, &admission, &model, &setup)?;
        }
        // Every lease ends: past every deadline, expiry leaves none and gives everything back.
        tokio::time::advance(LeaseSpec::MAX_TTL + Duration::from_millis(1)).await;
        let expired: BTreeSet<u64> = leases.expire(Instant::now()).into_iter().collect();
        prop_assert_eq!(
            &expired,
            &model.live.keys().copied().collect::<BTreeSet<_>>()
        );
        model
            .gone
            .extend(std::mem::take(&mut model.live).into_keys());
        prop_assert!(leases.list().is_empty());
        prop_assert_eq!(leases.next_deadline(), None);
        check(&leases, &admission, &model, &setup)?;
        let usage = admission.usage();
        prop_assert_eq!(
            (
                usage.reserved_memory_bytes,
                usage.reserved_cpu_millis,
                usage.reserved_disk_bytes,
                usage.active
            ),
            (0, 0, 0, 0)
        );
        prop_assert!(usage.limits.values().all(|(in_use, _)| *in_use == 0));
        Ok(())
    }

    fn pick(model: &Model, index: prop::sample::Index, live: bool) -> Option<u64> {
        if live && !model.live.is_empty() {
            model
                .live
                .keys()
                .nth(index.index(model.live.len()))
                .copied()
        } else if !model.gone.is_empty() {
            model
                .gone
                .iter()
                .nth(index.index(model.gone.len()))
                .copied()
        } else {
            None
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn lease_sequences_keep_table_and_ledger_in_step(
            setup in setup(),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            runtime.block_on(run(setup, ops))?;
        }
    }
}
