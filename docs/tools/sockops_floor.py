#!/usr/bin/env python3
"""Attach a minimal sock_ops program to a cgroup until killed: the hook's floor cost.
usage: sockops_floor.py CGROUP empty|flags|state|record   (flags: set RTO|RETRANS|STATE at establishment, like
the agent in callback mode; state: RTO|STATE, like a walked socket; record: `state`, and what any exact
design must do at least: at establishment read the handshake RTT and the socket's addresses, at CLOSE
its final counters, each into a per-CPU slot, with no hash map, no lookup by socket and no delete)"""
import mmap, os, signal, struct, subprocess, sys, threading, time
from bpf_raw import attach_sock_ops, bpf, insn


def set_flags_at_establishment(flags):
    """Return 1; at ACTIVE_ESTABLISHED (4) and PASSIVE_ESTABLISHED (5) first set the socket's
    callback flags to `flags` (bpf_sock_ops_cb_flags_set, helper 59)."""
    return [insn(0x61, 2, 1, 0), insn(0x15, 2, off=3, imm=4), insn(0x15, 2, off=2, imm=5),
            insn(0xb7, 0, imm=1), insn(0x95), insn(0xb7, 2, imm=flags), insn(0x85, imm=59),
            insn(0xb7, 0, imm=1), insn(0x95)]


children = []  # the CONSUMER, ended with this process


def consume(fd):
    """Keep the BPF ring buffer `fd` empty: its consumer position follows the producer's."""
    cons = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
    prod = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ, offset=4096)
    last, shown = b"", 0.0
    while True:
        pos = prod[0:8]
        cons[0:8] = pos
        if os.environ.get("RING_DEBUG") and pos != last and time.time() - shown > 1:
            last, shown = pos, time.time()
            print(f"ring: {struct.unpack('<Q', pos)[0]} bytes produced", file=sys.stderr, flush=True)
        time.sleep(0.001)


