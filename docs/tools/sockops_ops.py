#!/usr/bin/env python3
"""Count the sock_ops callbacks the kernel makes for the sockets of a cgroup, by op (state
changes by the new state), beside whatever else is attached there (the agent sets the sockets'
callback flags, and so which callbacks there are). SIGUSR1 prints the counts so far, SIGINT
prints them and exits.
usage (root): sockops_ops.py CGROUP   (see bulk_ns.sh, COUNT=1; docs/performance.md)"""
import ctypes, signal, struct, sys
from bpf_raw import attach_sock_ops, bpf, insn
mfd = bpf(0, struct.pack("<IIII", 2, 4, 8, 256))  # BPF_MAP_CREATE: an array of 256 u64 counts
prog = [
 insn(0x61, 2, 1, 0),            # r2 = op
 insn(0x55, 2, off=3, imm=10),   # if r2 != STATE goto +3
 insn(0x61, 3, 1, 8),            # r3 = args[1]
 insn(0x27, 2, imm=16),          # r2 *= 16
 insn(0x0f, 2, 3),               # r2 += r3
 insn(0x25, 2, off=9, imm=255),  # if r2 > 255 goto out
 insn(0x63, 10, 2, -4),          # *(u32*)(r10-4) = r2
 insn(0x18, 1, 1, imm=mfd), insn(0, imm=0),  # r1 = map
 insn(0xbf, 2, 10), insn(0x07, 2, imm=-4),
 insn(0x85, imm=1),              # lookup
 insn(0x15, 0, off=2, imm=0),
 insn(0xb7, 1, imm=1),
 insn(0xdb, 0, 1, 0, 0),         # lock add
 insn(0xb7, 0, imm=1), insn(0x95)]
attach_sock_ops(sys.argv[1], prog)
names = {1:"TIMEOUT_INIT",2:"RWND_INIT",3:"TCP_CONNECT",4:"ACTIVE_EST",5:"PASSIVE_EST",6:"NEEDS_ECN",7:"BASE_RTT",8:"RTO",9:"RETRANS",11:"TCP_LISTEN",12:"RTT",13:"PARSE_HDR",14:"HDR_OPT_LEN",15:"WRITE_HDR"}
st = {1:"ESTABLISHED",2:"SYN_SENT",3:"SYN_RECV",4:"FIN_WAIT1",5:"FIN_WAIT2",6:"TIME_WAIT",7:"CLOSE",8:"CLOSE_WAIT",9:"LAST_ACK",10:"LISTEN",11:"CLOSING",12:"NEW_SYN_RECV"}
def dump():
    out = []
    for k in range(256):
        v = ctypes.create_string_buffer(8); key = ctypes.create_string_buffer(struct.pack("<I", k))
        bpf(1, struct.pack("<IIQQQ", mfd, 0, ctypes.addressof(key), ctypes.addressof(v), 0))
        n = struct.unpack("<Q", v.raw)[0]
        if n:
            op, s = (10, k - 160) if 160 <= k < 176 else (k, None)
            out.append(f"{'STATE->'+st.get(s,str(s)) if s is not None else names.get(op,str(op))}: {n}")
    print(", ".join(out), file=sys.stderr, flush=True)
signal.signal(signal.SIGUSR1, lambda *a: dump())
signal.signal(signal.SIGINT, lambda *a: (dump(), sys.exit(0)))
while True: signal.pause()
