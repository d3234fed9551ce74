#!/usr/bin/env python3
"""Attach a minimal sock_ops program to a cgroup until killed: the hook's floor cost.
usage: sockops_floor.py CGROUP empty|flags|state|record   (flags: set RTO|RETRANS|STATE at establishment, like
the agent in callback mode; state: RTO|STATE, like a walked socket; record: `state`, and what any exact
design must do at least: at establishment read the handshake RTT and the socket's addresses, at CLOSE
its final counters, each into a per-CPU slot, with no hash map, no lookup by socket and no delete)"""
import os, signal, struct, sys
from bpf_raw import attach_sock_ops, bpf, insn


def set_flags_at_establishment(flags):
    """Return 1; at ACTIVE_ESTABLISHED (4) and PASSIVE_ESTABLISHED (5) first set the socket's
    callback flags to `flags` (bpf_sock_ops_cb_flags_set, helper 59)."""
    return [insn(0x61, 2, 1, 0), insn(0x15, 2, off=3, imm=4), insn(0x15, 2, off=2, imm=5),
            insn(0xb7, 0, imm=1), insn(0x95), insn(0xb7, 2, imm=flags), insn(0x85, imm=59),
            insn(0xb7, 0, imm=1), insn(0x95)]


def record_floor(steps=()):
    """`state`, and a record at establishment (srtt, addresses, ports) and at CLOSE (the counters
    `fold::payload` reads, srtt, addresses, ports) into slot 0 of a per-CPU array. `steps` adds the
    agent's kinds of work, to time each entered cold: `cookie` (the socket cookie at the close),
    `flows` (a flow of 40-B key and 512-B value in a preallocated hash of 65,536: inserted at
    establishment, looked up at the close with 10 atomic adds over its lines), `sockets` (an
    entry by cookie in a preallocated hash of 262,144: inserted at establishment, looked up at
    the close), `delete` (that entry deleted at the close)."""
    mfd = bpf(0, struct.pack("<IIII", 6, 4, 128, 1))  # BPF_MAP_CREATE: a per-CPU array, 1 x 128 B
    zfd = bpf(0, struct.pack("<IIII", 2, 4, 512, 1))  # a zeroed value to insert from
    flows_max, flows_flags = int(os.environ.get("FLOWS_MAX", 65536)), int(os.environ.get("FLOWS_FLAGS", 0))
    ffd = bpf(0, struct.pack("<IIIII", 1, 40, 512, flows_max, flows_flags))  # FLOWS-like
    sfd = bpf(0, struct.pack("<IIII", 1, 8, 96, 262144))  # SOCKETS-like
    out, est, state = "out", "est", "state"

    def lookup(fd, key_off):
        # r0 = the value under the key at r10+key_off in map fd (or out).
        return [insn(0x18, 1, 1, imm=fd), insn(0, imm=0), insn(0xbf, 2, 10), insn(0x07, 2, imm=key_off),
                insn(0x85, imm=1), (0x15, 0, out, 0)]

    def slot(fields):
        # The slot; then each (ctx offset, size) copied to it in order.
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
signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True: signal.pause()
