//! The dispatch decision, pure: given the queue in order, the running and standby counts and the admission
//! ledger, which jobs start now (reserved), which of them as standbys, and when to look again. The actor
//! applies the plan; nothing here launches, waits or locks anything but the ledger.

use aura_admission::{Admission, Queued, Request, Reservation, Scheduler};
use aura_model::JobId;
use std::time::{Duration, Instant};

/// What the actor knows when it dispatches.
pub(crate) struct Snapshot<'a, Q> {
    /// Queued jobs in queue order (priority, then FIFO).
    pub queue: Q,
    /// Jobs held out of the queue's passes until a moment (requeued pressure victims in their cooldown).
    pub held: &'a [(JobId, Instant)],
    /// Jobs admitted now: running, starting, and standbys.
    pub active: usize,
    /// Standbys admitted that have not taken their running slot yet.
    pub waiting_standbys: usize,
    pub max_concurrent: usize,
    /// How many standbys may wait at once (`EngineConfig::standby`).
    pub standby: usize,
    pub now: Instant,
}

/// One job to start, its reservation taken.
pub(crate) struct Start {
    pub id: JobId,
    pub reservation: Reservation,
    /// Admitted beyond the running slots: it waits at the supervisor for a tree to end.
    pub standby: bool,
}

/// The decision: the starts in order, and when a held job or a rate window lets the next one go.
pub(crate) struct Plan {
    pub starts: Vec<Start>,
    pub look_again_in: Option<Duration>,
}

