//! The running-tree limit and the launches waiting for it: a launch takes a slot on its launcher thread right
//! before the clone, after everything else is prepared, and its tree gives the slot back the moment it is
//! known gone (on the watcher thread, before the owner even hears of the end). So an owner that hands
//! over launches ahead of a free slot (*standbys*) has them started with no round trip through the owner.
//!
//! Slots go strictly in the order launches were registered (`Supervisor::launch` registers and queues a
//! launch in one step, and launcher threads take them from the queue in that order): a launch whose turn
//! it is not yet waits even if a slot is free. That cannot deadlock, because every launch registered
//! before one that holds a launcher thread was taken by a launcher before it. A waiting launch can be
//! withdrawn until it takes its slot ([`LaunchTicket`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

const WAITING: u8 = 0;
const CLAIMED: u8 = 1;
const WITHDRAWN: u8 = 2;

/// Not registered yet.
const NO_SEQ: u64 = u64::MAX;

/// One launch's claim on a slot; its owner keeps a clone to [withdraw](crate::Supervisor::withdraw) it.
#[derive(Clone, Debug)]
pub struct LaunchTicket(Arc<TicketState>);

#[derive(Debug)]
struct TicketState {
    /// Its place in line, set when the launch is registered.
    seq: AtomicU64,
    state: AtomicU8,
}

impl LaunchTicket {
    pub fn new() -> LaunchTicket {
        LaunchTicket(Arc::new(TicketState {
            seq: AtomicU64::new(NO_SEQ),
            state: AtomicU8::new(WAITING),
        }))
    }

    /// Whether its launch has taken a slot (it is starting, or started, or failed to start).
    pub fn claimed(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == CLAIMED
    }

    pub(crate) fn withdrawn(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == WITHDRAWN
    }

