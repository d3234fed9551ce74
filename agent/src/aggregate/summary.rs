//! Latency summaries from bucket counts, through hdrhistogram.

use agent_common::{
    hist::{HIST_BUCKETS, bucket_bounds, bucket_value},
    report::{LatencyBucket, LatencySummary},
};
use hdrhistogram::Histogram;

use super::HistAcc;

/// Summarize a window's histogram. `mean` is exact (sum/count); min, max and percentiles are
/// bucket values (each bucket at most 25% wide), clamped so that min <= mean <= max.
pub fn summarize(h: &HistAcc) -> LatencySummary {
    if h.count == 0 {
        return LatencySummary::default();
    }
    let mean = h.sum as f64 / h.count as f64;
    let nonzero = || h.buckets.iter().enumerate().filter(|(_, c)| **c > 0);
    let (Some((first, _)), Some((last, _))) = (nonzero().next(), nonzero().next_back()) else {
        // Counts without buckets cannot happen with kernel data; report the mean alone.
        let m = mean.round() as u64;
        return LatencySummary { count: h.count, min: m, max: m, mean, p50: m, p90: m, p99: m, buckets: Vec::new() };
    };
    let min = bucket_bounds(first).0.min(mean.floor() as u64);
    let max = (bucket_bounds(last).1 - 1).max(mean.ceil() as u64);
    let mut hist = Histogram::<u64>::new_with_bounds(1, u64::MAX >> 2, 2).expect("static histogram bounds are valid");
    for (i, c) in nonzero() {
        // Values are clamped into the histogram's range; 0 is recorded as 1 (its lowest value).
        let _ = hist.record_n(bucket_value(i).max(1), *c);
    }
    let q = |x: f64| hist.value_at_quantile(x).clamp(min, max);
    let buckets = nonzero().map(|(i, c)| LatencyBucket { le: bucket_le(i), count: *c }).collect();
    LatencySummary { count: h.count, min, max, mean, p50: q(0.5), p90: q(0.9), p99: q(0.99), buckets }
}

/// A bucket's inclusive upper bound in whole microseconds; none for the last (overflow) bucket.
fn bucket_le(idx: usize) -> Option<u64> {
    (idx + 1 < HIST_BUCKETS).then(|| bucket_bounds(idx).1 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::hist::bucket_index;

    fn acc(values: &[u64]) -> HistAcc {
        let mut h = HistAcc::default();
        for &v in values {
            h.count += 1;
            h.sum += v;
            h.buckets[bucket_index(v)] += 1;
        }
        h
    }

    #[test]
    fn percentiles_within_bucket_error() {
        let values: Vec<u64> = (1..=1000).map(|i| i * 10).collect();
        let s = summarize(&acc(&values));
        assert_eq!(s.count, 1000);
        assert!((s.mean - 5005.0).abs() < 1e-9);
        for (got, want) in [(s.p50, 5000.0), (s.p90, 9000.0), (s.p99, 9900.0)] {
            let err = (got as f64 - want).abs() / want;
            assert!(err <= 0.13, "got {got}, want {want} (err {err})");
        }
        assert!(s.min <= 10 && s.max >= 10000, "{s:?}");
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(summarize(&HistAcc::default()), LatencySummary::default());
        let s = summarize(&acc(&[77]));
        assert_eq!(s.count, 1);
        assert!(s.min <= 77 && 77 <= s.max && s.p50 >= s.min && s.p50 <= s.max, "{s:?}");
    }

    #[test]
    fn buckets_carry_every_sample_under_its_bound() {
        let values = [0, 3, 77, 77, 1000, 1 << 30];
        let s = summarize(&acc(&values));
        assert_eq!(s.buckets.iter().map(|b| b.count).sum::<u64>(), values.len() as u64);
        assert!(s.buckets.windows(2).all(|w| w[0].le.unwrap_or(u64::MAX) < w[1].le.unwrap_or(u64::MAX)));
        for v in values {
            let first = s.buckets.iter().find(|b| b.le.is_none_or(|le| v <= le)).unwrap();
            let i = bucket_index(v);
            assert_eq!(first.le, bucket_le(i), "v={v}");
        }
        assert_eq!(s.buckets.last().unwrap().le, None, "2^30 us lands in the overflow bucket");
    }
}
