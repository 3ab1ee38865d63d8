//! Property tests of admission through its public API: random sequences of `try_reserve`, dropped
//! reservations, scheduling passes and clock advances, checked against a model of the live reservations
//! (capacity, GPU devices, named limits and rates never exceeded; nothing double-counted or leaked; a
//! pass bounded by `max_starts`; the starvation guard of the backfill).

use aura_admission::{
    Admission, Capacity, GpuDevice, LimitConfig, Queued, Request, Reservation, Resource, Scheduler,
    Shortfall,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);
/// Named limits the tests configure; `unknown` is never configured.
const PROVIDERS: [&str; 3] = ["openai", "elevenlabs", "runway"];
const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug)]
struct Setup {
    capacity: Capacity,
    limits: BTreeMap<String, LimitConfig>,
}

fn limit_config() -> impl Strategy<Value = LimitConfig> {
    (proptest::option::of(0u32..4), proptest::option::of(0u32..4)).prop_map(
        |(max_concurrent, per_minute)| LimitConfig {
            max_concurrent,
            per_minute,
        },
    )
}

fn setup() -> impl Strategy<Value = Setup> {
    let gpus = proptest::collection::vec((0u64..=16, 0u32..=4), 0..=3).prop_map(|devices| {
        devices
            .into_iter()
            .enumerate()
            // Indexes differ from positions, as when a device is left out of the capacity.
            .map(|(i, (vram_bytes, encoder_sessions))| GpuDevice {
                index: 2 * i as u32 + 1,
                vram_bytes,
                encoder_sessions,
            })
            .collect::<Vec<_>>()
    });
    (
        0u64..=64,
        0u64..=8_000,
        // The engine's default when the data volume cannot be read is u64::MAX.
        prop_oneof![3 => 0u64..=64, 1 => Just(u64::MAX)],
        gpus,
        proptest::collection::vec(limit_config(), PROVIDERS.len()),
    )
        .prop_map(
            |(memory_bytes, cpu_millis, disk_bytes, gpus, configs)| Setup {
                capacity: Capacity {
                    memory_bytes,
                    cpu_millis,
                    disk_bytes,
                    gpus,
                },
                limits: PROVIDERS
                    .iter()
                    .map(|p| (*p).to_owned())
                    .zip(configs)
                    .collect(),
            },
        )
}

fn providers() -> impl Strategy<Value = BTreeSet<String>> {
    prop_oneof![
        6 => Just(BTreeSet::new()),
        4 => proptest::sample::subsequence(PROVIDERS.to_vec(), 1..=2)
            .prop_map(|ps| ps.into_iter().map(str::to_owned).collect()),
        1 => Just(BTreeSet::from([UNKNOWN.to_owned()])),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        0u64..=40,
        prop_oneof![Just(0u64), 0u64..=5_000],
        prop_oneof![3 => Just(0u64), 3 => 0u64..=40],
        prop_oneof![3 => Just(0u32), 1 => 1u32..=3],
        0u64..=10,
        0u32..=3,
        providers(),
    )
        .prop_map(
            |(memory_bytes, cpu_millis, disk_bytes, gpus, vram, sessions, providers)| Request {
                memory_bytes,
                cpu_millis,
                disk_bytes,
                gpus,
                // GPU figures only with GPUs, as the model's validation requires.
                vram_bytes_per_gpu: if gpus > 0 { vram } else { 0 },
                encoder_sessions_per_gpu: if gpus > 0 { sessions } else { 0 },
                providers,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    /// `try_reserve` after advancing the clock by this many seconds.
    Reserve(Request, u64),
    /// Drop the live reservation at this index (modulo the number live).
    Drop(prop::sample::Index),
    /// A scheduling pass over these requests with this `max_starts`, after advancing the clock.
    Pass(Vec<Request>, usize, u64),
    Advance(u64),
}

/// Seconds to advance the clock before an operation: in quarter minutes, so that a rate window's edge
/// (exactly a minute after a start) is hit often.
fn step() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0u64), 2 => Just(15), 1 => Just(30)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (request(), step()).prop_map(|(r, dt)| Op::Reserve(r, dt)),
        3 => any::<prop::sample::Index>().prop_map(Op::Drop),
        3 => (proptest::collection::vec(request(), 0..6), 0usize..5, step())
            .prop_map(|(q, m, dt)| Op::Pass(q, m, dt)),
        1 => (0u64..=4).prop_map(|n| Op::Advance(15 * n)),
    ]
}

