//! Committed events across the fleet: the `Publisher` (the cursor of what was published, shared by the
//! writer and the listener) and the listener task (`LISTEN aura_events, aura_work` on its own
//! connection, reconnecting with backoff).

use super::reads::{engine_events_after, job_events_after};
use super::{connect_raw, PgShared};
use crate::error::StoreError;
use crate::writer::Published;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Client};

/// Events read per query while catching up.
const PAGE: i64 = 1000;

/// Backoff between reconnects: doubling from the first to the last.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Publishes committed events, each once, in sequence order per log. Events commit in sequence order
/// (every transaction appending them holds `EVENTS_LOCK`), so reading `seq > cursor` after a commit
/// never skips one.
pub(crate) struct Publisher {
    /// The newest job and engine event published (or passed over while nobody listened).
    cursor: tokio::sync::Mutex<(i64, i64)>,
    pub published: Published,
}

impl Publisher {
    pub fn new(published: Published, start: (i64, i64)) -> Publisher {
        Publisher {
            cursor: tokio::sync::Mutex::new(start),
            published,
        }
    }

    /// Reads what was committed past the cursor, on `client`, and publishes it. `newest`: the newest
    /// committed event numbers, when the notifications since the last call said them all.
    pub async fn catch_up(
        &self,
        client: &Client,
        newest: Option<(i64, i64)>,
    ) -> Result<(), StoreError> {
        let mut cursor = self.cursor.lock().await;
        if !self.listening() {
            // Nobody to tell: skip to the newest (a later subscriber must not get these) without
            // reading them.
            let (job, engine) = match newest {
                Some(newest) => newest,
                None => super::reads::latest_seqs(client).await?,
            };
            cursor.0 = cursor.0.max(job);
            cursor.1 = cursor.1.max(engine);
            return Ok(());
        }
        loop {
            let page = job_events_after(client, None, cursor.0, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for event in page {
                cursor.0 = event.seq;
                // No receiver left: nobody to tell.
                let _ = self.published.send(Arc::new(event));
            }
            if !full {
                break;
            }
        }
        loop {
            let page = engine_events_after(client, cursor.1, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for event in page {
                cursor.1 = event.seq;
                let _ = self.published.send(Arc::new(event));
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Moves the cursor past events nobody listened for (this writer's own, numbered up to these):
    /// whoever subscribes later must not get them. Whatever committed before them (lower numbers) did
    /// so before this call, so nobody subscribed then either.
    pub async fn pass(&self, job: i64, engine: i64) {
        let mut cursor = self.cursor.lock().await;
        cursor.0 = cursor.0.max(job);
        cursor.1 = cursor.1.max(engine);
    }

    pub fn listening(&self) -> bool {
        self.published.receiver_count() > 0
    }
}

impl PgShared {
    /// Publishes another node's progress updates to this node's subscribers (if any); a note that does
    /// not parse, or this node's own, is dropped.
    fn heard_progress(&self, payload: &str) {
        if self.progress.receiver_count() == 0 {
            return;
        }
        match serde_json::from_str::<super::fleet_ops::ProgressNote>(payload) {
            Ok(note) if note.node != self.node.id => {
                for update in note.updates {
                    let _ = self.progress.send(Arc::new(update));
                }
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "an unreadable progress notification"),
        }
    }
}

/// What the `aura_events` notifications since the last look said: the newest event numbers, unless
/// one came without them (a rescue's, or an older node's).
#[derive(Default)]
struct Heard {
    newest: (i64, i64),
    unknown: bool,
}

impl Heard {
    fn add(&mut self, payload: &str) {
        let parsed = payload.split_once(',').and_then(|(job, engine)| {
            Some((job.parse::<i64>().ok()?, engine.parse::<i64>().ok()?))
        });
        match parsed {
            Some((job, engine)) => {
                self.newest.0 = self.newest.0.max(job);
                self.newest.1 = self.newest.1.max(engine);
            }
            None => self.unknown = true,
        }
    }

    /// The newest numbers heard, if every notification said them; the record starts over.
    fn take(&mut self) -> Option<(i64, i64)> {
        let heard = std::mem::take(self);
        (!heard.unknown).then_some(heard.newest)
    }
}

/// Listens until `stop` turns true: publishes every node's committed events on `aura_events` and wakes
/// `work` on `aura_work`; after a lost connection it reconnects with backoff, listens again, catches up
/// from the cursor, and wakes `work` once (notifications sent meanwhile are lost).
pub(crate) async fn listen(
    shared: Arc<PgShared>,
    publisher: Arc<Publisher>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = BACKOFF_FIRST;
    let mut reconnect = false;
    // A dropped sender means the store is gone: stop as for `true`.
    while !(*stop.borrow() || stop.has_changed().is_err()) {
        let (client, mut connection) =
            match connect_raw(&shared.config, shared.connect_timeout).await {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(%error, "job database listener cannot connect; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                    delay = (delay * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
        // The connection is driven here rather than in a bare task, so its notifications come out.
        let events = Arc::new(tokio::sync::Notify::new());
        let heard = Arc::new(std::sync::Mutex::new(Heard::default()));
        let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<()>();
        let driver = {
            let events = events.clone();
            let heard = heard.clone();
            let work = shared.work.clone();
            let listener = shared.clone();
            tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                            "aura_events" => {
                                heard
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .add(n.payload());
                                events.notify_one();
                            }
                            "aura_work" => work.notify_one(),
                            "aura_progress" => listener.heard_progress(n.payload()),
                            _ => {}
                        },
                        Some(Ok(_)) => {}
                        Some(Err(error)) => {
                            tracing::debug!(%error, "job database listener connection failed");
                            break;
                        }
                        None => break,
                    }
                }
                drop(ended_tx);
            })
        };
        let ready = async {
            client
                .batch_execute("LISTEN aura_events; LISTEN aura_work; LISTEN aura_progress")
                .await
                .map_err(|e| crate::error::pg_error("listening for notifications", e))?;
            publisher.catch_up(&client, None).await
        };
        match ready.await {
            Ok(()) => {
                delay = BACKOFF_FIRST;
                if reconnect {
                    shared.work.notify_one();
                }
                reconnect = true;
                loop {
                    tokio::select! {
                        () = events.notified() => {
                            let newest = heard.lock().unwrap_or_else(|p| p.into_inner()).take();
                            if let Err(error) = publisher.catch_up(&client, newest).await {
                                tracing::debug!(%error, "job database listener lost its connection");
                                break;
                            }
                        }
                        _ = &mut ended => break,
                        _ = stop.changed() => break,
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, "job database listener failed to start listening");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
        drop(client);
        driver.abort();
        let _ = driver.await;
    }
}

#[cfg(test)]
mod tests {
    use super::Heard;

    #[test]
    fn heard_keeps_the_newest_numbers_unless_one_notification_lacked_them() {
        let mut heard = Heard::default();
        heard.add("12,0");
        heard.add("10,3");
        assert_eq!(heard.take(), Some((12, 3)));
        assert_eq!(heard.take(), Some((0, 0)), "starts over");
        heard.add("14,3");
        heard.add("");
        heard.add("15,4");
        assert_eq!(heard.take(), None, "a rescue's notification says nothing");
        heard.add("x,1");
        assert_eq!(heard.take(), None);
    }
}
