//! The sources of live event streams: events as the store commits them (`Store::subscribe`, replayed from
//! the log for a client that reconnects), and running jobs' progress, sampled every
//! `media.progress_interval` by one task for every subscriber — only while someone listens, or in fleet
//! mode, where each round also goes to the other nodes (and theirs come in).

use crate::shared::Shared;
use aura_model::{CommittedEvent, JobId, ProgressEvent, ProgressUpdate};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// What one stream subscriber receives. Both buffers are shared and bounded: a subscriber that falls
/// behind gets `Lagged`, never slows anyone else.
pub struct Subscription {
    /// Every event committed from the moment of subscribing, in commit order.
    pub committed: broadcast::Receiver<Arc<CommittedEvent>>,
    /// Running jobs' progress, when it changed.
    pub progress: broadcast::Receiver<Arc<ProgressEvent>>,
    /// Becomes `true` when the daemon begins to shut down: the stream should end then.
    pub closing: watch::Receiver<bool>,
}

/// Publishes running jobs' progress until the daemon begins to shut down (`Shared::closing`). A job's
/// progress goes out when it has new reports since the last round. In fleet mode every round's updates
/// also go to the other nodes (whose subscribers this node cannot see), and theirs come in here.
pub(crate) async fn progress_feed(shared: Arc<Shared>) {
    let mut closing = shared.closing.subscribe();
    let mut tick = tokio::time::interval(shared.config.media.progress_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fleet = shared.store.fleet();
    let mut remote = fleet.as_ref().map(aura_store::Fleet::progress);
    let mut sent: HashMap<JobId, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
            update = next_remote(&mut remote) => {
                if let Some(update) = update.filter(|_| shared.progress_events.receiver_count() > 0) {
                    // Nobody left listening: dropped, as a local one would be.
                    let _ = shared.progress_events.send(Arc::new(ProgressEvent::encode(&update)));
                }
                continue;
            }
        }
        let listening = shared.progress_events.receiver_count() > 0;
        if !listening && fleet.is_none() {
            sent.clear();
            continue;
        }
        let mut now = HashMap::new();
        let mut fresh = Vec::new();
        for (job_id, progress) in shared.progress_now() {
            now.insert(job_id, progress.reports);
            if sent.get(&job_id) == Some(&progress.reports) {
                continue;
            }
            fresh.push(ProgressUpdate { job_id, progress });
        }
        sent = now;
        if listening {
            for update in &fresh {
                let _ = shared
                    .progress_events
                    .send(Arc::new(ProgressEvent::encode(update)));
            }
        }
        if let (Some(fleet), false) = (&fleet, fresh.is_empty()) {
            if let Err(error) = fleet.publish_progress(&fresh).await {
                tracing::debug!(%error, "live progress not sent to the fleet");
            }
        }
    }
}

/// The next progress update another node sent; pending forever on a single node (or once the store's
/// stream closed). A lagging receiver skips what it missed: the next round's updates replace it.
async fn next_remote(
    remote: &mut Option<tokio::sync::broadcast::Receiver<Arc<ProgressUpdate>>>,
) -> Option<Arc<ProgressUpdate>> {
    loop {
        let Some(rx) = remote.as_mut() else {
            return std::future::pending().await;
        };
        match rx.recv().await {
            Ok(update) => return Some(update),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => *remote = None,
        }
    }
}
