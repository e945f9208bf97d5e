//! The per-thread bookkeeping behind [`super::Durability::begin_deferred`] and
//! [`super::Durability::end_deferred`], shared by the stores: which deferrals are open on this
//! thread, for which store (tests open several per process), how deep, and whether a write
//! made inside one still has to be made durable at its end.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// A deferral open on this thread for one store.
struct Deferral {
    store: u64,
    depth: u32,
    /// A write was made that the deferral's end must make durable.
    pending: bool,
}

thread_local! {
    static DEFERRALS: RefCell<Vec<Deferral>> = const { RefCell::new(Vec::new()) };
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// A new store's identity in the deferral list.
pub(super) fn store_id() -> u64 {
    NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed)
}

/// Open a deferral (nestable) for `store` on this thread.
pub(super) fn begin(store: u64) {
    DEFERRALS.with(|d| {
        let mut d = d.borrow_mut();
        match d.iter_mut().find(|x| x.store == store) {
            Some(x) => x.depth += 1,
            None => d.push(Deferral {
                store,
                depth: 1,
                pending: false,
            }),
        }
    });
}

/// Close one; `true` when it was the outermost and a write is pending (the caller makes it
/// durable now).
pub(super) fn end(store: u64) -> bool {
    DEFERRALS.with(|d| {
        let mut d = d.borrow_mut();
        let Some(i) = d.iter().position(|x| x.store == store) else {
            return false;
        };
        d[i].depth -= 1;
        if d[i].depth > 0 {
            return false;
        }
        d.swap_remove(i).pending
    })
}

/// Whether this thread defers for `store`; if so, a write is now pending.
pub(super) fn note_write(store: u64) -> bool {
    DEFERRALS.with(
        |d| match d.borrow_mut().iter_mut().find(|x| x.store == store) {
            Some(x) => {
                x.pending = true;
                true
            }
            None => false,
        },
    )
}

/// Every write this thread deferred for `store` so far is durable now (the PostgreSQL
/// store's audit group or flush says so; sled flushes at the deferral's end).
#[cfg(feature = "postgres")]
pub(super) fn writes_durable(store: u64) {
    DEFERRALS.with(|d| {
        if let Some(x) = d.borrow_mut().iter_mut().find(|x| x.store == store) {
            x.pending = false;
        }
    });
}
