//! The PostgreSQL store's change feed: one listening session per store (outside the pool),
//! on a thread of its own, that fans what `LISTEN ca_changes` delivers out to this process's
//! subscriptions ([`super::feed::Hub`]). The writes send `NOTIFY` in their own transaction
//! ([`notify`]), so PostgreSQL delivers a change at commit, and never one that rolled back.
//!
//! The session reconnects by itself (backoff 0.1 s doubling to 5 s) and sends
//! [`Change::Resync`] after every reconnection: what was committed meanwhile was not told.
//! The thread ends when the store is dropped.

use super::feed::{Change, Hub, Subscription};
use crate::error::{Error, Result};
use r2d2_postgres::postgres::{self, fallible_iterator::FallibleIterator, NoTls};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// The notification channel every node listens on.
pub(super) const CHANNEL: &str = "ca_changes";

/// How long the first subscription waits for the listening session.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Send `change` at the commit of `tx` (if it commits).
pub(super) fn notify(
    tx: &mut impl super::pg_store::Db,
    origin: &str,
    change: &Change,
) -> Result<()> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &change.encode(origin)],
    )
    .map_err(|e| Error::store("notify", e))?;
    Ok(())
}

#[derive(Default)]
struct State {
    started: bool,
    /// The session is listening now.
    listening: bool,
}

/// The feed of one store: its subscriptions and its listening thread.
pub(super) struct Listener {
    config: postgres::Config,
    /// Names this store handle in the payloads it sends (random), so that its own changes
    /// can be told apart from other nodes'.
    origin: String,
    hub: Arc<Hub>,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    pub(super) fn new(config: postgres::Config) -> Self {
        use rand::RngCore;
        // A collision would only make two handles skip each other's changes in
        // `subscribe_remote`: 64 random bits per store handle.
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Listener {
            config,
            origin: hex::encode(id),
            hub: Arc::new(Hub::default()),
            state: Arc::default(),
        }
    }

    /// The origin written into this handle's payloads.
    pub(super) fn origin(&self) -> &str {
        &self.origin
    }

    /// A subscription; the first one starts the listening thread and waits (up to
    /// [`FIRST_CONNECT_WAIT`]) until it listens.
    pub(super) fn subscribe(&self, remote_only: bool) -> Result<Subscription> {
        let sub = self.hub.subscribe(remote_only);
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !st.started {
            let config = self.config.clone();
            let origin = self.origin.clone();
            let hub = Arc::downgrade(&self.hub);
            let state = Arc::downgrade(&self.state);
            std::thread::Builder::new()
                .name("pg-listen".into())
                .spawn(move || run(config, origin, hub, state))
                .map_err(|e| Error::Io {
                    path: "(thread pg-listen)".into(),
                    source: e,
                })?;
            st.started = true;
        }
        let (st, _) = cv
            .wait_timeout_while(st, FIRST_CONNECT_WAIT, |s| !s.listening)
            .unwrap_or_else(|p| p.into_inner());
        if !st.listening {
            tracing::warn!(
                "the database change feed is not connected yet; followers resynchronise once it is"
            );
        }
        Ok(sub)
    }
}

fn set_listening(state: &Weak<(Mutex<State>, Condvar)>, on: bool) -> bool {
    let Some(state) = state.upgrade() else {
        return false;
    };
    let (lock, cv) = &*state;
    lock.lock().unwrap_or_else(|p| p.into_inner()).listening = on;
    cv.notify_all();
    true
}

/// The listening thread: connect, `LISTEN`, relay; reconnect on any error; end when the store
/// (its hub) is gone.
fn run(
    config: postgres::Config,
    origin: String,
    hub: Weak<Hub>,
    state: Weak<(Mutex<State>, Condvar)>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut missed = false;
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        let session = config.connect(NoTls).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(c)
        });
        let mut client = match session {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "database change feed: cannot listen");
                missed = true;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if !set_listening(&state, true) {
            return;
        }
        if missed {
            match hub.upgrade() {
                Some(h) => h.publish(&Change::Resync, false),
                None => return,
            }
            tracing::info!("database change feed listening again");
        }
        missed = true;
        loop {
            let next = {
                let mut notes = client.notifications();
                let mut it = notes.timeout_iter(Duration::from_millis(500));
                it.next()
            };
            let Some(h) = hub.upgrade() else { return };
            match next {
                Ok(Some(n)) => {
                    let (from, change) = Change::decode(n.payload());
                    h.publish(&change, from == Some(origin.as_str()));
                }
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "database change feed lost its session");
                    break;
                }
            }
        }
        set_listening(&state, false);
    }
}
