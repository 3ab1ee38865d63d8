//! The scheduling pass: which queued jobs may start now. Priorities and FIFO come from the queue order the
//! caller passes; this adds backfill with a starvation guard.
//!
//! Backfill: when the first job in order does not fit (it becomes the *head*), later, smaller jobs may still
//! start. Starvation guard: from the moment a job is head, every resource released goes into its *claim*,
//! and backfilled jobs may only use what is free beyond the claim. Memory freed by finishing work therefore
//! accumulates for the head until it fits, however many small jobs keep arriving; small jobs keep using what
//! was already free. GPU devices likewise: a device that had room freed on it since the head became head is
//! held for a head that needs GPUs (as many devices as it needs), and backfilled jobs use the others. Jobs
//! blocked by a named limit or a rate never become head: they hold nothing back.

use crate::ledger::{lock, Admission, Claim, Reservation, Shortfall};
use crate::resources::{Request, Scalar};
use std::time::Instant;

/// A queued job as the scheduler sees it. Pass them in queue order: priority, then submit order.
#[derive(Clone, Copy, Debug)]
pub struct Queued<'a> {
    /// The caller's unique id for the job (the engine passes its job id); grants are returned under it.
    pub key: i64,
    /// What the job asks for.
    pub request: &'a Request,
}

/// Namespace for scheduling passes over an `Admission`.
pub struct Scheduler;

