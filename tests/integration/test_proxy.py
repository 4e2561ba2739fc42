"""Issue 2: the proxy itself - passthrough, pooling, limits, errors, signals, reload."""
import hashlib
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import AKOSHA_BIN, embedding_body, free_port

UPSTREAM = """
[upstream main]
url = http://127.0.0.1:{bport}
"""


def upstream_conf(backend, extra=""):
    return UPSTREAM.replace("{bport}", str(backend.port)) + extra


def error_shape(data):
    obj = json.loads(data)
    assert set(obj) == {"error"}
    assert {"message", "type", "param", "code"} <= set(obj["error"])
    return obj["error"]


def test_post_embeddings_passes_status_headers_and_body(backend, start_akosha):
    body = embedding_body(dim=8)
    backend.default = {"status": 200, "body": body, "headers": {"X-Backend": "yes"}}
    a = start_akosha(upstream_conf(backend))
    status, headers, data = a.post_json("/v1/embeddings?x=1", {"input": "hi", "model": "m"},
                                        headers={"X-Request-Id": "req-123"})
    assert status == 200
    assert data == body
    assert headers["X-Backend"] == "yes"
    assert headers["X-Akosha-Upstream"] == "main"
    assert headers["X-Akosha-Mode"] == "real"
    assert headers["X-Request-Id"] == "req-123"
    method, path, h, sent, _ = backend.requests[-1]
    assert method == "POST" and path == "/v1/embeddings?x=1"
    assert json.loads(sent) == {"input": "hi", "model": "m"}
    assert h["Host"] == "127.0.0.1:%d" % backend.port
    assert h["X-Request-Id"] == "req-123"
    assert h["X-Forwarded-For"] == "127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"