struct Live {
    request: Request,
    reservation: Reservation,
}

/// What the test knows independently of the ledger: the setup, every live reservation, every start.
struct World {
    setup: Setup,
    admission: Admission,
    live: Vec<Live>,
    /// Start time and providers of every reservation ever granted.
    starts: Vec<(Instant, BTreeSet<String>)>,
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Sums {
    memory: u64,
    cpu: u64,
    disk: u64,
}

impl World {
    fn new(setup: Setup) -> World {
        World {
            admission: Admission::new(setup.capacity.clone(), setup.limits.clone()),
            setup,
            live: Vec::new(),
            starts: Vec::new(),
        }
    }

    fn sums(&self) -> Sums {
        let mut s = Sums::default();
        for l in &self.live {
            // Saturating: an over-reservation near u64::MAX must show as a sum over capacity, not wrap.
            s.memory = s.memory.saturating_add(l.request.memory_bytes);
            s.cpu = s.cpu.saturating_add(l.request.cpu_millis);
            s.disk = s.disk.saturating_add(l.request.disk_bytes);
        }
        s
    }

    /// (vram, sessions) reserved on each device, by position in the capacity.
    fn device_use(&self) -> Vec<(u64, u32)> {
        let mut used = vec![(0u64, 0u32); self.setup.capacity.gpus.len()];
        for l in &self.live {
            for index in l.reservation.gpus() {
                if let Some(pos) = self
                    .setup
                    .capacity
                    .gpus
                    .iter()
                    .position(|d| d.index == *index)
                {
                    used[pos].0 += l.request.vram_bytes_per_gpu;
                    used[pos].1 += l.request.encoder_sessions_per_gpu;
                }
            }
        }
        used
    }

    fn in_use(&self, provider: &str) -> u32 {
        self.live
            .iter()
            .filter(|l| l.request.providers.contains(provider))
            .count() as u32
    }

    fn starts_in_window(&self, provider: &str, now: Instant) -> usize {
        self.starts
            .iter()
            .filter(|(t, ps)| ps.contains(provider) && now.duration_since(*t) < MINUTE)
            .count()
    }

    /// Whether `request` can never fit, per `check_capacity`'s doc.
    fn never_fits(&self, r: &Request) -> bool {
        let c = &self.setup.capacity;
        let suitable = c
            .gpus
            .iter()
            .filter(|d| {
                d.vram_bytes >= r.vram_bytes_per_gpu
                    && d.encoder_sessions >= r.encoder_sessions_per_gpu
            })
            .count();
        r.memory_bytes > c.memory_bytes
            || r.cpu_millis > c.cpu_millis
            || r.disk_bytes > c.disk_bytes
            || (r.gpus > 0 && suitable < r.gpus as usize)
            || r.providers.iter().any(|p| match self.setup.limits.get(p) {
                None => true,
                Some(l) => l.max_concurrent == Some(0) || l.per_minute == Some(0),
            })
    }

