#!/usr/bin/env python3
"""Print (and zero) what a diagnostic build of the agent measured inside its sock_ops program,
per kind of callback: ns per call and calls, `/h` for calls that entered the handler, `/e` for
those that returned in the entry. Build: `git apply docs/tools/op_time.patch`, then
`cargo build --release -p flow-agent` (and `git apply -R` after). Run:
`AFTER="python3 docs/tools/op_time.py" docs/tools/bulk_ns.sh target/release/flow-agent 3`
(bulk_ns.sh passes the agent's pid after each copy).
With docs/tools/op_steps.patch applied on top (`git apply docs/tools/op_time.patch
docs/tools/op_steps.patch`) it also prints, for the close of a walked
socket with records on and for the connect of a walked socket, the ns from one step of the
handler to the next (`STEPS` below; each includes ~50 ns of the marks' own clock reads; `push`
and `cookie` also count the establishments' records).
usage (root): op_time.py AGENT_PID"""
import ctypes, os, re, struct, sys
from bpf_raw import _libc, NR_BPF


def bpf(cmd, buf):
    r = _libc.syscall(NR_BPF, cmd, buf, len(buf))
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def elem(fd, cmd, value):
    """BPF_MAP_LOOKUP_ELEM (1) or BPF_MAP_UPDATE_ELEM (2) of key 0 with `value`'s buffer."""
    key = ctypes.create_string_buffer(struct.pack("<I", 0))
    bpf(cmd, ctypes.create_string_buffer(struct.pack("<IIQQQ", fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0), 128))


ids = set()
for f in os.listdir(f"/proc/{sys.argv[1]}/fdinfo"):
    try:
        m = re.search(r"map_id:\s*(\d+)", open(f"/proc/{sys.argv[1]}/fdinfo/{f}").read())
    except OSError:
        continue
    if m:
        ids.add(int(m.group(1)))
STATES = {1: "EST", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE",
          8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
OPS = {1: "TIMEOUT_INIT", 2: "RWND_INIT", 3: "CONNECT", 4: "ACTIVE_EST", 5: "PASSIVE_EST", 6: "NEEDS_ECN",
       7: "BASE_RTT", 8: "RTO", 9: "RETRANS", 11: "LISTEN", 12: "RTT", 13: "PARSE_HDR", 14: "HDR_OPT_LEN"}
# op_steps.patch's marks: the step that ends at each (slot groups no op or state uses).
STEPS = {16: "close:entry-to-branch", 17: "close:count+cb_flags", 18: "close:records_on", 19: "close:fin_arrived",
         20: "close:key", 23: "close:counters", 21: "record:call+cookie", 22: "record:push",
         24: "close:return", 25: "close:count_removed",
         48: "connect:entry-to-handler", 49: "connect:count", 50: "connect:is_inet", 51: "connect:netns_cookie",
         52: "connect:walked_list", 53: "connect:cb_flags", 54: "connect:count_inserted"}
for i in ids:
    fd = bpf(14, ctypes.create_string_buffer(struct.pack("<I", i), 128))  # BPF_MAP_GET_FD_BY_ID
    info = ctypes.create_string_buffer(128)
    bpf(15, ctypes.create_string_buffer(struct.pack("<IIQ", fd, 128, ctypes.addressof(info)), 128))
    if not info.raw[24:40].split(b"\0")[0].decode().endswith(".bss"):
        os.close(fd)
        continue
    size = struct.unpack("<I", info.raw[12:16])[0]
    v = ctypes.create_string_buffer(size)
    elem(fd, 1, v)
    vals = struct.unpack("<256Q", v.raw[16:16 + 2048])  # OP_TIME, after OP_T0's two words
    elem(fd, 2, ctypes.create_string_buffer(size))
    out, t, c = [], 0, 0
    for g in range(64):
        for h, tag in ((0, "h"), (2, "e")):
            ns, n = vals[g * 4 + h], vals[g * 4 + h + 1]
            if n:
                if g in STEPS:
                    name = STEPS[g]
                elif g >= 32:
                    name = "S->" + STATES.get(g - 32, str(g - 32))
                else:
                    name = OPS.get(g, str(g))
                out.append(f"{name}/{tag} {ns // n}x{n}")
                if g not in STEPS:  # the steps are parts of the calls counted by op
                    t, c = t + ns, c + n
    print("  in the program:", ", ".join(out), f"| mean {t // max(c, 1)} x {c}", flush=True)