impl Scheduler {
    /// One pass: reserves and returns the jobs that may start now, in order, at most `max_starts`.
    pub fn pass<'a>(
        admission: &Admission,
        queue: impl IntoIterator<Item = Queued<'a>>,
        now: Instant,
        max_starts: usize,
    ) -> Vec<(i64, Reservation)> {
        let mut ledger = lock(&admission.ledger);
        let mut free = ledger.free();
        let mut head: Option<i64> = None;
        let mut earmark = Scalar::default();
        let mut held: Vec<u32> = Vec::new();
        let mut grants = Vec::new();
        for q in queue {
            if grants.len() >= max_starts {
                break;
            }
            let available = if head.is_some() {
                free.saturating_sub(&earmark)
            } else {
                free
            };
            match ledger.check(q.request, &available, &held, now) {
                Ok(gpus) => {
                    free.sub(&q.request.scalar());
                    if ledger.claim.as_ref().is_some_and(|c| c.key == q.key) {
                        ledger.claim = None;
                    }
                    let grant = ledger.grant(q.request, gpus, now);
                    grants.push((q.key, grant));
                }
                Err(Shortfall::Resource { .. }) if head.is_none() => {
                    head = Some(q.key);
                    (earmark, held) = match &ledger.claim {
                        Some(claim) if claim.key == q.key => (
                            claim.scalar.min(&q.request.scalar()),
                            claim
                                .devices
                                .iter()
                                .copied()
                                .take(q.request.gpus as usize)
                                .collect(),
                        ),
                        // A new head starts with nothing claimed; the old head's claim is void.
                        _ => {
                            ledger.claim = Some(Claim {
                                key: q.key,
                                ..Claim::default()
                            });
                            (Scalar::default(), Vec::new())
                        }
                    };
                }
                Err(_) => {}
            }
        }
        if head.is_none() {
            ledger.claim = None;
        }
        drop(ledger);
        grants
            .into_iter()
            .map(|(k, g)| (k, admission.reservation(g)))
            .collect()
    }

    /// Why `request` cannot start now (ignoring the queue), or `None` if it fits: "waiting for memory:
    /// needs 2.0 GiB, 1.2 GiB free after reservations".
    pub fn explain(admission: &Admission, request: &Request, now: Instant) -> Option<Shortfall> {
        let mut ledger = lock(&admission.ledger);
        let free = ledger.free();
        ledger.check(request, &free, &[], now).err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capacity, LimitConfig};
    use std::collections::BTreeMap;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn admission(memory: u64) -> Admission {
        let capacity = Capacity {
            memory_bytes: memory,
            cpu_millis: 64_000,
            disk_bytes: u64::MAX,
            gpus: vec![],
        };
        let limits = BTreeMap::from([(
            "openai".to_owned(),
            LimitConfig {
                max_concurrent: Some(1),
                per_minute: None,
            },
        )]);
        Admission::new(capacity, limits)
    }

    fn pass(a: &Admission, queue: &[(i64, Request)]) -> Vec<(i64, Reservation)> {
        Scheduler::pass(
            a,
            queue.iter().map(|(k, r)| Queued {
                key: *k,
                request: r,
            }),
            Instant::now(),
            usize::MAX,
        )
    }

    fn keys(started: &[(i64, Reservation)]) -> Vec<i64> {
        started.iter().map(|(k, _)| *k).collect()
    }

    /// The charging rule, table-tested: a running job counts as max(reservation, usage), and a request
    /// must also fit the host's actually free memory once unused reservations are set aside.
    #[test]
    fn memory_is_charged_as_the_larger_of_reservation_and_use() {
        use crate::LiveMemory;
        let live = |overrun: u64, within: u64, available: Option<u64>| LiveMemory {
            overrun_bytes: overrun * GIB,
            within_bytes: within * GIB,
            available_bytes: available.map(|a| a * GIB),
        };
        // (total, reserved, live) → free for a new reservation, GiB
        let table = [
            // Nothing reported: reservations alone.
            (23, 6, LiveMemory::default(), 17),
            // Three 2 GiB jobs using 1 GiB each: their unused 3 GiB stay promised.
            (23, 6, live(0, 3, Some(20)), 17),
            // The run: three 2 GiB jobs at 7.65 GiB each.
            (23, 6, live(17, 6, Some(0)), 0),
            // Two of them left: 23 − 4 − 11.3 (rounded to 11) by reservation, 7 actually free.
            (23, 4, live(11, 4, Some(7)), 7),
            // Something outside Aura took memory: the host has less free than reservations say.
            (23, 2, live(0, 0, Some(10)), 8),
            // Usage far over everything never underflows.
            (8, 6, live(40, 6, Some(0)), 0),
        ];
        for (i, (total, reserved, live, free)) in table.into_iter().enumerate() {
            assert_eq!(
                live.free(total * GIB, reserved * GIB),
                free * GIB,
                "row {i}: {live:?}"
            );
        }
    }

    /// A job running far over its request holds back a queued job that fits the reservations but not the
    /// memory actually free, and the shortfall names both figures.
    #[test]
    fn real_use_holds_back_what_reservations_would_admit() {
        let a = admission(23 * GIB);
        let running = pass(&a, &[(1, Request::memory(2 * GIB))]);
        assert_eq!(keys(&running), vec![1]);
        // Job 1 uses 13 GiB: 11 over its 2 GiB reservation; the host has 9 GiB available for jobs.
        let grew = a.set_live_memory(crate::LiveMemory {
            overrun_bytes: 11 * GIB,
            within_bytes: 2 * GIB,
            available_bytes: Some(9 * GIB),
        });
        assert!(!grew);
        let queued = (2, Request::memory(10 * GIB));
        assert!(pass(&a, std::slice::from_ref(&queued)).is_empty());
        let why = Scheduler::explain(&a, &queued.1, Instant::now()).expect("waiting");
        assert_eq!(
            why,
            Shortfall::Memory {
                needed: 10 * GIB,
                unreserved: 10 * GIB,
                actually_free: 9 * GIB,
                overrun: 11 * GIB,
            }
        );
        let text = why.to_string();
        assert!(text.contains("9.0 GiB actually free"), "{text}");
        assert!(text.contains("11.0 GiB over their reservations"), "{text}");
        // Job 1 shrinks back: the queued job fits both figures and starts.
        assert!(a.set_live_memory(crate::LiveMemory {
            overrun_bytes: 0,
            within_bytes: GIB,
            available_bytes: Some(20 * GIB),
        }));
        assert_eq!(keys(&pass(&a, &[queued])), vec![2]);
        drop(running);
    }

    #[test]
    fn at_most_what_fits_runs() {
        let a = admission(GIB);
        let queue: Vec<_> = (1..=5).map(|k| (k, Request::memory(400 * MIB))).collect();
        let started = pass(&a, &queue);
        assert_eq!(keys(&started), vec![1, 2]);
    }

    #[test]
    fn backfill_does_not_starve_the_big_job() {
        let a = admission(8 * GIB);
        // Running work: 6 GiB in three jobs of 2 GiB.
        let running_queue: Vec<_> = (1..=3).map(|k| (k, Request::memory(2 * GIB))).collect();
        let mut running: Vec<_> = pass(&a, &running_queue)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        // The big job waits; a small one behind it backfills into the free 2 GiB.
        let big = (10, Request::memory(4 * GIB));
        let small = |k| (k, Request::memory(GIB));
        let started = pass(&a, &[big.clone(), small(11), small(12), small(13)]);
        assert_eq!(keys(&started), vec![11, 12], "small jobs use what is free");
        let mut small_running: Vec<_> = started.into_iter().map(|(_, r)| r).collect();
        // One 2 GiB job ends: its memory is claimed by the big job, not by new small arrivals.
        running.pop();
        let started = pass(&a, &[big.clone(), small(13), small(14)]);
        assert_eq!(
            keys(&started),
            Vec::<i64>::new(),
            "freed memory is held for the head"
        );
        // Another ends: the claim reaches 4 GiB and the big job starts, before any small one.
        running.pop();
        let started = pass(&a, &[big.clone(), small(13), small(14)]);
        assert_eq!(keys(&started), vec![10]);
        small_running.clear();
        drop(started);
    }

    #[test]
    fn limits_do_not_make_a_head() {
        let a = admission(4 * GIB);
        let mut limited = Request::memory(GIB);
        limited.providers.insert("openai".into());
        let first = pass(&a, &[(1, limited.clone())]);
        assert_eq!(keys(&first), vec![1]);
        // Job 2 waits for the provider slot; job 3 must not be held back by it.
        let started = pass(&a, &[(2, limited.clone()), (3, Request::memory(3 * GIB))]);
        assert_eq!(keys(&started), vec![3]);
        let reason = Scheduler::explain(&a, &limited, Instant::now()).map(|s| s.to_string());
        assert_eq!(
            reason.as_deref(),
            Some("waiting for memory: needs 1.0 GiB, 0 B free after reservations")
        );
    }

    #[test]
    fn max_starts_bounds_a_pass() {
        let a = admission(64 * GIB);
        let queue: Vec<_> = (1..=10).map(|k| (k, Request::memory(GIB))).collect();
        assert_eq!(pass(&a, &queue).len(), 10);
        let a = admission(64 * GIB);
        let started = Scheduler::pass(
            &a,
            queue.iter().map(|(k, r)| Queued {
                key: *k,
                request: r,
            }),
            Instant::now(),
            3,
        );
        assert_eq!(keys(&started), vec![1, 2, 3]);
    }

    /// A claim belongs to the job it was made for: when another job becomes head (the old head was
    /// cancelled), what the old head had accumulated must not keep holding back backfill.
    #[test]
    fn a_new_head_does_not_inherit_the_old_heads_claim() {
        let a = admission(4 * GIB);
        let base = pass(&a, &[(1, Request::memory(GIB))]);
        let released = pass(&a, &[(2, Request::memory(2 * GIB))]);
        assert_eq!(keys(&base), vec![1]);
        assert_eq!(keys(&released), vec![2]);
        // Job 10 waits for all 4 GiB and becomes head; job 2 ends, so its 2 GiB go into 10's claim.
        assert!(pass(&a, &[(10, Request::memory(4 * GIB))]).is_empty());
        drop(released);
        // Job 10 is gone. Job 11 (3.5 GiB) does not fit the 3 GiB free and is the new head with
        // nothing claimed yet, so job 12 backfills into the free memory.
        let started = pass(
            &a,
            &[
                (11, Request::memory(3 * GIB + GIB / 2)),
                (12, Request::memory(2 * GIB)),
            ],
        );
        assert_eq!(keys(&started), vec![12]);
        drop(base);
    }
}