    /// Whether `request` fits now, ignoring the queue: host-wide quantities, a device each for its GPUs,
    /// a free slot and a start left this minute for each named limit.
    fn fits(&self, r: &Request, now: Instant) -> bool {
        let c = &self.setup.capacity;
        let s = self.sums();
        let scalar = r.memory_bytes <= c.memory_bytes.saturating_sub(s.memory)
            && r.cpu_millis <= c.cpu_millis.saturating_sub(s.cpu)
            && r.disk_bytes <= c.disk_bytes.saturating_sub(s.disk);
        let used = self.device_use();
        let with_room = c
            .gpus
            .iter()
            .zip(&used)
            .filter(|(d, (vram, sessions))| {
                d.vram_bytes.saturating_sub(*vram) >= r.vram_bytes_per_gpu
                    && d.encoder_sessions.saturating_sub(*sessions) >= r.encoder_sessions_per_gpu
            })
            .count();
        let gpus = r.gpus == 0 || with_room >= r.gpus as usize;
        let limits = r.providers.iter().all(|p| match self.setup.limits.get(p) {
            None => false,
            Some(l) => {
                l.max_concurrent.map_or(true, |max| self.in_use(p) < max)
                    && l.per_minute
                        .map_or(true, |max| self.starts_in_window(p, now) < max as usize)
            }
        });
        scalar && gpus && limits
    }

    /// A refusal names a real shortfall, with the figures as they are.
    fn check_shortfall(
        &self,
        r: &Request,
        s: &Shortfall,
        now: Instant,
    ) -> Result<(), TestCaseError> {
        let c = &self.setup.capacity;
        let sums = self.sums();
        match s {
            Shortfall::Resource {
                resource,
                needed,
                available,
            } => {
                let (want, free) = match resource {
                    Resource::Memory => (r.memory_bytes, c.memory_bytes - sums.memory),
                    Resource::Cpu => (r.cpu_millis, c.cpu_millis - sums.cpu),
                    Resource::Disk => (r.disk_bytes, c.disk_bytes - sums.disk),
                    Resource::Gpu => {
                        let used = self.device_use();
                        let with_room = c
                            .gpus
                            .iter()
                            .zip(&used)
                            .filter(|(d, (vram, sessions))| {
                                d.vram_bytes - vram >= r.vram_bytes_per_gpu
                                    && d.encoder_sessions - sessions >= r.encoder_sessions_per_gpu
                            })
                            .count();
                        (u64::from(r.gpus), with_room as u64)
                    }
                    other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                };
                prop_assert_eq!(*needed, want);
                prop_assert_eq!(*available, free);
                prop_assert!(needed > available, "{s}");
            }
            // These props never report live use: every shortfall is by reservations alone.
            Shortfall::Memory { .. } => {
                return Err(TestCaseError::fail(format!("live memory shortfall {s}")))
            }
            Shortfall::Limit { name, limit } => {
                let config = self.setup.limits.get(&**name);
                prop_assert!(r.providers.contains(&**name));
                prop_assert_eq!(config.and_then(|l| l.max_concurrent), Some(*limit));
                prop_assert_eq!(self.in_use(name), *limit);
            }
            Shortfall::Rate {
                name,
                per_minute,
                retry_in,
            } => {
                let config = self.setup.limits.get(&**name);
                prop_assert!(r.providers.contains(&**name));
                prop_assert_eq!(config.and_then(|l| l.per_minute), Some(*per_minute));
                prop_assert!(self.starts_in_window(name, now) >= *per_minute as usize);
                prop_assert!(
                    *retry_in > Duration::ZERO && *retry_in <= MINUTE,
                    "{retry_in:?}"
                );
            }
            Shortfall::UnknownLimit(name) => {
                prop_assert!(r.providers.contains(name));
                prop_assert!(!self.setup.limits.contains_key(name));
            }
            Shortfall::NeverFits { .. } => {
                return Err(TestCaseError::fail("try_reserve answered NeverFits"));
            }
        }
        Ok(())
    }

    fn grant(&mut self, request: Request, reservation: Reservation, now: Instant) {
        self.starts.push((now, request.providers.clone()));
        self.live.push(Live {
            request,
            reservation,
        });
    }

