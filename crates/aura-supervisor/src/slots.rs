//! The running-tree limit and the launches waiting for it: a launch takes a slot right before the clone,
//! after everything else is prepared, and its tree gives the slot back the moment it is known gone (on the
//! thread that reaped it, before the owner even hears of the end). A prepared launch that finds no slot
//! (or whose turn has not come) is *parked* here, and the launcher thread that frees a slot — having just
//! reaped its own tree — starts it itself. So an owner that hands over launches ahead of a free slot
//! (*standbys*) has them started with no round trip through the owner and no other thread woken.
//!
//! Slots go strictly in the order launches were registered (`Supervisor::launch` registers and queues a
//! launch in one step): a launch whose turn it is not yet is parked even if a slot is free, and goes when
//! the ones before it have started, failed or been withdrawn. A launch can be withdrawn until it takes
//! its slot ([`LaunchTicket`]); a parked one is then discarded by the next launcher thread that looks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

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
    /// A fresh ticket, not yet in line: [`Supervisor::launch`](crate::Supervisor::launch) registers it.
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

thread_local! {
    /// Whether this thread starts parked launches itself after every change it makes (the launcher
    /// threads): other threads that free a slot or change the line ask one to look (`Slots::on_ready`).
    static STARTS_JOBS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one that runs `Slots::take_next` after every change it makes.
pub(crate) fn starts_jobs_here() {
    STARTS_JOBS.with(|s| s.set(true));
}

/// The running slots and the line of launches waiting for one. `P` is a parked launch: whatever the
/// launcher keeps to start it later (this module runs nothing itself, it hands parked launches back).
pub(crate) struct Slots<P> {
    state: Mutex<State<P>>,
    /// Asks a launcher thread to run what became ready (set once, by the supervisor).
    ready: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl<P> Default for Slots<P> {
    fn default() -> Self {
        Slots {
            state: Mutex::new(State {
                limit: None,
                running: 0,
                closed: false,
                next_seq: 0,
                pending: BTreeSet::new(),
                parked: BTreeMap::new(),
            }),
            ready: std::sync::OnceLock::new(),
        }
    }
}

impl<P> std::fmt::Debug for Slots<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slots")
    }
}

struct State<P> {
    /// `None`: no limit.
    limit: Option<usize>,
    running: usize,
    closed: bool,
    next_seq: u64,
    /// Registered launches that have neither taken a slot nor been withdrawn or given up; the lowest
    /// goes next.
    pending: BTreeSet<u64>,
    /// Prepared launches waiting for their turn and a free slot, by place in line (a withdrawn one
    /// stays here, out of `pending`, until a launcher thread discards it).
    parked: BTreeMap<u64, (LaunchTicket, P)>,
}

impl<P: Send + 'static> State<P> {
    fn free(&self) -> bool {
        self.limit.map_or(true, |limit| self.running < limit)
    }

    fn turn(&self, seq: u64) -> bool {
        seq == NO_SEQ || self.pending.first().map_or(true, |&first| first == seq)
    }

    /// The parked launch to run next, if any: one withdrawn (or, once closed, any: run to be discarded),
    /// else the head of the line when a slot is free.
    fn next(&self) -> Option<u64> {
        let gone = self
            .parked
            .keys()
            .find(|seq| self.closed || !self.pending.contains(seq));
        let head = || {
            self.pending
                .first()
                .filter(|head| self.free() && self.parked.contains_key(head))
        };
        gone.or_else(head).copied()
    }

    /// Claims the ticket's slot; `Withdrawn` when it was withdrawn meanwhile.
    fn claim(
        &mut self,
        slots: &Arc<Slots<P>>,
        ticket: &LaunchTicket,
    ) -> Result<SlotPermit, NoSlot> {
        self.pending.remove(&ticket.seq());
        if ticket.set(CLAIMED) {
            self.running += 1;
            Ok(SlotPermit {
                slots: slots.clone(),
            })
        } else {
            Err(NoSlot::Withdrawn)
        }
    }
}

/// A taken slot; dropping it gives the slot back.
pub(crate) struct SlotPermit {
    slots: Arc<dyn GiveBack>,
}

impl std::fmt::Debug for SlotPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotPermit")
    }
}

/// What a permit returns its slot to (its `Slots`, whatever their parked launches are).
trait GiveBack: Send + Sync {
    fn give_back(&self);
}

impl<P: Send + 'static> GiveBack for Slots<P> {
    fn give_back(&self) {
        self.change(|state| state.running = state.running.saturating_sub(1));
    }
}

