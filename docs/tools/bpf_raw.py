"""The bpf(2) calls the Python tools in this directory make, without libbpf: a raw syscall, an
instruction encoder, loading a program, and linking a sock_ops one to a cgroup."""
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


def load_prog(prog_type, insns, expected_attach_type=0, attach_btf_id=0):
    """Load `insns` as a GPL program of type `prog_type` (exits with the verifier's log if the
    kernel refuses it); returns its fd."""
    code = ctypes.create_string_buffer(b"".join(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)

    def load(level):
        attr = bytearray(128)
        struct.pack_into("<IIQQIIQ", attr, 0, prog_type, len(insns), ctypes.addressof(code), ctypes.addressof(lic),
                         level, 65536 if level else 0, ctypes.addressof(log) if level else 0)
        struct.pack_into("<I", attr, 68, expected_attach_type)
        struct.pack_into("<I", attr, 108, attach_btf_id)
        return bpf(5, bytes(attr))  # BPF_PROG_LOAD

    try:
        return load(0)  # without a log: a long program's would not fit in the buffer
    except OSError:
        try:
            return load(1)
        except OSError as e:
            sys.exit(f"load: {e}: {log.value.decode()[-4000:]}")


def attach_sock_ops(cgroup, insns):
    """Load `insns` as a GPL sock_ops program and link it to the cgroup directory `cgroup`;
    returns (program fd, link fd)."""
    pfd = load_prog(13, insns)  # BPF_PROG_TYPE_SOCK_OPS
    cg = os.open(cgroup, os.O_RDONLY)
    lfd = bpf(28, struct.pack("<IIII", pfd, cg, 3, 0))  # BPF_LINK_CREATE, BPF_CGROUP_SOCK_OPS
    return pfd, lfd
