//! Raw system calls and /proc reads, kept in one place.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// mount(2) a pseudo filesystem.
pub fn mount(source: &str, target: &Path, fstype: &str) -> io::Result<()> {
    let (src, tgt, fs) = (CString::new(source)?, cstr(target)?, CString::new(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether `p` is on a cgroup v2 filesystem.
pub fn is_cgroup2(p: &Path) -> bool {
    let Ok(c) = cstr(p) else { return false };
    // SAFETY: `st` is a plain C struct the call fills; `c` is a valid path string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// This process's CPU time (user + system) in seconds and resident set size in bytes.
pub fn process_usage() -> (f64, u64) {
    // SAFETY: sysconf has no memory effects.
    let (tick, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / tick.max(1) as f64)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page.max(1) as u64)
        .unwrap_or(0);
    (cpu, rss)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// prctl(PR_SET_NO_NEW_PRIVS): no later execve can gain privileges.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Clear this thread's ambient capability set.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Remove capability `cap` from the bounding set (needs CAP_SETPCAP).
pub fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2): this thread's effective, permitted and inheritable sets become `keep` (a bit mask
/// of capability numbers). Capabilities are per thread: call it before starting other threads.
pub fn capset(keep: u64) -> io::Result<()> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let (lo, hi) = (keep as u32, (keep >> 32) as u32);
    let data = [
        CapData { effective: lo, permitted: lo, inheritable: 0 },
        CapData { effective: hi, permitted: hi, inheritable: 0 },
    ];
    // SAFETY: version 3 takes a header and two data structs, both valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr` as BPF_LINK_CREATE reads it for an iterator.
#[repr(C)]
struct LinkCreateIter {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr` as the map batch commands read it.
#[repr(C)]
struct MapBatch {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Where a batch lookup of a hash map goes on from (the kernel's bucket index; `Default`: the
/// first).
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchCursor {
    started: bool,
    at: u64,
}

/// BPF_MAP_LOOKUP_BATCH on a map with keys `K` and values `V`: up to `keys.len()` (and
/// `values.len()`) entries from `cursor` on, which is moved past them. Returns how many were
/// written and whether the map has more. A bucket with more entries than `keys` holds is an
/// error (ENOSPC).
pub fn map_lookup_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    cursor: &mut BatchCursor,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, bool)> {
    let mut next = 0u64;
    let mut attr = MapBatch {
        in_batch: if cursor.started { (&raw const cursor.at) as u64 } else { 0 },
        out_batch: (&raw mut next) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // The kernel writes `count` entries of the map's key and value sizes, which the caller's
    // `K` and `V` are, into buffers of at least that many, and the cursor into `next`.
    match bpf_call_mut(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(_) => {
            *cursor = BatchCursor { started: true, at: next };
            Ok((attr.count as usize, true))
        }
        // The end: the entries of the last buckets are written all the same.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((attr.count as usize, false)),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_DELETE_BATCH: delete `keys` (of the map's key size) from `map`.
pub fn map_delete_batch<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let attr = MapBatch {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: 0,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf_call(BPF_MAP_DELETE_BATCH, &attr).map(|_| ())
}

/// `union bpf_attr` as BPF_ITER_CREATE reads it.
#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

/// The bpf(2) system call with `attr`, a valid, fully initialised `union bpf_attr` prefix (the
/// kernel zero-fills the rest) whose pointers, if any, point at memory that lives for the call.
fn bpf_call<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises above; the commands called this way do not write `attr`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>() as libc::c_uint) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// `bpf_call` for a command that writes its results into `attr` itself (BPF_PROG_QUERY's count).
fn bpf_call_mut<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: as `bpf_call`; `attr` is exclusively borrowed, so the kernel may write it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as libc::c_uint) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// `bpf_call` for a command whose result is a new file descriptor.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    let r = bpf_call(cmd, attr)?;
    // SAFETY: a non-negative result of these commands is a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `union bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
struct ObjInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// How many runs of the loaded program `prog` the kernel skipped (`bpf_prog_info.recursion_misses`):
/// a run is skipped when the program's recursion guard is taken on that CPU (for a classic
/// tracepoint program: whenever any BPF program or BPF map system call holds the CPU).
/// Needs no capability for a program fd this process holds.
pub fn prog_recursion_misses(prog: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(prog_info(prog)?.recursion_misses)
}

/// BPF_OBJ_GET_INFO_BY_FD for the loaded program `prog`.
fn prog_info(prog: BorrowedFd<'_>) -> io::Result<aya_obj::generated::bpf_prog_info> {
    // SAFETY: a plain C struct of integers; all zeroes is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr =
        ObjInfo { bpf_fd: prog.as_raw_fd() as u32, info_len: size_of_val(&info) as u32, info: &raw mut info as u64 };
    // The kernel writes at most `info_len` bytes to `info`, which lives until the call returns.
    bpf_call(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    Ok(info)
}

/// `union bpf_attr` as BPF_PROG_QUERY reads it (the fields up to `prog_cnt`).
#[repr(C)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The ids of the sock_ops programs that run for sockets of the cgroup `cgroup`: its own and those
/// it inherits from its ancestors (BPF_F_QUERY_EFFECTIVE). Needs CAP_SYS_ADMIN (or CAP_NET_ADMIN).
pub fn cgroup_sock_ops_programs(cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 16];
    loop {
        let mut attr = ProgQuery {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_SOCK_OPS,
            query_flags: BPF_F_QUERY_EFFECTIVE,
            attach_flags: 0,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            _pad: 0,
        };
        // The kernel writes at most `prog_cnt` ids to `ids`, which lives until the call returns,
        // and the number there is into `attr.prog_cnt` (ENOSPC when they do not all fit).
        let r = bpf_call_mut(BPF_PROG_QUERY, &mut attr);
        let count = attr.prog_cnt as usize;
        match r {
            Ok(_) => {
                ids.truncate(count.min(ids.len()));
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOSPC) || count <= ids.len() => return Err(e),
            Err(_) => ids.resize(count, 0),
        }
    }
}

/// The name the loaded program `id` was given (`bpf_prog_info.name`, at most 15 bytes). Needs
/// CAP_SYS_ADMIN.
pub fn prog_name(id: u32) -> io::Result<String> {
    #[repr(C)]
    struct GetFdById {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &GetFdById { prog_id: id, next_id: 0, open_flags: 0 })?;
    let info = prog_info(fd.as_fd())?;
    let name: Vec<u8> = info.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// BPF_LINK_CREATE for a loaded iterator program (`iter/tcp`, say). aya's `Iter::attach` makes
/// the link too, but hands it out only as a file for one pass; the link fd makes a pass each time.
pub fn bpf_iter_link(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let attr = LinkCreateIter {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info: 0,
        iter_info_len: 0,
        _pad: 0,
    };
    bpf(BPF_LINK_CREATE, &attr)
}

/// BPF_ITER_CREATE: a new pass of an iterator link; reading the file runs the program over
/// every element. Per-namespace iterators (`iter/tcp`) walk the calling thread's namespace.
pub fn bpf_iter_create(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    bpf(BPF_ITER_CREATE, &IterCreate { link_fd: link.as_raw_fd() as u32, flags: 0 })
}

/// setns(2) into the network namespace `ns` (an open /proc/PID/ns/net or /run/netns/NAME); only
/// the calling thread moves. Needs CAP_SYS_ADMIN.
pub fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns with a valid fd and a namespace type.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14+), the
/// value `bpf_get_netns_cookie` gives the programs.
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: a plain socket call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the call and sized as the option needs.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if r == 0 { Ok(cookie) } else { Err(io::Error::last_os_error()) }
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and always succeeds.
    unsafe { libc::gettid() }
}

/// CLOCK_MONOTONIC in µs: the clock of the kernel's TCP timestamps (`tcp_sock.tcp_mstamp`).
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Give the heap's free memory back to the system (glibc's malloc_trim): start-up parses the
/// kernel's BTF (megabytes, freed at once), which would otherwise stay in the resident set.
pub fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions; it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keep glibc's mmap threshold fixed at 256 KiB: by default freeing one large buffer (the
/// kernel's BTF, read at start) raises it to that buffer's size, so the next large buffers land
/// in the heap, whose freed memory is not handed back; the start-up peak would grow by megabytes.
pub fn fix_mmap_threshold() {
    // SAFETY: mallopt with a valid parameter; it only changes allocator settings.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// A shared read-write mapping of a file (a BPF array map created with `BPF_F_MMAPABLE`),
/// unmapped when dropped.
pub struct SharedMapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; who reads and writes which part of
// it is the owner's protocol (`capture::records`), not tied to a thread.
unsafe impl Send for SharedMapping {}

impl SharedMapping {
    /// Map the first `len` bytes of `fd`, rounded up to whole pages.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMapping> {
        let len = len.div_ceil(4096).max(1) * 4096;
        // SAFETY: a fresh mapping chosen by the kernel (no address given), of a file descriptor
        // that is open for the call; nothing else refers to the new range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedMapping { ptr, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the range this value mapped, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
