//! The running-tree limit and the launches waiting for it: a launch takes a slot on its launcher thread right
//! before the clone, after everything else is prepared, and its tree gives the slot back the moment it is
//! known gone (on the watcher thread, before the owner even hears of the end). So an owner that hands
//! over a launch ahead of a free slot (a *standby*) has it started with no round trip through the owner.
//! A waiting launch can be withdrawn until it takes its slot ([`LaunchTicket`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

const WAITING: u8 = 0;
const CLAIMED: u8 = 1;
const WITHDRAWN: u8 = 2;

/// One launch's claim on a slot; its owner keeps a clone to [withdraw](crate::Supervisor::withdraw) it.
/// Launches are served in the order of their tickets' creation (the order the owner decided on).
#[derive(Clone, Debug)]
pub struct LaunchTicket(Arc<TicketState>);

#[derive(Debug)]
struct TicketState {
    seq: u64,
    state: AtomicU8,
}

static NEXT_TICKET: AtomicU64 = AtomicU64::new(0);

impl LaunchTicket {
    pub fn new() -> LaunchTicket {
        LaunchTicket(Arc::new(TicketState {
            seq: NEXT_TICKET.fetch_add(1, Ordering::Relaxed),
            state: AtomicU8::new(WAITING),
        }))
    }

    /// Whether its launch has taken a slot (it is starting, or started, or failed to start).
    pub fn claimed(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == CLAIMED
    }

    fn withdrawn(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == WITHDRAWN
    }

    fn set(&self, to: u8) -> bool {
        self.0
            .state
            .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Default for LaunchTicket {
    fn default() -> Self {
        LaunchTicket::new()
    }
}

/// Why a launch got no slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoSlot {
    Withdrawn,
    Closed,
}

#[derive(Debug, Default)]
pub(crate) struct Slots {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// `None`: no limit.
    limit: Option<usize>,
    running: usize,
    closed: bool,
    /// Sequence numbers of the tickets waiting, served lowest first.
    waiting: BTreeSet<u64>,
}

/// A taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct SlotPermit {
    slots: Arc<Slots>,
}

impl Slots {
    pub fn set_limit(&self, limit: Option<usize>) {
        crate::lock(&self.state).limit = limit;
        self.changed.notify_all();
    }