    fn seq(&self) -> u64 {
        self.0.seq.load(Ordering::Acquire)
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
    next_seq: u64,
    /// Registered launches that have neither taken a slot nor been withdrawn or given up; the lowest
    /// goes next.
    pending: BTreeSet<u64>,
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

    /// Gives the ticket its place in line and runs `queue` (which hands the launch to the launcher
    /// threads) under the same lock, so that the queue's order is the line's order.
    pub fn register<T>(&self, ticket: &LaunchTicket, queue: impl FnOnce() -> T) -> T {
        let mut state = crate::lock(&self.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        ticket.0.seq.store(seq, Ordering::Release);
        state.pending.insert(seq);
        queue()
    }

    /// Waits (blocking the calling launcher thread) until it is the ticket's turn and a slot is free, then
    /// claims the ticket. Returns at once when the ticket was withdrawn or the slots closed.
    pub fn acquire(self: &Arc<Self>, ticket: &LaunchTicket) -> Result<SlotPermit, NoSlot> {
        let seq = ticket.seq();
        let mut state = crate::lock(&self.state);
        let result = loop {
            if ticket.withdrawn() {
                break Err(NoSlot::Withdrawn);
            }
            if state.closed {
                break Err(NoSlot::Closed);
            }
            let free = state.limit.map_or(true, |limit| state.running < limit);
            let turn = seq == NO_SEQ || state.pending.first().map_or(true, |&first| first == seq);
            if free && turn {
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
        state.pending.remove(&seq);
        drop(state);
        // The next in line may go now.
        self.changed.notify_all();
        result
    }

    /// Withdraws a launch that has not taken its slot; `false` once it has (it is starting or started).
    pub fn withdraw(&self, ticket: &LaunchTicket) -> bool {
        if !ticket.set(WITHDRAWN) {
            return ticket.withdrawn();
        }
        self.forget(ticket);
        true
    }

    /// Takes a launch out of line (withdrawn, or failed before it reached its slot), so that the ones
    /// behind it do not wait for it.
    pub fn forget(&self, ticket: &LaunchTicket) {
        // Under the lock: a launcher between its check and its wait cannot miss this.
        crate::lock(&self.state).pending.remove(&ticket.seq());
        self.changed.notify_all();
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
        let wake = !state.pending.is_empty();
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

    fn registered(slots: &Slots) -> LaunchTicket {
        let ticket = LaunchTicket::new();
        slots.register(&ticket, || ());
        ticket
    }

    #[test]
    fn launches_take_slots_in_registration_order() {
        let slots = Arc::new(Slots::default());
        slots.set_limit(Some(1));
        let first = slots.acquire(&registered(&slots)).expect("free slot");
        let (early, late) = (registered(&slots), registered(&slots));
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |ticket: LaunchTicket, name: &'static str| {
            let (slots, order) = (slots.clone(), order.clone());
            std::thread::spawn(move || {
                let permit = slots.acquire(&ticket).expect("slot");
                crate::lock(&order).push(name);
                std::thread::sleep(Duration::from_millis(20));
                drop(permit);
            })
        };
        // The later one reaches its slot first; the earlier one still goes first.
        let b = spawn(late.clone(), "late");
        std::thread::sleep(Duration::from_millis(20));
        let a = spawn(early.clone(), "early");
        assert!(!early.claimed() && !late.claimed());
        drop(first);
        a.join().expect("early");
        b.join().expect("late");
        assert_eq!(*crate::lock(&order), ["early", "late"]);
        assert_eq!(slots.running(), 0);
    }

    #[test]
    fn a_launch_waits_for_its_turn_even_with_a_free_slot_until_the_one_before_is_forgotten() {
        let slots = Arc::new(Slots::default());
        let before = registered(&slots);
        let after = registered(&slots);
        let s = slots.clone();
        let waiter = std::thread::spawn(move || s.acquire(&after).map(drop));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!waiter.is_finished(), "went before its turn");
        // The one before failed before it reached its slot.
        slots.forget(&before);
        assert_eq!(waiter.join().expect("join"), Ok(()));
    }

    #[test]
    fn a_waiting_launch_can_be_withdrawn_but_not_a_claimed_one() {
        let slots = Arc::new(Slots::default());
        slots.set_limit(Some(1));
        let claimed = registered(&slots);
        let permit = slots.acquire(&claimed).expect("free slot");
        assert!(claimed.claimed());
        assert!(
            !slots.withdraw(&claimed),
            "a started launch cannot be withdrawn"
        );

        let waiting = registered(&slots);
        let behind = registered(&slots);
        let (s1, w1) = (slots.clone(), waiting.clone());
        let t1 = std::thread::spawn(move || s1.acquire(&w1).map(drop));
        let (s2, b2) = (slots.clone(), behind.clone());
        let t2 = std::thread::spawn(move || s2.acquire(&b2).map(|_| ()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(slots.withdraw(&waiting));
        assert!(
            slots.withdraw(&waiting),
            "withdrawing twice is still withdrawn"
        );
        assert_eq!(t1.join().expect("join"), Err(NoSlot::Withdrawn));
        // The one behind it goes once the slot frees.
        drop(permit);
        assert_eq!(t2.join().expect("join"), Ok(()));
        assert_eq!(slots.running(), 0);
        wait_until(|| crate::lock(&slots.state).pending.is_empty());
    }

    #[test]
    fn closing_releases_every_waiter_and_refuses_later_launches() {
        let slots = Arc::new(Slots::default());
        slots.set_limit(Some(0));
        let s = slots.clone();
        let ticket = registered(&slots);
        let waiter = std::thread::spawn(move || s.acquire(&ticket).map(drop));
        std::thread::sleep(Duration::from_millis(20));
        slots.close();
        assert_eq!(waiter.join().expect("join"), Err(NoSlot::Closed));
        assert_eq!(
            slots.acquire(&registered(&slots)).map(drop),
            Err(NoSlot::Closed)
        );
    }

    #[test]
    fn without_a_limit_every_launch_goes_at_once() {
        let slots = Arc::new(Slots::default());
        let permits: Vec<_> = (0..100)
            .map(|_| slots.acquire(&registered(&slots)).expect("slot"))
            .collect();
        assert_eq!(slots.running(), 100);
        drop(permits);
        assert_eq!(slots.running(), 0);
    }
}
