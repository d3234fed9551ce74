//! Log-linear latency histogram buckets shared by the kernel and userspace.
//!
//! Values (microseconds) below [`SUB_BUCKETS`] get one bucket each; above that every power of two
//! is split into [`SUB_BUCKETS`] equal sub-buckets, so a bucket is at most 1/4 of its lower bound
//! wide (relative error of a bucket's midpoint <= 12.5%). Values of 2^26 us (67 s) and above land in
//! the last bucket. The kernel has no count-leading-zeros instruction and no unbounded loops, so
//! [`log2_floor`] is a fixed binary search.

/// log2 of the number of sub-buckets per power of two.
pub const SUB_BITS: u32 = 2;
/// Sub-buckets per power of two.
pub const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Largest exponent with its own buckets; larger values are clamped into the last bucket.
pub const MAX_EXP: u32 = 25;
/// Number of buckets.
pub const HIST_BUCKETS: usize = (SUB_BUCKETS as usize) + ((MAX_EXP - SUB_BITS + 1) as usize) * (SUB_BUCKETS as usize);

/// floor(log2(v)) for v > 0; 0 for v == 0. Branch-only, no loops (eBPF friendly).
#[inline(always)]
pub fn log2_floor(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket index of a value, always `< HIST_BUCKETS`.
#[inline(always)]
pub fn bucket_index(v: u64) -> usize {
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let e = log2_floor(v);
    if e > MAX_EXP {
        return HIST_BUCKETS - 1;
    }
    let sub = (v >> (e - SUB_BITS)) & (SUB_BUCKETS - 1);
    let idx = SUB_BUCKETS as usize + ((e - SUB_BITS) as usize) * SUB_BUCKETS as usize + sub as usize;
    if idx >= HIST_BUCKETS { HIST_BUCKETS - 1 } else { idx }
}

/// Inclusive lower and exclusive upper bound of a bucket's values.
pub fn bucket_bounds(idx: usize) -> (u64, u64) {
    let sb = SUB_BUCKETS as usize;
    if idx < sb {
        return (idx as u64, idx as u64 + 1);
    }
    let e = ((idx - sb) / sb) as u32 + SUB_BITS;
    let sub = ((idx - sb) % sb) as u64;
    let width = 1u64 << (e - SUB_BITS);
    let lo = (1u64 << e) + sub * width;
    (lo, lo + width)
}

/// The value a bucket stands for when it is turned back into samples: the midpoint of its bounds.
pub fn bucket_value(idx: usize) -> u64 {
    let (lo, hi) = bucket_bounds(idx);
    lo + (hi - 1 - lo) / 2
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for v in (1u64..5000).chain([u32::MAX as u64, u64::MAX, 1 << 40, (1 << 40) - 1]) {
            assert_eq!(log2_floor(v), 63 - v.leading_zeros(), "v={v}");
        }
    }

    #[test]
    fn every_value_lands_in_its_bucket() {
        for v in (0u64..100_000).chain([(1 << 26) - 1]) {
            let i = bucket_index(v);
            let (lo, hi) = bucket_bounds(i);
            assert!(lo <= v && v < hi, "v={v} idx={i} bounds=({lo},{hi})");
        }
        assert_eq!(bucket_index(u64::MAX), HIST_BUCKETS - 1);
        assert_eq!(bucket_index(1 << 26), HIST_BUCKETS - 1);
    }

    #[test]
    fn buckets_are_contiguous_and_relative_error_bounded() {
        for i in 1..HIST_BUCKETS {
            assert_eq!(bucket_bounds(i - 1).1, bucket_bounds(i).0, "gap before bucket {i}");
            let (lo, hi) = bucket_bounds(i);
            if lo >= SUB_BUCKETS {
                assert!((hi - lo) * 4 <= lo, "bucket {i} too wide: {lo}..{hi}");
            }
        }
    }
}
