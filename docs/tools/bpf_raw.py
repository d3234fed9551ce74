"""The bpf(2) calls the Python tools in this directory make, without libbpf: a raw syscall, an
instruction encoder, and loading a sock_ops program and linking it to a cgroup."""
import ctypes, os, struct, sys

_libc = ctypes.CDLL(None, use_errno=True)
NR_BPF = 321  # x86_64


def bpf(cmd, attr):
    """The bpf(2) command `cmd` with the packed attribute bytes `attr`; returns its result."""
    buf = ctypes.create_string_buffer(attr, 128)
    r = _libc.syscall(NR_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def insn(code, dst=0, src=0, off=0, imm=0):
    """One eBPF instruction."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def attach_sock_ops(cgroup, insns):
    """Load `insns` as a GPL sock_ops program and link it to the cgroup directory `cgroup`
    (exits with the verifier's log if the kernel refuses it); returns (program fd, link fd)."""
    code = ctypes.create_string_buffer(b"".join(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack("<IIQQIIQ", 13, len(insns), ctypes.addressof(code), ctypes.addressof(lic), 1, 65536,
                       ctypes.addressof(log))
    try:
        pfd = bpf(5, attr)  # BPF_PROG_LOAD
    except OSError as e:
        sys.exit(f"load: {e}: {log.value.decode()}")
    cg = os.open(cgroup, os.O_RDONLY)
    lfd = bpf(28, struct.pack("<IIII", pfd, cg, 3, 0))  # BPF_LINK_CREATE, BPF_CGROUP_SOCK_OPS
    return pfd, lfd