/// Starts what admission allows in queue order (`Scheduler::pass`: backfill with a starvation guard) while
/// running slots are free; then, with every running slot admitted, the queue head as a standby while
/// fewer than `standby` wait — never a backfill. Held jobs are skipped. Reservations are taken from
/// `admission` as the plan is made.
pub(crate) fn plan<'a, Q>(admission: &Admission, snapshot: Snapshot<'_, Q>) -> Plan
where
    Q: Iterator<Item = (JobId, &'a Request)> + Clone,
{
    let Snapshot {
        queue,
        held,
        active,
        waiting_standbys,
        max_concurrent,
        standby,
        now,
    } = snapshot;
    let is_held = |id: &JobId| held.iter().any(|(h, until)| h == id && *until > now);
    let mut starts: Vec<Start> = Vec::new();
    let room = max_concurrent.saturating_sub(active);
    if room > 0 {
        let queued = queue
            .clone()
            .filter(|(id, _)| !is_held(id))
            .map(|(id, request)| Queued { key: id.0, request });
        for (key, reservation) in Scheduler::pass(admission, queued, now, room) {
            starts.push(Start {
                id: JobId(key),
                reservation,
                standby: false,
            });
        }
    }
    let chosen = |starts: &[Start], id: &JobId| starts.iter().any(|s| s.id == *id);
    let mut active = active + starts.len();
    let mut waiting = waiting_standbys;
    while active >= max_concurrent && waiting < standby {
        let Some((head, request)) = queue
            .clone()
            .find(|(id, _)| !is_held(id) && !chosen(&starts, id))
        else {
            break;
        };
        let only_head = std::iter::once(Queued {
            key: head.0,
            request,
        });
        let Some((_, reservation)) = Scheduler::pass(admission, only_head, now, 1)
            .into_iter()
            .next()
        else {
            break;
        };
        starts.push(Start {
            id: head,
            reservation,
            standby: true,
        });
        active += 1;
        waiting += 1;
    }
    let queue_left = queue.clone().any(|(id, _)| !chosen(&starts, &id));
    let look_again_in = if queue_left {
        let hold_ends = held
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(_, until)| until.duration_since(now))
            .min();
        [hold_ends, admission.next_rate_window(now)]
            .into_iter()
            .flatten()
            .min()
    } else {
        None
    };
    Plan {
        starts,
        look_again_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aura_admission::{Capacity, LimitConfig};
    use std::collections::BTreeMap;

    const GIB: u64 = 1 << 30;

    fn admission(memory_gib: u64, limits: BTreeMap<String, LimitConfig>) -> Admission {
        Admission::new(
            Capacity {
                memory_bytes: memory_gib * GIB,
                cpu_millis: 64_000,
                disk_bytes: u64::MAX,
                gpus: Vec::new(),
            },
            limits,
        )
    }

    fn memory(gib: u64) -> Request {
        Request {
            memory_bytes: gib * GIB,
            ..Request::default()
        }
    }

    /// Plans over `queue` (id, GiB) with the given counts; the started ids, standbys marked `s`.
    fn planned(
        admission: &Admission,
        queue: &[(i64, Request)],
        held: &[(JobId, Instant)],
        (active, waiting, max, standby): (usize, usize, usize, usize),
    ) -> (Vec<String>, Plan) {
        let now = Instant::now();
        let snapshot = Snapshot {
            queue: queue.iter().map(|(id, r)| (JobId(*id), r)),
            held,
            active,
            waiting_standbys: waiting,
            max_concurrent: max,
            standby,
            now,
        };
        let plan = plan(admission, snapshot);
        let ids = plan
            .starts
            .iter()
            .map(|s| format!("{}{}", s.id.0, if s.standby { "s" } else { "" }))
            .collect();
        (ids, plan)
    }

    #[test]
    fn starts_in_queue_order_up_to_the_free_slots_then_one_standby() {
        let a = admission(64, BTreeMap::new());
        let queue: Vec<(i64, Request)> = (1..=5).map(|id| (id, memory(1))).collect();
        let (ids, plan) = planned(&a, &queue, &[], (0, 0, 2, 1));
        assert_eq!(ids, ["1", "2", "3s"]);
        assert_eq!(plan.look_again_in, None);
        // Already full, one standby waiting: nothing more.
        let (ids, _) = planned(&a, &queue, &[], (3, 1, 2, 1));
        assert!(ids.is_empty(), "{ids:?}");
        // No standbys configured.
        let (ids, _) = planned(&a, &queue, &[], (0, 0, 2, 0));
        assert_eq!(ids, ["1", "2"]);
    }

    #[test]
    fn backfill_runs_a_small_job_past_a_big_one_but_a_standby_is_only_ever_the_head() {
        let a = admission(4, BTreeMap::new());
        // 3 of 4 GiB taken by a running job; the queue: a 2 GiB job first, then a 1 GiB one.
        let _running = a.try_reserve(&memory(3), Instant::now()).expect("3 GiB");
        let queue = vec![(1, memory(2)), (2, memory(1))];
        let (ids, _) = planned(&a, &queue, &[], (1, 0, 3, 1));
        assert_eq!(ids, ["2"], "the small job fits beside the running one");
        // With every slot taken the head does not fit: no standby, and no backfilled standby either.
        let b = admission(4, BTreeMap::new());
        let _r = b.try_reserve(&memory(3), Instant::now()).expect("3 GiB");
        let (ids, _) = planned(&b, &queue, &[], (1, 0, 1, 1));
        assert!(ids.is_empty(), "{ids:?}");
    }

    #[test]
    fn a_lease_holding_memory_keeps_jobs_queued() {
        let a = admission(2, BTreeMap::new());
        let lease = a
            .try_reserve(&memory(2), Instant::now())
            .expect("the lease");
        let queue = vec![(1, memory(1))];
        let (ids, _) = planned(&a, &queue, &[], (0, 0, 2, 1));
        assert!(ids.is_empty(), "{ids:?}");
        drop(lease);
        let (ids, _) = planned(&a, &queue, &[], (0, 0, 2, 1));
        assert_eq!(ids, ["1"]);
    }

    #[test]
    fn held_jobs_are_skipped_and_their_hold_sets_the_next_look() {
        let a = admission(64, BTreeMap::new());
        let queue = vec![(1, memory(1)), (2, memory(1))];
        let now = Instant::now();
        let held = [(JobId(1), now + Duration::from_secs(30))];
        let (ids, plan) = planned(&a, &queue, &held, (0, 0, 1, 0));
        assert_eq!(ids, ["2"]);
        let wait = plan.look_again_in.expect("a look once the hold ends");
        assert!(
            wait <= Duration::from_secs(30) && wait > Duration::from_secs(29),
            "{wait:?}"
        );
        // A hold that has ended holds nothing.
        let ended = [(JobId(1), now - Duration::from_secs(1))];
        let (ids, _) = planned(&a, &queue, &ended, (0, 0, 1, 0));
        assert_eq!(ids, ["1"]);
    }

    #[test]
    fn a_rate_limit_lets_one_start_and_says_when_the_next_may() {
        let limits = BTreeMap::from([(
            "openai".to_owned(),
            LimitConfig {
                max_concurrent: None,
                per_minute: Some(1),
            },
        )]);
        let a = admission(64, limits);
        let provider = |id| {
            let mut r = memory(1);
            r.providers.insert("openai".into());
            (id, r)
        };
        let queue = vec![provider(1), provider(2)];
        let (ids, plan) = planned(&a, &queue, &[], (0, 0, 4, 0));
        assert_eq!(ids, ["1"]);
        let wait = plan.look_again_in.expect("when the window frees a start");
        assert!(wait <= Duration::from_secs(60), "{wait:?}");
    }
}
