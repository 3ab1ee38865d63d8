//! The sources of live event streams: events as the store commits them (`Store::subscribe`, replayed from
//! the log for a client that reconnects), and running jobs' progress, sampled every
//! `media.progress_interval` by one task for every subscriber — only while someone listens.

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
/// progress goes out when it has new reports since the last round.
pub(crate) async fn progress_feed(shared: Arc<Shared>) {
    let mut closing = shared.closing.subscribe();
    let mut tick = tokio::time::interval(shared.config.media.progress_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: HashMap<JobId, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        if shared.progress_events.receiver_count() == 0 {
            sent.clear();
            continue;
        }
        let mut now = HashMap::new();
        for (job_id, progress) in shared.progress_now() {
            now.insert(job_id, progress.reports);
            if sent.get(&job_id) == Some(&progress.reports) {
                continue;
            }
            let event = ProgressEvent::encode(&ProgressUpdate { job_id, progress });
            // Nobody left listening: the next round sees it.
            let _ = shared.progress_events.send(Arc::new(event));
        }
        sent = now;
    }
}
