//! What a daemon would pay to fold connection records from per-CPU rings (the `pcpu` step of
//! `sockops_floor.py record`): maps the rings and their heads (BPF_F_MMAPABLE arrays, fds
//! inherited from the floor), and every 10 ms reads each CPU's new 64-B records and adds
//! their counters to a hash map keyed by their first 24 bytes (family, addresses, ports). Every
//! second it prints the records it read in that second and its own CPU time (user + system) in
//! it, so that the seconds of a storm and the idle ones before it (the polling alone) can be told
//! apart.
//! The key is the agent's, roughly: family, addresses and the lower of the two ports (the
//! server's, for the storm's ephemeral client ports).
//! Standard library only: `rustc -O -o /tmp/ring_consume docs/tools/ring_consume.rs`.
//! usage: ring_consume RINGS_FD HEADS_FD CPUS SLOTS_PER_CPU   (sockops_floor.py starts it)
use std::collections::HashMap;
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn getrusage(who: i32, usage: *mut [i64; 18]) -> i32;
}

const SLOT: usize = 64;

/// The rings' or heads' array, mapped read-only. Exits with a message when the kernel refuses.
fn map(fd: i32, len: usize) -> *const u8 {
    let len = len.div_ceil(4096) * 4096;
    // SAFETY: a fresh shared read-only mapping of a BPF array the kernel lets be mapped
    // (BPF_F_MMAPABLE); it stays mapped for the life of the process.
    let p = unsafe { mmap(std::ptr::null_mut(), len, 1, 1, fd, 0) };
    if p as isize == -1 {
        eprintln!("ring_consume: mmap of fd {fd}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    p
}

/// User + system CPU time of this process, in nanoseconds.
fn cpu_ns() -> u64 {
    let mut u = [0i64; 18];
    // SAFETY: getrusage(RUSAGE_SELF) fills a struct rusage, which starts with two timevals
    // (the 18 longs cover the whole struct on x86_64).
    unsafe { getrusage(0, &mut u) };
    ((u[0] + u[2]) * 1_000_000_000 + (u[1] + u[3]) * 1_000) as u64
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("usage: RINGS HEADS CPUS SLOTS")).collect();
    let [rings_fd, heads_fd, cpus, per_cpu] = a[..] else {
        eprintln!("usage: ring_consume RINGS_FD HEADS_FD CPUS SLOTS_PER_CPU");
        std::process::exit(2);
    };
    let rings = map(rings_fd as i32, cpus * per_cpu * SLOT);
    let heads = map(heads_fd as i32, cpus * SLOT);
    let mut tails = vec![0u64; cpus];
    // Start from where the rings are now.
    for (cpu, t) in tails.iter_mut().enumerate() {
        // SAFETY: inside the heads' mapping; the kernel writes it atomically (fetch-add).
        *t = unsafe { std::ptr::read_volatile(heads.add(cpu * SLOT).cast::<u64>()) };
    }
    let mut flows: HashMap<(u32, u32, u32, u32), [u64; 5]> = HashMap::new();
    let (mut records, mut overrun) = (0u64, 0u64);
    let (mut cpu_before, mut records_before, mut shown) = (cpu_ns(), 0u64, Instant::now());
    loop {
        for (cpu, tail) in tails.iter_mut().enumerate() {
            // SAFETY: as above.
            let head = unsafe { std::ptr::read_volatile(heads.add(cpu * SLOT).cast::<u64>()) };
            if head - *tail > per_cpu as u64 {
                overrun += head - *tail - per_cpu as u64;
                *tail = head - per_cpu as u64;
            }
            while *tail < head {
                let i = cpu * per_cpu + (*tail as usize & (per_cpu - 1));
                let mut rec = [0u8; SLOT];
                // SAFETY: slot i is inside the rings' mapping.
                unsafe { std::ptr::copy_nonoverlapping(rings.add(i * SLOT), rec.as_mut_ptr(), SLOT) };
                let word = |o: usize| u32::from_le_bytes(rec[o..o + 4].try_into().unwrap());
                // remote_port is in network byte order in its upper half, local_port in host order.
                let port = (u32::from_be(word(12)) & 0xffff).min(word(16));
                let e = flows.entry((word(0), word(4), word(8), port)).or_default();
                let word = |o: usize| word(o) as u64;
                e[0] += 1;
                e[1] += word(32);
                e[2] += word(36);
                e[3] += word(40);
                e[4] += u64::from_le_bytes(rec[44..52].try_into().unwrap());
                *tail += 1;
                records += 1;
            }
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let (cpu, n) = (cpu_ns(), records - records_before);
            eprintln!(
                "ring_consume: {n} records in 1 s, cpu {:.2} ms, {:.0} ns per record; {records} in all, {overrun} overrun, {} flows",
                (cpu - cpu_before) as f64 / 1e6,
                if n > 0 { (cpu - cpu_before) as f64 / n as f64 } else { 0.0 },
                flows.len()
            );
            (cpu_before, records_before) = (cpu, records);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
