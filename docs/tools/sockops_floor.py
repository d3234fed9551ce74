#!/usr/bin/env python3
"""Attach a minimal sock_ops program to a cgroup until killed: the hook's floor cost.
usage: sockops_floor.py CGROUP empty|flags|state   (flags: set RTO|RETRANS|STATE at establishment, like the
agent in callback mode; state: RTO|STATE, like a walked socket)"""
import signal, sys
from bpf_raw import attach_sock_ops, insn


def set_flags_at_establishment(flags):
    """Return 1; at ACTIVE_ESTABLISHED (4) and PASSIVE_ESTABLISHED (5) first set the socket's
    callback flags to `flags` (bpf_sock_ops_cb_flags_set, helper 59)."""
    return [insn(0x61, 2, 1, 0), insn(0x15, 2, off=3, imm=4), insn(0x15, 2, off=2, imm=5),
            insn(0xb7, 0, imm=1), insn(0x95), insn(0xb7, 2, imm=flags), insn(0x85, imm=59),
            insn(0xb7, 0, imm=1), insn(0x95)]


prog = {
    "empty": [insn(0xb7, 0, imm=1), insn(0x95)],
    "flags": set_flags_at_establishment(7),
    "state": set_flags_at_establishment(5),
}[sys.argv[2]]
pfd, lfd = attach_sock_ops(sys.argv[1], prog)
print(f"attached {sys.argv[2]} prog fd {pfd} link {lfd}", flush=True)
signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True: signal.pause()