def record_floor(steps=()):
    """`state`, and a record at establishment (srtt, addresses, ports) and at CLOSE (the counters
    `fold::payload` reads, srtt, addresses, ports) into slot 0 of a per-CPU array. `steps` adds the
    agent's kinds of work, to time each entered cold: `cookie` (the socket cookie at the close),
    `flows` (a flow of 40-B key and 512-B value in a preallocated hash of 65,536: inserted at
    establishment, looked up at the close with 10 atomic adds over its lines), `sockets` (an
    entry by cookie in a preallocated hash of 262,144: inserted at establishment, looked up at
    the close), `delete` (that entry deleted at the close), `ring` (the slot's first 64 B also
    sent to a 1-MiB BPF ring buffer at both, without a wakeup; a thread here consumes it every
    millisecond, as a daemon polling its rings would), `pcpu` (the record goes to a ring of this
    CPU's in an array instead of the per-CPU slot: see `slot`; with CONSUMER=path, that program
    reads them as a daemon would, see ring_consume.rs)."""
    mfd = bpf(0, struct.pack("<IIII", 6, 4, 128, 1))  # BPF_MAP_CREATE: a per-CPU array, 1 x 128 B
    zfd = bpf(0, struct.pack("<IIII", 2, 4, 512, 1))  # a zeroed value to insert from
    flows_max, flows_flags = int(os.environ.get("FLOWS_MAX", 65536)), int(os.environ.get("FLOWS_FLAGS", 0))
    ffd = bpf(0, struct.pack("<IIIII", 1, 40, 512, flows_max, flows_flags))  # FLOWS-like
    sfd = bpf(0, struct.pack("<IIII", 1, 8, 96, 262144))  # SOCKETS-like
    rfd = bpf(0, struct.pack("<IIII", 27, 0, 0, 1 << 20)) if "ring" in steps else None  # BPF_MAP_TYPE_RINGBUF
    if rfd is not None:
        threading.Thread(target=consume, args=(rfd,), daemon=True).start()
    out, est, state = "out", "est", "state"

    def lookup(fd, key_off):
        # r0 = the value under the key at r10+key_off in map fd (or out).
        return [insn(0x18, 1, 1, imm=fd), insn(0, imm=0), insn(0xbf, 2, 10), insn(0x07, 2, imm=key_off),
                insn(0x85, imm=1), (0x15, 0, out, 0)]

    ncpu, per_cpu = os.cpu_count(), 1 << 14
    if "pcpu" in steps:
        # A ring per CPU in one array the daemon could map (BPF_F_MMAPABLE): 16,384 slots of 64 B
        # each, and each CPU's next index on a line of its own, taken by an atomic fetch-add
        # (a softirq may interrupt a callback on the same CPU). No consumer: slots are reused.
        rings = bpf(0, struct.pack("<IIIII", 2, 4, 64, ncpu * per_cpu, 1024))
        heads = bpf(0, struct.pack("<IIIII", 2, 4, 64, ncpu, 1024))
        if os.environ.get("CONSUMER"):  # e.g. /tmp/ring_consume, built from ring_consume.rs
            children.append(subprocess.Popen([os.environ["CONSUMER"], str(rings), str(heads), str(ncpu),
                                              str(per_cpu)], pass_fds=(rings, heads), stdout=sys.stderr))

    def slot(fields):
        # The slot; then each (ctx offset, size) copied to it in order.
        if "pcpu" in steps:
            code = [insn(0x85, imm=8), insn(0xbf, 7, 0), insn(0x63, 10, 0, -4)] + lookup(heads, -4) + [
                insn(0xb7, 1, imm=1), insn(0xdb, 0, 1, 0, imm=0x01),  # r1 = fetch_add(head, 1)
                insn(0x57, 1, imm=per_cpu - 1), insn(0x27, 7, imm=per_cpu), insn(0x0f, 7, 1),
                insn(0x63, 10, 7, -4)] + lookup(rings, -4)
        else:
            code = [insn(0x62, 10, off=-4, imm=0)] + lookup(mfd, -4)
        at = 0
        for off, size in fields:
            ld, st = (0x79, 0x7b) if size == 8 else (0x61, 0x63)
            code += [insn(ld, 3, 6, off), insn(st, 0, 3, at)]
            at += size
        return code

    def flow_key():  # 40 B at r10-48: family, ips, ports, then zeros
        code = []
        for i, off in enumerate([20, 24, 28, 64, 68]):
            code += [insn(0x61, 3, 6, off), insn(0x63, 10, 3, -48 + 4 * i)]
        return code + [insn(0x62, 10, off=-48 + 4 * i, imm=0) for i in range(5, 10)]

    def insert(fd, key_off):
        return [insn(0x62, 10, off=-4, imm=0)] + lookup(zfd, -4) + [
            insn(0xbf, 3, 0), insn(0x18, 1, 1, imm=fd), insn(0, imm=0), insn(0xbf, 2, 10), insn(0x07, 2, imm=key_off),
            insn(0xb7, 4, imm=0), insn(0x85, imm=2)]

    cookie = [insn(0xbf, 1, 6), insn(0x85, imm=46), insn(0x7b, 10, 0, -56)]
    addrs = [(20, 4), (24, 4), (28, 4), (64, 4), (68, 4), (80, 4)]  # family, ips, ports, srtt
    counters = [(104, 4), (108, 4), (136, 4), (140, 4), (148, 4), (168, 8), (176, 8)]  # snd_nxt/una, retrans, segs, bytes
    at_est = slot(addrs)
    at_close = slot(addrs + counters)
    if "spread" in steps:
        # The path through a large program: SPREAD blocks, each two instructions taken and a
        # jump over GAP instructions not taken (4 B of x86 each), so each block's head is a
        # code cache line of its own.
        def spread(tag, n=int(os.environ.get("SPREAD", 60)), gap=int(os.environ.get("GAP", 100))):
            code = [insn(0xb7, 4, imm=0)]
            for i in range(n):
                code += [insn(0x61, 3, 6, 0), (0x55, 3, f"{tag}{i}", 0x7777)] + [insn(0x07, 4, imm=1)] * gap + [f"{tag}{i}"]
            return code
        at_est = spread("se") + at_est
        at_close = spread("sc") + at_close
    if rfd is not None:  # bpf_ringbuf_output(ring, slot, 64, BPF_RB_NO_WAKEUP)
        ring = [insn(0xbf, 2, 0), insn(0x18, 1, 1, imm=rfd), insn(0, imm=0), insn(0xb7, 3, imm=64),
                insn(0xb7, 4, imm=1), insn(0x85, imm=130)]
        at_est += ring
        at_close += ring
    if "flows" in steps:
        at_est += flow_key() + insert(ffd, -48)
        at_close += flow_key() + lookup(ffd, -48) + [insn(0xb7, 1, imm=1)] + [
            insn(0xdb, 0, 1, off) for off in (0, 8, 16, 24, 64, 72, 128, 136, 256, 384)]
    if "sockets" in steps or "cookie" in steps:
        at_close += cookie
    if "sockets" in steps:
        at_est += cookie + insert(sfd, -56)
        at_close += lookup(sfd, -56) + [insn(0x79, 3, 0, 0), insn(0x79, 3, 0, 48)]
    if "delete" in steps:
        at_close += [insn(0x18, 1, 1, imm=sfd), insn(0, imm=0), insn(0xbf, 2, 10), insn(0x07, 2, imm=-56),
                     insn(0x85, imm=3)]
    code = [insn(0xbf, 6, 1), insn(0x61, 2, 6, 0), (0x15, 2, est, 4), (0x15, 2, est, 5), (0x15, 2, state, 10),
            out, insn(0xb7, 0, imm=1), insn(0x95),
            est, insn(0xbf, 1, 6), insn(0xb7, 2, imm=5), insn(0x85, imm=59)] + at_est + [(0x05, 0, out, 0),
            state, insn(0x61, 3, 6, 8), (0x55, 3, out, 7)] + at_close + [(0x05, 0, out, 0)]
    labels, n = {}, 0
    for c in code:
        if isinstance(c, str):
            labels[c] = n
        else:
            n += 1
    insns, n = [], 0
    for c in code:
        if isinstance(c, str):
            continue
        if isinstance(c, tuple):  # a jump to a label: (opcode, register, label, immediate)
            c = insn(c[0], c[1], off=labels[c[2]] - n - 1, imm=c[3])
        insns.append(c)
        n += 1
    return insns


prog = {
    "empty": [insn(0xb7, 0, imm=1), insn(0x95)],
    "flags": set_flags_at_establishment(7),
    "state": set_flags_at_establishment(5),
    "record": None,
}[sys.argv[2]] or record_floor(sys.argv[3].split(",") if len(sys.argv) > 3 else ())
pfd, lfd = attach_sock_ops(sys.argv[1], prog)
print(f"attached {sys.argv[2]} prog fd {pfd} link {lfd}", flush=True)
def end(*_):
    for c in children:
        c.terminate()
    sys.exit(0)


signal.signal(signal.SIGINT, end); signal.signal(signal.SIGTERM, end)
while True: signal.pause()
