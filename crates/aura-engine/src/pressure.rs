//! The pressure responder's choices, as pure functions: which running job to stop when memory is
//! critical, and how much a stopped job asks for when it is requeued.
//!
//! Ranking of victims (the first difference decides):
//! 1. **Lowest priority** first: the studio said what matters least.
//! 2. **Furthest over its reservation** (current memory minus the memory admission reserved for it): the
//!    job that broke its promise, and the one whose stop frees the most unplanned memory.
//! 3. **Most recently started**: the least work is lost.
//!
//! Jobs already stopping are never chosen (their memory is on its way back).

use aura_model::{ByteSize, MemoryRequest, RequestSource};
use std::cmp::Reverse;

/// A running job as the responder sees it.
pub use aura_model::events::Candidate;

/// The victim by the ranking above, or `None` when nothing runs.
pub fn choose_victim(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().min_by_key(|c| {
        (
            c.priority,
            Reverse(c.excess_bytes()),
            Reverse(c.started_at_ms),
            c.id,
        )
    })
}

/// The memory request of a requeued victim: max(previous request, peak) × `growth`, capped by the job's
/// own hard limit (more is useless) and by what the host can ever reserve (more would never start).
pub fn grown_request(
    previous: u64,
    peak: Option<u64>,
    growth: f64,
    limit: Option<ByteSize>,
    capacity: u64,
) -> MemoryRequest {
    let peak = peak.unwrap_or(0);
    let grown = (previous.max(peak) as f64 * growth) as u64;
    let mut bytes = grown.min(capacity.max(previous));
    if let Some(limit) = limit {
        bytes = bytes.min(limit.bytes().max(previous));
    }
    MemoryRequest {
        bytes: ByteSize(bytes),
        source: RequestSource::Pressure {
            previous_bytes: previous,
            peak_bytes: peak,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aura_model::JobId;

    fn c(id: i64, priority: i32, started: i64, memory: u64, reserved: u64) -> Candidate {
        Candidate {
            id: JobId(id),
            priority,
            started_at_ms: started,
            memory_bytes: Some(memory),
            reserved_bytes: reserved,
        }
    }

    #[test]
    fn ranking_is_priority_then_excess_then_recency() {
        const G: u64 = 1 << 30;
        assert_eq!(choose_victim(&[]), None);
        // Lower priority loses even when the other is further over its reservation.
        let v = [c(1, 5, 0, 8 * G, G), c(2, 0, 0, G, G)];
        assert_eq!(choose_victim(&v).map(|c| c.id), Some(JobId(2)));
        // Same priority: the one furthest over its reservation.
        let v = [
            c(1, 0, 0, 3 * G, 2 * G),
            c(2, 0, 10, 2 * G, 2 * G),
            c(3, 0, 5, 4 * G, G),
        ];
        assert_eq!(choose_victim(&v).map(|c| c.id), Some(JobId(3)));
        // Same priority, nobody over: the most recently started.
        let v = [
            c(1, 0, 100, G, 2 * G),
            c(2, 0, 300, G, 2 * G),
            c(3, 0, 200, G, 2 * G),
        ];
        assert_eq!(choose_victim(&v).map(|c| c.id), Some(JobId(2)));
    }

    #[test]
    fn a_victim_asks_for_more_within_reason() {
        const M: u64 = 1 << 20;
        let r = grown_request(100 * M, Some(300 * M), 1.5, None, 10_000 * M);
        assert_eq!(r.bytes.bytes(), 450 * M);
        assert_eq!(
            r.source,
            RequestSource::Pressure {
                previous_bytes: 100 * M,
                peak_bytes: 300 * M
            }
        );
        assert_eq!(
            grown_request(400 * M, Some(300 * M), 1.5, None, 10_000 * M)
                .bytes
                .bytes(),
            600 * M
        );
        assert_eq!(
            grown_request(400 * M, None, 1.5, None, 500 * M)
                .bytes
                .bytes(),
            500 * M,
            "capped by capacity"
        );
        assert_eq!(
            grown_request(400 * M, None, 1.5, Some(ByteSize(450 * M)), 10_000 * M)
                .bytes
                .bytes(),
            450 * M,
            "capped by the job's own limit"
        );
    }
}