    /// Waits (blocking the calling launcher thread) until the ticket is first in line and a slot is free,
    /// then claims the ticket. Returns at once when the ticket was withdrawn or the slots closed.
    pub fn acquire(self: &Arc<Self>, ticket: &LaunchTicket) -> Result<SlotPermit, NoSlot> {
        let seq = ticket.0.seq;
        let mut state = crate::lock(&self.state);
        state.waiting.insert(seq);
        let result = loop {
            if ticket.withdrawn() {
                break Err(NoSlot::Withdrawn);
            }
            if state.closed {
                break Err(NoSlot::Closed);
            }
            let free = state.limit.map_or(true, |limit| state.running < limit);
            if free && state.waiting.first() == Some(&seq) {
                if ticket.set(CLAIMED) {
                    state.running += 1;
                    break Ok(SlotPermit {
                        slots: self.clone(),
                    });
                }
                // Withdrawn between the check and the claim.
                break Err(NoSlot::Withdrawn);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        };
        state.waiting.remove(&seq);
        drop(state);
        // The next in line may be able to go now (or must see that it is no longer behind this one).
        self.changed.notify_all();
        result
    }

    /// Withdraws a launch that has not taken its slot; `false` once it has (it is starting or started).
    pub fn withdraw(&self, ticket: &LaunchTicket) -> bool {
        if !ticket.set(WITHDRAWN) {
            return ticket.withdrawn();
        }
        // Under the lock: a launcher between its check and its wait cannot miss this.
        drop(crate::lock(&self.state));
        self.changed.notify_all();
        true
    }

    /// Every waiting launch and every later one gets `NoSlot::Closed` (shutdown).
    pub fn close(&self) {
        crate::lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    #[cfg(test)]
    pub fn running(&self) -> usize {
        crate::lock(&self.state).running
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        let mut state = crate::lock(&self.slots.state);
        state.running = state.running.saturating_sub(1);
        let wake = !state.waiting.is_empty();
        drop(state);
        if wake {
            self.slots.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait_until(what: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_launch_waits_for_a_slot_and_goes_in_ticket_order() {
        let slots = Arc::new(Slots::default());
        slots.set_limit(Some(1));
        let first = slots.acquire(&LaunchTicket::new()).expect("free slot");
        let (early, late) = (LaunchTicket::new(), LaunchTicket::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        // The later ticket starts waiting first; the earlier one must still go first.
        let spawn = |ticket: LaunchTicket, name: &'static str| {
            let (slots, order) = (slots.clone(), order.clone());
            std::thread::spawn(move || {
                let permit = slots.acquire(&ticket).expect("slot");
                crate::lock(&order).push(name);
                std::thread::sleep(Duration::from_millis(20));
                drop(permit);
            })
        };
        let b = spawn(late.clone(), "late");
        wait_until(|| crate::lock(&slots.state).waiting.len() == 1);
        let a = spawn(early.clone(), "early");
        wait_until(|| crate::lock(&slots.state).waiting.len() == 2);
        assert!(!early.claimed() && !late.claimed());
        drop(first);
        a.join().expect("early");
        b.join().expect("late");
        assert_eq!(*crate::lock(&order), ["early", "late"]);
        assert_eq!(slots.running(), 0);
    }

    #[test]
    fn a_waiting_launch_can_be_withdrawn_but_not_a_claimed_one() {
        let slots = Arc::new(Slots::default());
        slots.set_limit(Some(1));
        let claimed = LaunchTicket::new();
        let permit = slots.acquire(&claimed).expect("free slot");
        assert!(claimed.claimed());
        assert!(
            !slots.withdraw(&claimed),
            "a started launch cannot be withdrawn"
        );

        let waiting = LaunchTicket::new();
        let behind = LaunchTicket::new();
        let (s1, w1) = (slots.clone(), waiting.clone());
        let t1 = std::thread::spawn(move || s1.acquire(&w1).map(drop));
        let (s2, b2) = (slots.clone(), behind.clone());
        let t2 = std::thread::spawn(move || s2.acquire(&b2).map(|_| ()));
        wait_until(|| crate::lock(&slots.state).waiting.len() == 2);
        assert!(slots.withdraw(&waiting));
        assert!(
            slots.withdraw(&waiting),
            "withdrawing twice is still withdrawn"
        );
        assert_eq!(t1.join().expect("join"), Err(NoSlot::Withdrawn));
        // The one behind it now goes first once the slot frees.
        drop(permit);
        assert_eq!(t2.join().expect("join"), Ok(()));
        assert_eq!(slots.running(), 0);
    }

    #[test]
    fn closing_releases_every_waiter_and_refuses_later_launches() {
        let slots = Arc::new(Slots::default());
        slots.set_limit(Some(0));
        let s = slots.clone();
        let waiter = std::thread::spawn(move || s.acquire(&LaunchTicket::new()).map(drop));
        wait_until(|| crate::lock(&slots.state).waiting.len() == 1);
        slots.close();
        assert_eq!(waiter.join().expect("join"), Err(NoSlot::Closed));
        assert_eq!(
            slots.acquire(&LaunchTicket::new()).map(drop),
            Err(NoSlot::Closed)
        );
    }

    #[test]
    fn without_a_limit_every_launch_goes_at_once() {
        let slots = Arc::new(Slots::default());
        let permits: Vec<_> = (0..100)
            .map(|_| slots.acquire(&LaunchTicket::new()).expect("slot"))
            .collect();
        assert_eq!(slots.running(), 100);
        drop(permits);
        assert_eq!(slots.running(), 0);
    }
}
