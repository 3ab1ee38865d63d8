//! Learned memory requests: a job that states none gets a high percentile of the recorded peaks of earlier
//! successful jobs of its `kind`, plus a margin; with too little history, a configured default.

use aura_model::{ByteSize, MemoryRequest, RequestSource};

/// How a job that states no memory request gets one: from its kind's recorded peaks, else a default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimator {
    /// 0.95 for p95.
    pub percentile: f64,
    /// 0.2 adds 20 % on top of the percentile.
    pub margin: f64,
    /// Fewer samples than this fall back to the default.
    pub min_samples: usize,
    /// The request, in bytes, when there is too little history. Default: 2 GiB.
    pub default_bytes: u64,
}

impl Default for Estimator {
    /// p95 + 20 % from at least 5 runs, else 2 GiB (the user's documents' per-job figure).
    fn default() -> Self {
        Estimator {
            percentile: 0.95,
            margin: 0.2,
            min_samples: 5,
            default_bytes: 2 << 30,
        }
    }
}

impl Estimator {
    /// The request for a job of `kind` whose earlier successful runs peaked at `peaks` (any order).
    pub fn estimate(&self, kind: &str, peaks: &[u64]) -> MemoryRequest {
        if peaks.len() < self.min_samples.max(1) {
            return MemoryRequest {
                bytes: ByteSize(self.default_bytes),
                source: RequestSource::Default,
            };
        }
        let mut sorted = peaks.to_vec();
        sorted.sort_unstable();
        // Nearest-rank percentile.
        let rank = ((self.percentile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize)
            .clamp(1, sorted.len());
        let p = sorted[rank - 1];
        let with_margin = (p as f64 * (1.0 + self.margin.max(0.0))).round() as u64;
        MemoryRequest {
            bytes: ByteSize(with_margin),
            source: RequestSource::Learned {
                kind: kind.to_owned(),
                samples: sorted.len(),
                percentile_bytes: p,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_plus_margin_or_default() {
        let e = Estimator::default();
        let default = MemoryRequest {
            bytes: ByteSize(2 << 30),
            source: RequestSource::Default,
        };
        assert_eq!(e.estimate("encode", &[1, 2, 3]), default);
        let peaks: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        let learned = e.estimate("encode", &peaks);
        let source = RequestSource::Learned {
            kind: "encode".into(),
            samples: 100,
            percentile_bytes: 95_000_000,
        };
        assert_eq!(
            learned,
            MemoryRequest {
                bytes: ByteSize(114_000_000),
                source
            }
        );
        let one_outlier: Vec<u64> = std::iter::repeat_n(100, 99).chain([10_000]).collect();
        assert_eq!(
            e.estimate("encode", &one_outlier).bytes,
            ByteSize(120),
            "p95 ignores a single outlier"
        );
    }

    #[test]
    fn exactly_min_samples_is_enough_history() {
        let e = Estimator::default();
        // (samples, learned?)
        for (n, learned) in [(0, false), (4, false), (5, true), (6, true)] {
            let peaks = vec![1_000; n];
            let source = e.estimate("encode", &peaks).source;
            assert_eq!(
                matches!(source, RequestSource::Learned { .. }),
                learned,
                "{n} samples: {source:?}"
            );
        }
        // A min_samples of 0 still needs one peak to take a percentile of.
        let any = Estimator {
            min_samples: 0,
            ..e
        };
        assert_eq!(any.estimate("encode", &[]).source, RequestSource::Default);
        assert_eq!(any.estimate("encode", &[10]).bytes, ByteSize(12));
    }
}
