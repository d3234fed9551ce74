#!/usr/bin/env python3
"""Attach an empty BTF tracepoint program (tp_btf) to `sock:inet_sock_set_state` until killed: what
a design that follows TCP state changes from that tracepoint instead of sock_ops would pay per
call before any work (it fires for every state change of every TCP socket of the host).
usage: tp_state_floor.py [TRACEPOINT]   (default inet_sock_set_state)
See docs/performance.md, "A walk mode without sock_ops: what the dispatch would save"."""
import signal, struct, sys
from bpf_raw import bpf, insn, load_prog


def btf_typedef_id(name, path="/sys/kernel/btf/vmlinux"):
    """The type id of typedef `name` in the kernel's BTF (BTF_KIND_TYPEDEF = 8)."""
    data = open(path, "rb").read()
    _magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
    types, strs = hdr_len + type_off, hdr_len + str_off
    # Bytes after the 12-byte common part, by kind: fixed, and per member (vlen).
    extra = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
             17: (4, 0), 19: (0, 12)}
    want, off, tid = name.encode(), types, 0
    while off < types + type_len:
        tid += 1
        name_off, info, _ = struct.unpack_from("<III", data, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == 8 and data[strs + name_off:].split(b"\0", 1)[0] == want:
            return tid
        fixed, per = extra.get(kind, (0, 0))
        off += 12 + fixed + per * vlen
    sys.exit(f"no typedef {name} in {path}")


def attach_tp_btf(tracepoint, insns):
    """Load `insns` as a tp_btf program on `tracepoint` and attach it; returns (program fd, link fd)."""
    # BPF_PROG_TYPE_TRACING, expected_attach_type BPF_TRACE_RAW_TP.
    pfd = load_prog(26, insns, expected_attach_type=23, attach_btf_id=btf_typedef_id(f"btf_trace_{tracepoint}"))
    lfd = bpf(17, struct.pack("<QI", 0, pfd))  # BPF_RAW_TRACEPOINT_OPEN, the name from the BTF id
    return pfd, lfd


tp = sys.argv[1] if len(sys.argv) > 1 else "inet_sock_set_state"
pfd, lfd = attach_tp_btf(tp, [insn(0xb7, 0, imm=0), insn(0x95)])
print(f"attached an empty tp_btf/{tp}: prog fd {pfd} link {lfd}", flush=True)
signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True: signal.pause()
