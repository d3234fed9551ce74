//! The daemon's three hash operations per connection record (capture/records.rs): the walk's
//! entries by cookie (contains at establishment, remove at close), the lost set by cookie
//! (remove at close), the flow by its 40-byte key (entry). Std SipHash against foldhash (flows)
//! and FxHash (cookies), as the daemon now hashes them. ns per record, best of 5 rounds of 2
//! million records, with 4 flows (the storm's) and 1,000. See docs/performance.md, "Results,
//! 2026-12-07 (tenth)".
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Copy, Hash, PartialEq, Eq, Default)]
struct Key {
    local: [u32; 4],
    remote: [u32; 4],
    lport: u16,
    rport: u16,
    role: u8,
    _p: [u8; 3],
}
#[derive(Clone, Copy)]
struct Agg {
    n: [u64; 64],
}
impl Default for Agg {
    fn default() -> Self {
        Agg { n: [0; 64] }
    }
}

fn run<F: BuildHasher + Default, C: BuildHasher + Default>(flows_n: u32, records: u64) -> f64 {
    let mut flows: HashMap<Key, Agg, F> = HashMap::default();
    let mut entries: HashSet<u64, C> = HashSet::default();
    let mut lost: HashSet<u64, C> = HashSet::default();
    for c in 0..200u64 {
        entries.insert(1_000_000 + c * 7);
    }
    let keys: Vec<Key> = (0..flows_n)
        .map(|i| Key {
            local: [0, 0, 0xffff, 0x7f000001],
            remote: [0, 0, 0xffff, 0x7f000001 + i],
            lport: 8080,
            rport: 0,
            role: (i & 1) as u8,
            _p: [0; 3],
        })
        .collect();
    let t = Instant::now();
    for r in 0..records {
        let cookie = 5_000_000 + r / 2;
        let close = r & 1 == 1;
        let walk = if close { entries.remove(&cookie) } else { entries.contains(&cookie) };
        let was_lost = close && lost.remove(&cookie);
        let k = keys[(r as usize / 2) % keys.len()];
        let a = flows.entry(k).or_default();
        a.n[0] += 1 + walk as u64 + was_lost as u64;
        a.n[9] += r;
    }
    black_box(&flows);
    t.elapsed().as_nanos() as f64 / records as f64
}

fn main() {
    for flows_n in [4u32, 1000] {
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            best.0 = best.0.min(run::<std::hash::RandomState, std::hash::RandomState>(flows_n, 2_000_000));
            best.1 = best.1.min(run::<foldhash::fast::RandomState, rustc_hash::FxBuildHasher>(flows_n, 2_000_000));
        }
        println!("{flows_n} flows: SipHash {:.1} ns per record, foldhash+Fx {:.1} ns per record", best.0, best.1);
    }
}
