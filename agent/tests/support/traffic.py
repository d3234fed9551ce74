#!/usr/bin/env python3
"""Traffic for flow-agent's kernel tests. Each mode prints one JSON line with what it moved, so the
test compares the agent's report against the bytes this program itself wrote and read.

  serve   --addr A --port P --conns N [--reply BYTES] [--echo] [--expect BYTES]
  connect --addr A --port P --conns N --send BYTES [--parallel] [--hold SECS] [--send-first] [--timeout SECS]
          [--server-closes SECS]

With `serve --expect N` the server reads N bytes (not to the end), replies and closes first, as
an HTTP server with "Connection: close" does; the client then gives `connect --server-closes
SECS`: it sends without shutting its side, reads to the end and closes SECS later.
  pingpong --addr A --port P --secs S [--size B] [--interval-ms M]
  hidden --port P --secs S --after S2 --bind PATH [--size B] [--interval-ms M]

`hidden` opens both ends of a connection on 127.0.0.1 in a new network namespace that no process
stays in and no file is bound to (so `--walk-netns-all` cannot find it), runs pingpong over it
for --secs, then binds the namespace at PATH (run it in the agent's mount namespace, not under
`ip netns exec`, so that the agent sees the mount) and runs pingpong for --after seconds more; it prints
the rounds of each phase and unbinds PATH.
"""
import argparse, ctypes, errno, json, os, socket, subprocess, sys, threading, time


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def read_all(c):
    n = 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            return n
        n += len(d)


def serve(a):
    s = socket.socket(family(a.addr))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.addr, a.port))
    s.listen(1024)
    print(json.dumps({"ready": True}), flush=True)
    totals = {"received": 0, "sent": 0, "conns": 0}
    lock = threading.Lock()

    def handle(c):
        if a.echo:
            got = sent = 0
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                got += len(d)
                c.sendall(d)
                sent += len(d)
        elif a.expect:
            got = 0
            while got < a.expect:
                d = c.recv(min(1 << 16, a.expect - got))
                if not d:
                    break
                got += len(d)
            c.sendall(b"r" * a.reply)
            sent = a.reply
        else:
            got = read_all(c)
            c.sendall(b"r" * a.reply)
            sent = a.reply
        c.close()
        with lock:
            totals["received"] += got
            totals["sent"] += sent
            totals["conns"] += 1

    threads = []
    for _ in range(a.conns):
        c, _ = s.accept()
        t = threading.Thread(target=handle, args=(c,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    s.close()
    print(json.dumps(totals), flush=True)


def connect(a):
    out = {"sent": 0, "received": 0, "ok": 0, "errors": {}}
    lock = threading.Lock()

    def one():
        c = socket.socket(family(a.addr))
        c.settimeout(a.timeout)
        try:
            c.connect((a.addr, a.port))
        except OSError as e:
            name = errno.errorcode.get(e.errno, "ETIMEDOUT" if isinstance(e, socket.timeout) else str(e))
            with lock:
                out["errors"][name] = out["errors"].get(name, 0) + 1
            c.close()
            return
        c.settimeout(None)
        if a.send_first:
            c.sendall(b"s" * a.send)
        if a.hold:
            time.sleep(a.hold)
        if not a.send_first:
            c.sendall(b"s" * a.send)
        if a.server_closes:
            got = read_all(c)
            time.sleep(a.server_closes)
        else:
            c.shutdown(socket.SHUT_WR)
            got = read_all(c)
        c.close()
        with lock:
            out["sent"] += a.send
            out["received"] += got
            out["ok"] += 1

    if a.parallel:
        ts = [threading.Thread(target=one) for _ in range(a.conns)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    else:
        for _ in range(a.conns):
            one()
    print(json.dumps(out), flush=True)


def pingpong(a):
    c = socket.create_connection((a.addr, a.port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"p" * a.size
    sent = got = rounds = 0
    # With --idle-secs: a second round of --secs after that long with nothing sent.
    for phase in range(2 if a.idle_secs else 1):
        if phase:
            time.sleep(a.idle_secs)
        end = time.time() + a.secs
        while time.time() < end:
            c.sendall(msg)
            sent += len(msg)
            need = len(msg)
            while need:
                d = c.recv(need)
                if not d:
                    raise SystemExit("server closed early")
                need -= len(d)
                got += len(d)
            rounds += 1
            time.sleep(a.interval_ms / 1000)
    c.shutdown(socket.SHUT_WR)
    got += read_all(c)
    c.close()
    print(json.dumps({"sent": sent, "received": got, "rounds": rounds}), flush=True)


def hidden(a):
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    if libc.unshare(clone_newnet) != 0:
        raise SystemExit(f"unshare: {os.strerror(ctypes.get_errno())}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    ls = socket.socket()
    ls.bind(("127.0.0.1", a.port))
    ls.listen(1)
    c = socket.create_connection(("127.0.0.1", a.port))
    s, _ = ls.accept()
    ls.close()
    # Back home: the sockets stay in the new namespace, which nothing else holds.
    if libc.setns(home, clone_newnet) != 0:
        raise SystemExit(f"setns: {os.strerror(ctypes.get_errno())}")
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"p" * a.size
    sent = 0
    rounds = []
    for phase in range(2):
        if phase:
            bind = f"touch {a.bind} && mount --bind /proc/{os.getpid()}/fd/{ns} {a.bind}"
            subprocess.run(["sh", "-c", bind], check=True)
        n = 0
        end = time.time() + (a.after if phase else a.secs)
        while time.time() < end:
            c.sendall(msg)
            need = len(msg)
            while need:
                d = s.recv(need)
                need -= len(d)
                s.sendall(d)
            need = len(msg)
            while need:
                need -= len(c.recv(need))
            sent += len(msg)
            n += 1
            time.sleep(a.interval_ms / 1000)
        rounds.append(n)
    c.close()
    s.close()
    subprocess.run(["sh", "-c", f"umount {a.bind}; rm -f {a.bind}"], check=True)
    print(json.dumps({"sent": sent, "rounds": rounds}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "connect", "pingpong", "hidden"])
    p.add_argument("--addr")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--reply", type=int, default=0)
    p.add_argument("--echo", action="store_true")
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--parallel", action="store_true")
    p.add_argument("--hold", type=float, default=0)
    p.add_argument("--send-first", action="store_true", help="send before the hold, not after")
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--server-closes", type=float, default=0)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--secs", type=float, default=3)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--interval-ms", type=float, default=20)
    p.add_argument("--idle-secs", type=float, default=0)
    p.add_argument("--bind")
    p.add_argument("--after", type=float, default=0)
    a = p.parse_args()
    {"serve": serve, "connect": connect, "pingpong": pingpong, "hidden": hidden}[a.mode](a)


if __name__ == "__main__":
    main()