impl<P: Send + 'static> Slots<P> {
    /// How a thread that cannot start jobs asks a launcher thread to run what became ready.
    pub fn on_ready(&self, ready: impl Fn() + Send + Sync + 'static) {
        let _ = self.ready.set(Box::new(ready));
    }

    pub fn set_limit(&self, limit: Option<usize>) {
        self.change(|state| state.limit = limit);
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

    /// A prepared launch asks for its slot: `Some` with the slot (or why there is none) when it is the
    /// ticket's turn and a slot is free (or it was withdrawn, or the slots closed) — the caller starts
    /// it now —, else `None`: it is parked, and the thread that frees its slot or makes it its turn
    /// starts it (`take_next`).
    pub fn offer(
        self: &Arc<Self>,
        ticket: &LaunchTicket,
        start: P,
    ) -> Option<(P, Result<SlotPermit, NoSlot>)> {
        let mut state = crate::lock(&self.state);
        if ticket.withdrawn() {
            state.pending.remove(&ticket.seq());
            return Some((start, Err(NoSlot::Withdrawn)));
        }
        if state.closed {
            state.pending.remove(&ticket.seq());
            return Some((start, Err(NoSlot::Closed)));
        }
        let seq = ticket.seq();
        if state.free() && state.turn(seq) {
            let slot = state.claim(self, ticket);
            return Some((start, slot));
        }
        state.parked.insert(seq, (ticket.clone(), start));
        None
    }

    /// The next parked launch to run: one withdrawn (run with `Withdrawn`, to discard it), every one once
    /// closed, else the head of the line when a slot is free. Called by launcher threads after every
    /// change, and when asked (`on_ready`).
    pub fn take_next(self: &Arc<Self>) -> Option<(P, Result<SlotPermit, NoSlot>)> {
        let mut state = crate::lock(&self.state);
        let seq = state.next()?;
        let (ticket, start) = state.parked.remove(&seq)?;
        let slot = if state.closed && !ticket.withdrawn() {
            state.pending.remove(&seq);
            Err(NoSlot::Closed)
        } else if !state.pending.contains(&seq) {
            Err(NoSlot::Withdrawn)
        } else {
            state.claim(self, &ticket)
        };
        Some((start, slot))
    }

    /// Whether `take_next` has something to run now.
    pub fn ready(&self) -> bool {
        crate::lock(&self.state).next().is_some()
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
        self.change(|state| {
            state.pending.remove(&ticket.seq());
        });
    }

    /// Every parked launch and every later one gets `NoSlot::Closed` (shutdown).
    pub fn close(&self) {
        self.change(|state| state.closed = true);
    }

    /// A change that may let a parked launch go: a launcher thread looks by itself afterwards; any other
    /// thread asks one to (outside the lock).
    fn change(&self, f: impl FnOnce(&mut State<P>)) {
        let parked = {
            let mut state = crate::lock(&self.state);
            f(&mut state);
            !state.parked.is_empty()
        };
        if parked && !STARTS_JOBS.with(std::cell::Cell::get) {
            if let Some(ready) = self.ready.get() {
                ready();
            }
        }
    }

    #[cfg(test)]
    pub fn running(&self) -> usize {
        crate::lock(&self.state).running
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    type Started = mpsc::Receiver<Result<SlotPermit, NoSlot>>;
    /// The tests' parked launch: it only reports what it got.
    type Parked = Box<dyn FnOnce(Result<SlotPermit, NoSlot>) + Send>;
    type Slots = super::Slots<Parked>;

    /// Slots whose "ask a launcher to look" hook counts its calls.
    fn slots(limit: Option<usize>) -> (Arc<Slots>, Arc<AtomicUsize>) {
        let slots = Arc::new(Slots::default());
        slots.set_limit(limit);
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        slots.on_ready(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        (slots, asked)
    }

    fn registered(slots: &Slots) -> LaunchTicket {
        let ticket = LaunchTicket::new();
        slots.register(&ticket, || ());
        ticket
    }

    /// A parked start that hands its slot (or why there is none) to the test.
    fn start() -> (Parked, Started) {
        let (tx, rx) = mpsc::channel();
        let start: Parked = Box::new(move |slot| {
            let _ = tx.send(slot);
        });
        (start, rx)
    }

    /// Offers a launch: `Some` with what it got when it went at once, `None` when parked (its receiver
    /// then tells what it gets later).
    fn offer(
        slots: &Arc<Slots>,
        ticket: &LaunchTicket,
    ) -> (Option<Result<SlotPermit, NoSlot>>, Started) {
        let (parked, rx) = start();
        let now = slots.offer(ticket, parked).map(|(start, slot)| {
            start(slot);
            rx.try_recv().expect("ran")
        });
        (now, rx)
    }

    /// Offers a launch that must go at once; its slot.
    fn offer_now(slots: &Arc<Slots>, ticket: &LaunchTicket) -> SlotPermit {
        offer(slots, ticket)
            .0
            .expect("went at once")
            .expect("with a slot")
    }

    /// Runs what is ready, as a launcher thread does after a change.
    fn run_ready(slots: &Arc<Slots>) -> usize {
        let mut ran = 0;
        while let Some((start, slot)) = slots.take_next() {
            start(slot);
            ran += 1;
        }
        ran
    }

    #[test]
    fn launches_take_slots_in_registration_order() {
        let (slots, asked) = slots(Some(1));
        let first = offer_now(&slots, &registered(&slots));
        let (early, late) = (registered(&slots), registered(&slots));
        // The later one is prepared first; both wait for the slot.
        let (now, late_rx) = offer(&slots, &late);
        assert!(now.is_none(), "parked");
        let (now, early_rx) = offer(&slots, &early);
        assert!(now.is_none(), "parked");
        assert_eq!(run_ready(&slots), 0, "no slot free");
        assert!(!early.claimed() && !late.claimed());
        // Freed on a thread that does not start jobs: a launcher is asked to look.
        drop(first);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(run_ready(&slots), 1, "one slot, one start");
        let early_permit = early_rx
            .try_recv()
            .expect("early went first")
            .expect("slot");
        assert!(late_rx.try_recv().is_err(), "late still waits");
        drop(early_permit);
        assert_eq!(run_ready(&slots), 1);
        assert!(late_rx.try_recv().expect("late went").is_ok());
        assert_eq!(slots.running(), 0);
    }

    #[test]
    fn a_launch_waits_for_its_turn_even_with_a_free_slot_until_the_one_before_is_forgotten() {
        let (slots, asked) = slots(None);
        let before = registered(&slots);
        let after = registered(&slots);
        let (now, rx) = offer(&slots, &after);
        assert!(now.is_none(), "went before its turn");
        assert!(!slots.ready());
        assert_eq!(run_ready(&slots), 0);
        // The one before failed before it reached its slot.
        slots.forget(&before);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(slots.ready());
        assert_eq!(run_ready(&slots), 1);
        assert!(rx.try_recv().expect("went").is_ok());
    }

    #[test]
    fn a_parked_launch_can_be_withdrawn_but_not_a_claimed_one() {
        let (slots, _) = slots(Some(1));
        let claimed = registered(&slots);
        let permit = offer_now(&slots, &claimed);
        assert!(claimed.claimed());
        assert!(
            !slots.withdraw(&claimed),
            "a started launch cannot be withdrawn"
        );

        let waiting = registered(&slots);
        let behind = registered(&slots);
        let (_, waiting_rx) = offer(&slots, &waiting);
        let (_, behind_rx) = offer(&slots, &behind);
        assert!(slots.withdraw(&waiting));
        assert!(
            slots.withdraw(&waiting),
            "withdrawing twice is still withdrawn"
        );
        // Discarded by the next launcher thread that looks, slot or not.
        assert_eq!(run_ready(&slots), 1);
        assert!(matches!(waiting_rx.try_recv(), Ok(Err(NoSlot::Withdrawn))));
        // The one behind it goes once the slot frees.
        assert!(behind_rx.try_recv().is_err());
        drop(permit);
        assert_eq!(run_ready(&slots), 1);
        assert!(behind_rx.try_recv().expect("went").is_ok());
        assert_eq!(slots.running(), 0);
        assert!(crate::lock(&slots.state).pending.is_empty());
        // Withdrawn before it was even prepared: offered, it gets `Withdrawn` at once.
        let early = registered(&slots);
        assert!(slots.withdraw(&early));
        assert!(matches!(
            offer(&slots, &early).0,
            Some(Err(NoSlot::Withdrawn))
        ));
    }

    #[test]
    fn closing_gives_up_every_parked_launch_and_refuses_later_ones() {
        let (slots, asked) = slots(Some(0));
        let (now, rx) = offer(&slots, &registered(&slots));
        assert!(now.is_none());
        slots.close();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(run_ready(&slots), 1);
        assert!(matches!(rx.try_recv(), Ok(Err(NoSlot::Closed))));
        assert!(matches!(
            offer(&slots, &registered(&slots)).0,
            Some(Err(NoSlot::Closed))
        ));
    }

    #[test]
    fn without_a_limit_every_launch_goes_at_once() {
        let (slots, _) = slots(None);
        let permits: Vec<_> = (0..100)
            .map(|_| offer_now(&slots, &registered(&slots)))
            .collect();
        assert_eq!(slots.running(), 100);
        drop(permits);
        assert_eq!(slots.running(), 0);
    }

    #[test]
    fn a_thread_that_starts_jobs_is_not_asked_to_look() {
        let (slots, asked) = slots(Some(1));
        let permit = offer_now(&slots, &registered(&slots));
        let (now, _rx) = offer(&slots, &registered(&slots));
        assert!(now.is_none());
        let s = slots.clone();
        std::thread::spawn(move || {
            starts_jobs_here();
            drop(permit);
            assert_eq!(run_ready(&s), 1);
        })
        .join()
        .expect("join");
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }
}
