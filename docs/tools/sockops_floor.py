#!/usr/bin/env python3
"""Attach a minimal sock_ops program to a cgroup until killed: the hook's floor cost.
usage: sockops_floor.py CGROUP empty|flags|state   (flags: set RTO|RETRANS|STATE at establishment, like the
agent in callback mode; state: RTO|STATE, like a walked socket)"""
import ctypes, os, signal, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
NR_BPF = 321
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(NR_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    return r
def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
prog = {
    "empty": [insn(0xb7, 0, imm=1), insn(0x95)],
    "flags": [insn(0x61, 2, 1, 0), insn(0x15, 2, off=3, imm=4), insn(0x15, 2, off=2, imm=5),
              insn(0xb7, 0, imm=1), insn(0x95), insn(0xb7, 2, imm=7), insn(0x85, imm=59),
              insn(0xb7, 0, imm=1), insn(0x95)],
    "state": [insn(0x61, 2, 1, 0), insn(0x15, 2, off=3, imm=4), insn(0x15, 2, off=2, imm=5),
              insn(0xb7, 0, imm=1), insn(0x95), insn(0xb7, 2, imm=5), insn(0x85, imm=59),
              insn(0xb7, 0, imm=1), insn(0x95)],
}[sys.argv[2]]
code = b"".join(prog); cbuf = ctypes.create_string_buffer(code); lic = ctypes.create_string_buffer(b"GPL")
log = ctypes.create_string_buffer(65536)
attr = struct.pack("<IIQQIIQ", 13, len(prog), ctypes.addressof(cbuf), ctypes.addressof(lic), 1, 65536, ctypes.addressof(log))
try:
    pfd = bpf(5, attr)
except OSError as e:
    sys.exit(f"load: {e}: {log.value.decode()}")
cg = os.open(sys.argv[1], os.O_RDONLY)
lfd = bpf(28, struct.pack("<IIII", pfd, cg, 3, 0))
print(f"attached {sys.argv[2]} prog fd {pfd} link {lfd}", flush=True)
signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True: signal.pause()