    /// What holds after every operation.
    fn check_ledger(&self, now: Instant) -> Result<(), TestCaseError> {
        let c = &self.setup.capacity;
        let usage = self.admission.usage();
        let sums = self.sums();
        // The ledger's figures are exactly the sum over the live reservations: nothing double-counted,
        // nothing leaked.
        prop_assert_eq!(
            Sums {
                memory: usage.reserved_memory_bytes,
                cpu: usage.reserved_cpu_millis,
                disk: usage.reserved_disk_bytes,
            },
            sums
        );
        prop_assert_eq!(usage.active, self.live.len());
        prop_assert_eq!(&usage.capacity, c);
        // Never more than the machine has.
        let s = self.sums();
        prop_assert!(s.memory <= c.memory_bytes && s.cpu <= c.cpu_millis && s.disk <= c.disk_bytes);
        for (d, (vram, sessions)) in c.gpus.iter().zip(self.device_use()) {
            prop_assert!(vram <= d.vram_bytes, "device {}: vram {vram}", d.index);
            prop_assert!(
                sessions <= d.encoder_sessions,
                "device {}: sessions {sessions}",
                d.index
            );
        }
        for l in &self.live {
            let gpus = l.reservation.gpus();
            prop_assert_eq!(gpus.len(), l.request.gpus as usize);
            prop_assert_eq!(gpus.iter().collect::<BTreeSet<_>>().len(), gpus.len());
            prop_assert!(gpus.iter().all(|g| c.gpus.iter().any(|d| d.index == *g)));
        }
        // Named limits: slots as held, within their bounds, and no more starts per minute than allowed.
        prop_assert_eq!(usage.limits.len(), self.setup.limits.len());
        for (name, config) in &self.setup.limits {
            let (in_use, reported) = usage.limits[name];
            prop_assert_eq!(reported, *config);
            prop_assert_eq!(in_use, self.in_use(name));
            if let Some(max) = config.max_concurrent {
                prop_assert!(in_use <= max);
            }
            if let Some(per_minute) = config.per_minute {
                for (t, _) in self.starts.iter().filter(|(_, ps)| ps.contains(name)) {
                    let window = self
                        .starts
                        .iter()
                        .filter(|(u, ps)| {
                            ps.contains(name) && u <= t && t.duration_since(*u) < MINUTE
                        })
                        .count();
                    prop_assert!(
                        window <= per_minute as usize,
                        "{name}: {window} starts in a minute"
                    );
                }
            }
        }
        // A full per-minute limit tells when to re-run the pass, no later than its next free start.
        let frees: Vec<Duration> = self
            .setup
            .limits
            .iter()
            .filter(|(name, l)| {
                l.per_minute
                    .is_some_and(|max| self.starts_in_window(name, now) >= max as usize)
            })
            .filter_map(|(name, _)| {
                self.starts
                    .iter()
                    .filter(|(t, ps)| ps.contains(name) && now.duration_since(*t) < MINUTE)
                    .map(|(t, _)| MINUTE - now.duration_since(*t))
                    .max()
            })
            .collect();
        let window = self.admission.next_rate_window(now);
        if let Some(first_free) = frees.iter().min() {
            prop_assert!(
                window.is_some_and(|w| w <= *first_free),
                "next_rate_window {window:?}, a start frees in {first_free:?}"
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random reserve / drop / pass / advance sequences against the model of the live reservations.
    #[test]
    fn ledger_matches_the_live_reservations(setup in setup(), ops in proptest::collection::vec(op(), 0..40)) {
        let mut world = World::new(setup);
        let mut now = Instant::now();
        let mut next_key = 0i64;
        world.check_ledger(now)?;
        for op in ops {
            match op {
                Op::Reserve(request, dt) => {
                    now += Duration::from_secs(dt);
                    let fits = world.fits(&request, now);
                    let never = world.never_fits(&request);
                    let explained = Scheduler::explain(&world.admission, &request, now);
                    let before = world.admission.usage();
                    match world.admission.check_capacity(&request) {
                        Ok(()) => prop_assert!(!never, "check_capacity accepted {request:?}"),
                        Err(Shortfall::NeverFits { resource, needed, capacity }) => {
                            prop_assert!(never);
                            prop_assert!(needed > capacity, "{resource:?}: {needed} <= {capacity}");
                        }
                        Err(Shortfall::UnknownLimit(_) | Shortfall::Limit { limit: 0, .. }) => {
                            prop_assert!(never);
                        }
                        Err(other) => prop_assert!(false, "check_capacity: {other:?}"),
                    }
                    match world.admission.try_reserve(&request, now) {
                        Ok(reservation) => {
                            prop_assert!(fits, "granted what does not fit: {request:?}");
                            prop_assert!(explained.is_none(), "explain said {explained:?}");
                            world.grant(request, reservation, now);
                        }
                        Err(shortfall) => {
                            prop_assert!(!fits, "refused what fits: {shortfall}");
                            prop_assert!(explained.is_some());
                            world.check_shortfall(&request, &shortfall, now)?;
                            let after = world.admission.usage();
                            prop_assert_eq!(
                                (after.reserved_memory_bytes, after.reserved_cpu_millis, after.reserved_disk_bytes, after.active),
                                (before.reserved_memory_bytes, before.reserved_cpu_millis, before.reserved_disk_bytes, before.active),
                                "a refusal changed the ledger"
                            );
                        }
                    }
                }
                Op::Drop(index) => {
                    if !world.live.is_empty() {
                        let gone = world.live.remove(index.index(world.live.len()));
                        drop(gone.reservation);
                    }
                }
                Op::Pass(requests, max_starts, dt) => {
                    now += Duration::from_secs(dt);
                    let queue: Vec<(i64, Request)> = requests
                        .into_iter()
                        .map(|r| {
                            next_key += 1;
                            (next_key, r)
                        })
                        .collect();
                    let first_fits = queue.first().is_some_and(|(_, r)| world.fits(r, now));
                    let started = Scheduler::pass(
                        &world.admission,
                        queue.iter().map(|(key, request)| Queued { key: *key, request }),
                        now,
                        max_starts,
                    );
                    prop_assert!(started.len() <= max_starts, "{} starts, room {max_starts}", started.len());
                    if first_fits && max_starts > 0 {
                        prop_assert_eq!(started.first().map(|(k, _)| *k), queue.first().map(|(k, _)| *k), "the first job fits but did not start");
                    }
                    // In queue order, each at most once, and each fitting after the ones before it.
                    let mut rest = queue.iter();
                    for (key, reservation) in started {
                        let request = match rest.find(|(k, _)| *k == key) {
                            Some((_, r)) => r.clone(),
                            None => return Err(TestCaseError::fail(format!("key {key} out of order or unknown"))),
                        };
                        prop_assert!(!world.never_fits(&request));
                        prop_assert!(world.fits(&request, now), "pass admitted {request:?}, which does not fit");
                        world.grant(request, reservation, now);
                    }
                }
                Op::Advance(dt) => now += Duration::from_secs(dt),
            }
            world.check_ledger(now)?;
        }
        // Dropping everything gives everything back.
        world.live.clear();
        world.check_ledger(now)?;
        let usage = world.admission.usage();
        prop_assert_eq!((usage.reserved_memory_bytes, usage.reserved_cpu_millis, usage.reserved_disk_bytes, usage.active), (0, 0, 0, 0));
        prop_assert!(usage.limits.values().all(|(in_use, _)| *in_use == 0));
        // A pass over an empty queue voids any head's claim (so that the whole-machine request below,
        // released into a claim, does not hit the overflow of `claim_overflows_when_released_near_u64_max`).
        prop_assert!(Scheduler::pass(&world.admission, [], now, 1).is_empty());
        let c = &world.setup.capacity;
        let everything = Request {
            memory_bytes: c.memory_bytes,
            cpu_millis: c.cpu_millis,
            disk_bytes: c.disk_bytes,
            gpus: c.gpus.len() as u32,
            vram_bytes_per_gpu: c.gpus.iter().map(|d| d.vram_bytes).min().unwrap_or(0),
            encoder_sessions_per_gpu: c.gpus.iter().map(|d| d.encoder_sessions).min().unwrap_or(0),
            providers: BTreeSet::new(),
        };
        let whole = world.admission.try_reserve(&everything, now);
        prop_assert!(whole.is_ok(), "the whole machine after every release: {whole:?}");
        drop(whole);
        let started = Scheduler::pass(&world.admission, [Queued { key: -1, request: &everything }], now, 1);
        prop_assert_eq!(started.len(), 1, "a pass over the whole machine after every release");
    }

    /// The starvation guard: once a head job (first in the queue, not fitting) has seen at least its
    /// request released since it became head, the next pass starts it, however many backfill jobs
    /// stand behind it; until then backfill leaves free what was released for it (up to its request).
    #[test]
    fn backfill_never_starves_the_head(
        setup in setup(),
        initial in proptest::collection::vec(request(), 0..8),
        head in request(),
        // true = a pass over [head, backfill…]; false = drop the running reservation at the index.
        steps in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(request(), 0..5), any::<prop::sample::Index>()),
            1..30,
        ),
    ) {
        // Host-wide quantities only: the claim holds memory, CPU and disk.
        let scalar_only = |r: Request| Request { gpus: 0, vram_bytes_per_gpu: 0, encoder_sessions_per_gpu: 0, providers: BTreeSet::new(), ..r };
        let mut world = World::new(setup);
        // A head that fits the machine (an empty one would; the others are refused at submit).
        let c = &world.setup.capacity;
        let head = Request {
            memory_bytes: head.memory_bytes.min(c.memory_bytes),
            cpu_millis: head.cpu_millis.min(c.cpu_millis),
            disk_bytes: head.disk_bytes.min(c.disk_bytes),
            ..scalar_only(head)
        };
        prop_assert!(!world.never_fits(&head));
        let now = Instant::now();
        for r in initial.into_iter().map(scalar_only) {
            if let Ok(reservation) = world.admission.try_reserve(&r, now) {
                world.grant(r, reservation, now);
            }
        }
        let mut released: Option<[u64; 3]> = None; // since the head became head
        let mut key = 1i64;
        for (pass, backfill, index) in steps {
            if !pass {
                if !world.live.is_empty() {
                    let gone = world.live.remove(index.index(world.live.len()));
                    if let Some(rel) = &mut released {
                        rel[0] = rel[0].saturating_add(gone.request.memory_bytes);
                        rel[1] = rel[1].saturating_add(gone.request.cpu_millis);
                        rel[2] = rel[2].saturating_add(gone.request.disk_bytes);
                    }
                }
                continue;
            }
            let want = [head.memory_bytes, head.cpu_millis, head.disk_bytes];
            let owed = released.is_some_and(|rel| rel.iter().zip(want).all(|(r, w)| *r >= w));
            let backfill: Vec<(i64, Request)> = backfill.into_iter().map(scalar_only).map(|r| { key += 1; (key, r) }).collect();
            let queue = std::iter::once(Queued { key: 0, request: &head })
                .chain(backfill.iter().map(|(k, r)| Queued { key: *k, request: r }));
            let started = Scheduler::pass(&world.admission, queue, now, usize::MAX);
            let head_started = started.first().is_some_and(|(k, _)| *k == 0);
            if owed {
                prop_assert!(head_started, "released {released:?} since it became head, it needs {want:?}");
            }
            for (k, reservation) in started {
                let request = if k == 0 { head.clone() } else {
                    backfill.iter().find(|(bk, _)| *bk == k).map(|(_, r)| r.clone()).ok_or_else(|| TestCaseError::fail("unknown key"))?
                };
                world.grant(request, reservation, now);
            }
            world.check_ledger(now)?;
            if head_started {
                break;
            }
            let rel = *released.get_or_insert([0; 3]);
            // What was released for the head stays free (up to what it needs).
            let c = &world.setup.capacity;
            let s = world.sums();
            let free = [c.memory_bytes - s.memory, c.cpu_millis - s.cpu, c.disk_bytes - s.disk];
            for i in 0..3 {
                prop_assert!(free[i] >= rel[i].min(want[i]), "free {free:?}, released {rel:?}, head needs {want:?}");
            }
        }
    }
}

/// Regression (found by `ledger_matches_the_live_reservations`): releasing a reservation while a head holds
/// a claim adds the grant to the claim before capping it at the total, so with a capacity near `u64::MAX`
/// (the engine's disk capacity when the data volume cannot be read) the addition overflowed — a panic inside
/// `Reservation::drop` in debug builds, a wrapped (too small) claim in release builds. The sum saturates now.
#[test]
fn claim_overflows_when_released_near_u64_max() {
    let admission = Admission::new(
        Capacity {
            memory_bytes: 1,
            cpu_millis: 0,
            disk_bytes: u64::MAX,
            gpus: vec![],
        },
        BTreeMap::new(),
    );
    let now = Instant::now();
    let small = Request {
        disk_bytes: 1,
        ..Request::default()
    };
    let head = Request::memory(2); // never fits now: becomes head and claims what is released
    let started = Scheduler::pass(
        &admission,
        [
            Queued {
                key: 1,
                request: &small,
            },
            Queued {
                key: 2,
                request: &head,
            },
        ],
        now,
        10,
    );
    assert_eq!(started.len(), 1);
    drop(started); // the claim holds 1 byte of disk
    let whole_disk = Request {
        disk_bytes: u64::MAX,
        ..Request::default()
    };
    let reservation = admission.try_reserve(&whole_disk, now).unwrap();
    drop(reservation); // 1 + u64::MAX: "attempt to add with overflow" in resources.rs (Scalar::add)
    assert_eq!(admission.usage().reserved_disk_bytes, 0);
}

/// Regression (found while writing `backfill_never_starves_the_head`): the claim held host-wide quantities
/// only, not GPU devices, so a head that needs two GPUs waited forever while one-GPU jobs behind it took
/// each device as it freed. Devices freed since the head became head are held for it now.
#[test]
fn a_gpu_head_is_not_starved_by_one_gpu_backfill() {
    let device = |index| GpuDevice {
        index,
        vram_bytes: 10,
        encoder_sessions: 4,
    };
    let admission = Admission::new(
        Capacity {
            memory_bytes: 100,
            cpu_millis: 1_000,
            disk_bytes: 100,
            gpus: vec![device(0), device(1)],
        },
        BTreeMap::new(),
    );
    let now = Instant::now();
    let one = Request {
        gpus: 1,
        // All of a device's memory: a device holds one such job at a time.
        vram_bytes_per_gpu: 10,
        ..Request::default()
    };
    let two = Request {
        gpus: 2,
        // All of a device's memory: a device holds one such job at a time.
        vram_bytes_per_gpu: 10,
        ..Request::default()
    };
    let mut running: Vec<Reservation> = (0..2)
        .map(|_| admission.try_reserve(&one, now).unwrap())
        .collect();
    for key in 10..14 {
        // A one-GPU job ends; the two-GPU head is first in the queue, a new one-GPU job behind it.
        drop(running.remove(0));
        let queue = [
            Queued {
                key: 1,
                request: &two,
            },
            Queued { key, request: &one },
        ];
        let started = Scheduler::pass(&admission, queue, now, 10);
        if started.iter().any(|(k, _)| *k == 1) {
            return;
        }
        running.extend(started.into_iter().map(|(_, r)| r));
    }
    panic!("the two-GPU head never started: each freed device went to a backfilled one-GPU job");
}
