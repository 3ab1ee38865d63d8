//! A dropped `Secret` gives its memory back zeroed, so a later heap dump or a reuse of the allocation
//! never finds the value. Checked by an allocator that looks at one watched block as it is freed (its
//! own test binary, so that no other test runs under it).

use aura_model::Secret;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};

const VALUE: &str = "sk-test-4f1c9e-never-in-freed-memory";

const NOT_FREED: u8 = 0;
const FREED_ZEROED: u8 = 1;
const FREED_HOLDING_VALUE: u8 = 2;
const FREED_OTHER: u8 = 3;

/// Address of the one block whose contents at `dealloc` are recorded; 0 when none is.
static WATCHED: AtomicUsize = AtomicUsize::new(0);
static SEEN: AtomicU8 = AtomicU8::new(NOT_FREED);

struct Watching;

// SAFETY: every call is passed on to `System` unchanged; `dealloc` only reads the block first.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Only the watched block, and only when it is exactly the value's size, so that every byte read
        // was written.
        if WATCHED.load(SeqCst) == ptr as usize && layout.size() == VALUE.len() {
            // SAFETY: the block is still allocated (it is freed below) and `layout.size()` bytes long.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            let seen = if block == VALUE.as_bytes() {
                FREED_HOLDING_VALUE
            } else if block.iter().all(|&b| b == 0) {
                FREED_ZEROED
            } else {
                FREED_OTHER
            };
            SEEN.store(seen, SeqCst);
            WATCHED.store(0, SeqCst);
        }
        // SAFETY: the caller's contract is `System.dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// What the block at `block` held when `drop` freed it.
fn what_is_freed(block: *const u8, drop: impl FnOnce()) -> u8 {
    SEEN.store(NOT_FREED, SeqCst);
    WATCHED.store(block as usize, SeqCst);
    drop();
    WATCHED.store(0, SeqCst);
    SEEN.load(SeqCst)
}

#[test]
fn a_dropped_secret_leaves_no_copy_of_its_value() {
    // The watch itself works: a plain string gives its value back as it was.
    let plain = String::from(VALUE);
    let at = plain.as_ptr();
    assert_eq!(what_is_freed(at, || drop(plain)), FREED_HOLDING_VALUE);

    let secret = Secret::new(String::from(VALUE));
    let copy = secret.clone();
    let at = secret.expose().as_ptr();
    assert_eq!(what_is_freed(at, || drop(secret)), FREED_ZEROED);
    // A clone is its own allocation, zeroed in turn.
    assert_eq!(copy.expose(), VALUE);
    let at = copy.expose().as_ptr();
    assert_eq!(what_is_freed(at, || drop(copy)), FREED_ZEROED);
}
