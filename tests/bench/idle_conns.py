#!/usr/bin/env python3
"""Hold many idle keep-alive connections open on a proxy and report its memory.

Each connection sends one POST /v1/embeddings and reads the whole answer, so
the proxy has seen a real request on it (buffers, parser state), then stays
open and idle. With all of them open, VmRSS and VmHWM of the given processes
are read from /proc and printed as one line:

    IDLE conns=1000 ok=1000 rss_kb=... hwm_kb=...

usage: idle_conns.py PORT COUNT PID[,PID...]
"""
import socket
import sys
import time

BODY = (b'{"model":"bench-model","input":"the quarterly report shows that customer support '
        b'tickets about billing were resolved faster after the team added a search over past '
        b'answers and the median wait fell","encoding_format":"float"}')
DEADLINE_S = 60.0
BATCH = 25


def status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def read_answer(sock):
    """Reads one HTTP answer with a Content-Length; True when it was a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        rest += chunk
    return head.startswith(b"HTTP/1.1 200")


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    pids = [int(p) for p in sys.argv[3].split(",")]
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
    socks, ok = [], 0
    start = time.monotonic()
    while len(socks) < count and time.monotonic() - start < DEADLINE_S:
        # a few in flight at once: quick, yet far from a burst of 1,000
        batch = [socket.create_connection(("127.0.0.1", port), timeout=5)
                 for _ in range(min(BATCH, count - len(socks)))]
        for s in batch:
            s.sendall(request)
        for s in batch:
            if read_answer(s):
                ok += 1
        socks.extend(batch)
    time.sleep(0.5)  # let the proxy settle (pool trimming, timers)
    rss = sum(status_kb(p, "VmRSS") for p in pids)
    hwm = sum(status_kb(p, "VmHWM") for p in pids)
    print("IDLE conns=%d ok=%d rss_kb=%d hwm_kb=%d" % (len(socks), ok, rss, hwm), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