def test_request_id_is_generated_when_absent(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    status, headers, _ = a.request("GET", "/health")
    assert status == 200
    rid = headers["X-Request-Id"]
    assert len(rid) == 32
    assert backend.requests[-1][2]["X-Request-Id"] == rid


def test_hop_by_hop_headers_are_removed(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    a.request("GET", "/x", headers={"Connection": "keep-alive, X-Secret-Hop",
                                    "X-Secret-Hop": "1", "Keep-Alive": "timeout=5",
                                    "TE": "trailers", "X-Normal": "kept"})
    h = backend.requests[-1][2]
    assert "X-Secret-Hop" not in h and "Keep-Alive" not in h and "TE" not in h
    assert h["X-Normal"] == "kept"


def test_configured_headers_are_added_and_override(backend, start_akosha):
    a = start_akosha(upstream_conf(backend, "header = Authorization: Bearer ${TEST_KEY}\n"),
                     env={"TEST_KEY": "sk-test-123"})
    a.request("GET", "/x", headers={"Authorization": "Bearer caller"})
    h = backend.requests[-1][2]
    assert h["Authorization"] == "Bearer sk-test-123"
    # the secret never shows in /config or logs
    _, _, cfg = a.admin("GET", "/config")
    assert b"sk-test-123" not in cfg
    assert b"<redacted>" in cfg
    assert "sk-test-123" not in a.logs()


def test_upstream_connections_are_reused(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    for _ in range(5):
        status, _, _ = a.post_json("/v1/embeddings", {"input": "x"})
        assert status == 200
    conn_ids = {r[4] for r in backend.requests}
    assert len(conn_ids) == 1, conn_ids
    pool = a.stats()["upstreams"][0]["pool"]
    assert pool["idle"] == 1


def test_idle_upstream_connections_close_after_idle_timeout(backend, start_akosha):
    """A pooled connection unused for idle_timeout is closed; one in use never is."""
    a = start_akosha(upstream_conf(backend, "idle_timeout = 1s\n"))
    assert a.post_json("/v1/embeddings", {"input": "x"})[0] == 200
    assert a.stats()["upstreams"][0]["pool"]["idle"] == 1
    # busy for longer than idle_timeout: the sweep leaves it alone
    backend.script({"status": 200, "body": embedding_body(), "delay": 2.2})
    assert a.post_json("/v1/embeddings", {"input": "x"})[0] == 200
    assert len({r[4] for r in backend.requests}) == 1, "the slow request reused the connection"
    assert a.stats()["upstreams"][0]["pool"]["idle"] == 1
    deadline = time.time() + 5
    while time.time() < deadline and a.stats()["upstreams"][0]["pool"]["idle"] != 0:
        time.sleep(0.1)
    idle_for = 5 - (deadline - time.time())
    assert a.stats()["upstreams"][0]["pool"]["idle"] == 0
    assert 0.8 < idle_for < 2.6, idle_for
    # the next request opens a new connection
    assert a.post_json("/v1/embeddings", {"input": "x"})[0] == 200
    assert len({r[4] for r in backend.requests}) == 2


def test_client_keep_alive_serves_several_requests(backend, start_akosha):
    import http.client
    a = start_akosha(upstream_conf(backend))
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
    for i in range(3):
        conn.request("GET", "/k%d" % i)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()
    assert [r[1] for r in backend.requests] == ["/k0", "/k1", "/k2"]


def test_pipelined_requests_are_answered_in_order(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    out = a.raw(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200") == 2
    assert [r[1] for r in backend.requests] == ["/p1", "/p2"]


def test_body_too_large_is_413(backend, start_akosha):
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nmax_body_size = 2K\n" +
                     upstream_conf(backend))
    status, _, data = a.request("POST", "/v1/embeddings", body=b"x" * 5000)
    assert status == 413
    assert error_shape(data)["type"] == "request_too_large"
    assert backend.count() == 0


def test_chunked_body_too_large_is_413(backend, start_akosha):
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nmax_body_size = 1K\n" +
                     upstream_conf(backend))
    chunk = b"800\r\n" + b"a" * 0x800 + b"\r\n"
    out = a.raw(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunk + b"0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413")


def test_chunked_request_body_is_forwarded_with_length(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    out = a.raw(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    _, _, h, body, _ = backend.requests[-1]
    assert body == b"hello world"
    assert h["Content-Length"] == "11"
    assert "Transfer-Encoding" not in h


def test_headers_too_large_is_431(backend, start_akosha):
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nmax_header_size = 2K\n" +
                     upstream_conf(backend))
    out = a.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    assert error_shape(out.split(b"\r\n\r\n", 1)[1])["type"] == "request_header_fields_too_large"


def test_malformed_request_is_400_and_affects_only_its_connection(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    out = a.raw(b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    error_shape(out.split(b"\r\n\r\n", 1)[1])
    status, _, _ = a.request("GET", "/still-fine")
    assert status == 200


def test_absolute_form_and_connect_are_refused(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    out = a.raw(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    assert b"absolute-form" in out
    out = a.raw(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405")
    assert backend.count() == 0


def test_smuggling_framing_is_refused(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    cases = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for raw in cases:
        out = a.raw(raw)
        assert out.startswith(b"HTTP/1.1 400"), (raw, out[:60])
        assert b"Connection: close" in out
    assert backend.count() == 0


def test_upstream_down_gives_502_or_503(start_akosha):
    dead = free_port()
    a = start_akosha("[upstream dead]\nurl = http://127.0.0.1:%d\nretries = 0\n" % dead)
    status, _, data = a.request("GET", "/v1/models")
    assert status == 502
    err = error_shape(data)
    assert "dead" in err["message"]


def test_upstream_hang_gives_504_at_call_timeout(backend, start_akosha):
    backend.default = {"action": "hang"}
    a = start_akosha(upstream_conf(backend, "call_timeout = 500ms\nretries = 0\n"))
    t0 = time.time()
    status, _, data = a.request("GET", "/slow")
    elapsed = time.time() - t0
    assert status == 504
    assert 0.4 <= elapsed < 2.0, elapsed
    error_shape(data)


def test_request_timeout_bounds_the_whole_request(backend, start_akosha):
    backend.default = {"action": "hang"}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = 700ms\n" +
                     upstream_conf(backend, "call_timeout = 10s\n"))
    t0 = time.time()
    status, _, _ = a.request("GET", "/slow")
    assert status == 504
    assert time.time() - t0 < 2.0


def test_check_config_reports_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[proxy]\nlisten = 127.0.0.1:1\nmax_conections = 5\n\n[upstream a]\n")
    p = subprocess.run([AKOSHA_BIN, "-t", "-c", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1
    assert "bad.conf:3: [proxy] max_conections: unknown key (did you mean 'max_connections'?)" \
        in p.stderr
    assert "bad.conf:5: [upstream a] url: required key is missing" in p.stderr
    good = tmp_path / "good.conf"
    good.write_text("[upstream a]\nurl = http://127.0.0.1:9\n")
    p = subprocess.run([AKOSHA_BIN, "-t", "-c", str(good)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_cli_version_help_and_bad_option():
    p = subprocess.run([AKOSHA_BIN, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("akosha ")
    p = subprocess.run([AKOSHA_BIN, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--check-config" in p.stdout
    p = subprocess.run([AKOSHA_BIN, "--bogus"], capture_output=True, text=True)
    assert p.returncode == 2


def test_refuses_to_start_on_bad_config(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[proxy]\nlisten = nowhere\n")
    p = subprocess.run([AKOSHA_BIN, "-c", str(bad)], capture_output=True, text=True, timeout=10)
    assert p.returncode == 1
    assert "bad.conf:2" in p.stderr


def test_sighup_good_file_changes_behaviour(backend, backend2, start_akosha):
    backend.default = {"status": 200, "body": b"one"}
    backend2.default = {"status": 200, "body": b"two"}
    a = start_akosha(upstream_conf(backend))
    assert a.request("GET", "/")[2] == b"one"
    a.write_config("[upstream second]\nurl = http://127.0.0.1:%d\n" % backend2.port)
    a.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and a.request("GET", "/")[2] != b"two":
        time.sleep(0.05)
    assert a.request("GET", "/")[2] == b"two"
    assert a.stats()["config_reloads"]["success"] == 1


def test_sighup_bad_file_keeps_the_old_config(backend, start_akosha):
    backend.default = {"status": 200, "body": b"one"}
    a = start_akosha(upstream_conf(backend))
    a.write_config("[upstream broken]\nurl = gopher://x\n")
    a.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and a.stats()["config_reloads"]["failure"] == 0:
        time.sleep(0.05)
    assert a.stats()["config_reloads"]["failure"] == 1
    assert a.request("GET", "/")[2] == b"one"
    assert "reload failed" in a.logs()


def test_sighup_rebinds_a_changed_listen(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    new_port = free_port()
    old_port = a.port
    a.write_config("[proxy]\nlisten = 127.0.0.1:%d\n" % new_port + upstream_conf(backend))
    a.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and a.stats()["config_reloads"]["success"] == 0:
        time.sleep(0.05)
    a.port = new_port
    assert a.request("GET", "/")[0] == 200
    a.port = old_port
    with pytest.raises(OSError):
        a.request("GET", "/")


def test_sighup_does_not_drop_requests_in_flight(backend, start_akosha):
    backend.script({"status": 200, "body": b"slow", "delay": 1.0})
    a = start_akosha(upstream_conf(backend))
    result = {}

    def call():
        result["r"] = a.request("GET", "/inflight")

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    a.signal(signal.SIGHUP)
    t.join(10)
    assert result["r"][0] == 200 and result["r"][2] == b"slow"


def test_sigterm_lets_an_in_flight_request_finish(backend, start_akosha):
    backend.script({"status": 200, "body": b"finished", "delay": 1.0})
    a = start_akosha(upstream_conf(backend))
    result = {}

    def call():
        result["r"] = a.request("GET", "/inflight")

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    a.signal(signal.SIGTERM)
    time.sleep(0.2)
    # not accepting any more
    with pytest.raises(OSError):
        a.request("GET", "/late", timeout=2)
    t.join(10)
    assert result["r"][0] == 200 and result["r"][2] == b"finished"
    assert a.proc.wait(10) == 0


def test_admin_endpoints(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    assert a.admin("GET", "/healthz")[0] == 200
    assert a.admin("GET", "/readyz")[0] == 200
    st = a.stats()
    assert st["version"] and st["uptime_seconds"] >= 0
    assert st["upstreams"][0]["name"] == "main"
    cfg = json.loads(a.admin("GET", "/config")[2])
    assert cfg["upstreams"]["main"]["url"] == "http://127.0.0.1:%d" % backend.port
    assert cfg["proxy"]["max_body_size"] == "16M"
    assert a.admin("GET", "/nope")[0] == 404
    # admin routes are not on the traffic listener: they go upstream like any path
    a.request("GET", "/stats")
    assert backend.requests[-1][1] == "/stats"


def test_unix_socket_listener(backend, start_akosha, tmp_path):
    import socket
    path = str(tmp_path / "akosha.sock")
    a = start_akosha("[proxy]\nlisten = unix:%s\n" % path + upstream_conf(backend))
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        out += d
    s.close()
    assert out.startswith(b"HTTP/1.1 200")


def test_max_connections_is_enforced(backend, start_akosha):
    import socket
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nmax_connections = 2\n" +
                     upstream_conf(backend))
    held = [socket.create_connection(("127.0.0.1", a.port)) for _ in range(2)]
    time.sleep(0.2)
    # Over the limit the connection gets a 503 at once, before it sends anything.
    s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
    out = s.recv(4096)
    s.close()
    assert out.startswith(b"HTTP/1.1 503")
    assert b"max_connections" in out
    for s in held:
        s.close()
    time.sleep(0.2)
    assert a.request("GET", "/")[0] == 200


def test_slow_header_drip_is_closed_at_client_timeout(backend, start_akosha):
    import socket
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nclient_timeout = 1s\n" +
                     upstream_conf(backend))
    s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
    t0 = time.time()
    out = b""
    try:
        for ch in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            s.send(bytes([ch]))
            time.sleep(0.05)
    except OSError:
        pass
    try:
        out = s.recv(4096)
    except OSError:
        pass
    s.close()
    assert time.time() - t0 < 4
    assert out == b"" or out.startswith(b"HTTP/1.1 408")


def test_refused_requests_are_counted_once(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    a.raw(b"GARBAGE\r\n\r\n")
    a.raw(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
    a.request("GET", "/fine")
    _, _, m = a.admin("GET", "/metrics")
    assert b'akosha_requests_total{route="other",code="400",model="other"} 2' in m
    assert b'akosha_requests_total{route="other",code="200",model="other"} 1' in m
    assert a.stats()["requests_total"] == 3


def test_stalled_body_gets_408_at_client_timeout(backend, start_akosha):
    import socket
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nclient_timeout = 1s\n" +
                     upstream_conf(backend))
    s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
    s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    t0 = time.time()
    out = s.recv(4096)
    s.close()
    assert out.startswith(b"HTTP/1.1 408")
    assert 0.8 < time.time() - t0 < 3
    assert backend.count() == 0


def test_too_many_headers_is_431(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    out = a.raw(head + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    assert backend.count() == 0


class CountingBackend:
    """Answers one request with `size` bytes, counting what the kernel took."""

    def __init__(self, size):
        import socket
        self.size = size
        self.sent = 0
        self.done = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.listener.accept()
        conn.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % self.size)
        piece = bytes(range(256)) * 256  # 64 KiB, position-dependent bytes
        try:
            while self.sent < self.size:
                n = conn.send(piece[:min(len(piece), self.size - self.sent)])
                self.sent += n
                piece = piece[n:] + piece[:n]
        except OSError:
            pass
        self.done.set()
        conn.close()

    def close(self):
        self.listener.close()


def test_slow_client_pauses_the_upstream_and_gets_every_byte(start_akosha):
    """A client that stops reading holds the upstream back (bounded buffering),
    and when it reads again the whole answer arrives intact."""
    import socket
    size = 48 << 20
    up = CountingBackend(size)
    a = start_akosha(UPSTREAM.replace("{bport}", str(up.port)))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(30)
    s.connect(("127.0.0.1", a.port))
    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(1.5)
    # Kernel buffers on the way hold some megabytes; akosha itself may hold
    # about 256 KiB. Unpaused, it would have read all 48 MiB by now.
    stalled_at = up.sent
    assert stalled_at < size // 2, stalled_at
    assert not up.done.is_set()
    got = bytearray()
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    h = hashlib.sha256(body)
    n = len(body)
    while n < size:
        chunk = s.recv(1 << 20)
        assert chunk, "connection closed after %d of %d bytes" % (n, size)
        h.update(chunk)
        n += len(chunk)
    s.close()
    up.close()
    expect = hashlib.sha256()
    piece = bytes(range(256)) * (size // 256)
    expect.update(piece)
    assert n == size
    assert h.hexdigest() == expect.hexdigest()
