"""The admin listener under slow peers, and HEAD on its endpoints.

Real binary, loopback only. Trickling peers open the admin table's every slot
and send a byte every half second without ever finishing a head; probes must
still be answered promptly, and the tricklers cut off by the head deadline
counted from accept (not restarted by each byte). Every run is bounded to a
few seconds."""
import http.client
import os
import re
import socket
import threading
import time

ADMIN_H = os.path.join(os.path.dirname(__file__), "..", "..", "src", "admin.h")


def admin_define(name, default):
    try:
        with open(ADMIN_H) as f:
            m = re.search(r"#define %s (\d+)" % name, f.read())
        return int(m.group(1)) if m else default
    except OSError:
        return default


MAX_CONNECTIONS = admin_define("ADMIN_MAX_CONNECTIONS", 64)
HEAD_TIMEOUT_S = admin_define("ADMIN_HEAD_TIMEOUT_S", 5)
TRICKLE_START = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "


def upstream_conf(backend):
    return "[upstream main]\nurl = http://127.0.0.1:%d\n" % backend.port


class Tricklers:
    """n connections that send one byte each every `period` seconds, never
    finishing the head; one closed under them is opened again, so the admin
    table stays full for as long as they run."""

    def __init__(self, port, n, period=0.5):
        self.port, self.period = port, period
        self.socks = [self.open() for _ in range(n)]
        self.stop_event = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        s.sendall(TRICKLE_START)
        return s

    def run(self):
        while not self.stop_event.wait(self.period):
            for i, s in enumerate(self.socks):
                try:
                    s.sendall(b"a")
                except OSError:
                    s.close()
                    try:
                        self.socks[i] = self.open()
                        self.reopened += 1
                    except OSError:
                        pass

    def stop(self):
        self.stop_event.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def timed_healthz(port):
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return resp.status, body, time.monotonic() - t0


def test_healthz_answered_while_trickling_peers_fill_the_admin_table(
        backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    tricklers = Tricklers(a.admin_port, MAX_CONNECTIONS)
    try:
        time.sleep(0.3)  # let the server accept them all: the table is full
        # The first probe, then more while the tricklers reconnect and keep
        # the table full; about three seconds in all.
        for _ in range(8):
            status, body, took = timed_healthz(a.admin_port)
            assert status == 200 and body == b'{"status":"ok"}'
            assert took < 1.0, took
            time.sleep(0.3)
    finally:
        tricklers.stop()
    assert a.proc.poll() is None
    assert "closed" in a.logs() and "still reading a head" in a.logs()


def test_trickling_admin_connections_are_closed_by_the_head_deadline(
        backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    trickling = [socket.create_connection(("127.0.0.1", a.admin_port), timeout=0.5)
                 for _ in range(3)]
    silent = socket.create_connection(("127.0.0.1", a.admin_port), timeout=0.5)
    t0 = time.monotonic()
    for s in trickling:
        s.sendall(TRICKLE_START)
    answers = {s: b"" for s in trickling}
    closed_at = {}
    limit = t0 + HEAD_TIMEOUT_S + 1.5
    while len(closed_at) < len(trickling) + 1 and time.monotonic() < limit:
        for s in trickling + [silent]:
            if s in closed_at:
                continue
            if s is not silent:
                try:
                    s.sendall(b"a")
                except OSError:
                    closed_at[s] = time.monotonic() - t0
                    continue
            s.settimeout(0.1)
            try:
                data = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if data and s is not silent:
                answers[s] += data
                continue
            closed_at[s] = time.monotonic() - t0
        time.sleep(0.3)
    for s in trickling + [silent]:
        s.close()
    assert len(closed_at) == len(trickling) + 1, \
        "still open %.1fs after accept: %r" % (HEAD_TIMEOUT_S + 1.5, closed_at)
    for s, when in closed_at.items():
        # the deadline counts from accept and is not restarted by the bytes
        assert HEAD_TIMEOUT_S - 0.5 <= when <= HEAD_TIMEOUT_S + 1.5, when
    for s in trickling:
        # an answer may be lost to a reset when a byte crossed the close
        assert answers[s] == b"" or answers[s].startswith(b"HTTP/1.1 408 "), answers[s]
    # still answering afterwards
    assert a.admin("GET", "/healthz")[0] == 200


def raw_admin(port, request):
    """Everything the admin listener sends for one request, until it closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(request)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def split_head(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip()
    return status, fields, body


def test_head_on_admin_endpoints_sends_the_get_headers_and_no_body(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    for path in ("/healthz", "/readyz", "/stats", "/config", "/metrics", "/nope"):
        get_status, get_fields, get_body = split_head(
            raw_admin(a.admin_port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()))
        assert int(get_fields["content-length"]) == len(get_body) > 0
        status, fields, after_head = split_head(
            raw_admin(a.admin_port, b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()))
        # the connection closes right after the head: no body bytes at all
        assert after_head == b"", (path, after_head[:80])
        assert status == get_status, path
        assert fields["content-type"] == get_fields["content-type"], path
        assert fields["connection"] == "close"
        if path in ("/stats", "/metrics"):
            # their bodies change between two requests (uptime, counters)
            assert int(fields["content-length"]) > 0, path
        else:
            assert fields["content-length"] == get_fields["content-length"], path
