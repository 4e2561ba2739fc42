"""Issue 19: defects found by driving the daemon as a user and as an attacker would.

Each test drives the real binary over loopback sockets, with scaled-down
timings; each failed on the code before its fix.
"""
import json
import signal
import socket
import threading
import time

from conftest import RawBackend, embedding_body

EMBED = {"input": "hello", "model": "m"}


def up(name, backend, extra=""):
    return "[upstream %s]\nurl = http://127.0.0.1:%d\n%s" % (name, backend.port, extra)


def post_bytes(body, path="/v1/embeddings", extra=b""):
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


# ---- item 9: a client that half-closes after its request ---------------------

def test_half_closed_client_gets_the_upstream_answer(backend, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(), "delay": 0.2}
    a = start_akosha(up("b", backend))
    out = a.raw(post_bytes(json.dumps(EMBED).encode()), shut_wr=True)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert b"X-Akosha-Mode: real" in out
    assert out.endswith(embedding_body())


def test_half_closed_client_gets_the_fallback_answer(start_akosha):
    a = start_akosha("[fallback]\nmode = always\n")
    out = a.raw(post_bytes(json.dumps(EMBED).encode()), shut_wr=True)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    # Connection: close when the EOF came first; either way the answer, then the close.
    assert b"X-Akosha-Mode: fallback" in out
    assert len(json.loads(out.split(b"\r\n\r\n", 1)[1])["data"]) == 1


def test_half_close_before_the_request_is_whole_closes_quietly(start_akosha):
    a = start_akosha("[fallback]\nmode = always\n")
    partial = post_bytes(json.dumps(EMBED).encode())[:-5]
    assert a.raw(partial, shut_wr=True) == b""
    assert a.request("GET", "/healthz")[0] in (200, 404, 503)  # still serving


# ---- item 6: trace context passes through when akosha does not trace --------

def test_traceparent_and_tracestate_forwarded_unchanged_without_telemetry(backend, start_akosha):
    a = start_akosha(up("b", backend))
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ts = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    status, _, _ = a.post_json("/v1/embeddings", EMBED,
                               headers={"traceparent": tp, "tracestate": ts})
    assert status == 200
    headers = {k.lower(): v for k, v in backend.requests[-1][2].items()}
    assert headers["traceparent"] == tp
    assert headers["tracestate"] == ts


# ---- item 7: max_connections lowered by SIGHUP under load ------------------

def test_lowered_max_connections_is_honoured_under_load(backend, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(), "delay": 0.05}
    config = up("b", backend, "max_connections = %d\n")
    a = start_akosha(config % 64)
    stop = time.monotonic() + 4.0
    errors = []

    def load():
        while time.monotonic() < stop:
            try:
                status, _, _ = a.post_json("/v1/embeddings", EMBED, timeout=10)
                if status != 200:
                    errors.append(status)
            except OSError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=load) for _ in range(24)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = a.stats()["upstreams"][0]["pool"]
    assert before["active"] + before["idle"] > 4, before
    a.write_config(config % 4)
    a.signal(signal.SIGHUP)
    time.sleep(1.0)  # within a second of the reload
    seen = []
    while time.monotonic() < stop - 0.3:
        pool = a.stats()["upstreams"][0]["pool"]
        seen.append(pool["active"] + pool["idle"] + pool["connecting"])
        time.sleep(0.1)
    for t in threads:
        t.join(15)
    assert "applied" in a.logs()
    assert seen and max(seen) <= 4, seen
    assert not errors, errors[:5]


# ---- item 12: transfer codings other than chunked --------------------------

def test_request_with_gzip_transfer_coding_gets_501(start_akosha):
    a = start_akosha("[fallback]\nmode = always\n")
    out = a.raw(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501 "), out[:100]


class CodingBackend(RawBackend):
    """Answers with a gzip-then-chunked body, as a misconfigured backend would."""

    def handle(self, conn):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        payload = b"\x1f\x8b\x08\x00gzip-bytes"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
                     + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n")


def test_response_with_gzip_transfer_coding_is_never_relayed(start_akosha):
    b = CodingBackend()
    try:
        a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n" % b.port)
        status, headers, body = a.post_json("/v1/embeddings", EMBED)
        assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
        assert b"gzip-bytes" not in body
        status, _, body = a.request("GET", "/other")
        assert status == 502 and b"gzip-bytes" not in body
        assert "other than chunked" in a.logs()
    finally:
        b.stop()


# ---- item 13: leading empty lines -------------------------------------------

def test_empty_lines_before_the_request_line_are_ignored(start_akosha):
    a = start_akosha("[fallback]\nmode = always\n")
    out = a.raw(b"\r\n\r\n\r\n" + post_bytes(json.dumps(EMBED).encode(),
                                                          extra=b"Connection: close\r\n"))
    assert out.startswith(b"HTTP/1.1 200 "), out[:100]
    assert "(null)" not in a.logs()


# ---- item 11: Host ------------------------------------------------------------

def test_host_key_sets_the_upstream_host_header(backend, start_akosha):
    a = start_akosha(up("b", backend, "host = embed.internal\n"))
    assert a.post_json("/v1/embeddings", EMBED)[0] == 200
    headers = {k.lower(): v for k, v in backend.requests[-1][2].items()}
    assert headers["host"] == "embed.internal"


def test_an_invalid_host_key_is_refused_by_check(backend, start_akosha, tmp_path):
    import subprocess
    from conftest import AKOSHA_BIN
    path = tmp_path / "bad.conf"
    path.write_text(up("b", backend, "host = a b/c\n"))
    r = subprocess.run([AKOSHA_BIN, "-t", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "host: not a valid Host value" in r.stderr


# ---- item 4: the learned-dimension table under a flood of made-up names ----

def test_a_flood_of_made_up_models_does_not_evict_a_learned_one(backend, start_akosha):
    a = start_akosha(up("b", backend, "retries = 0\n"))

    def learn(model, dim):
        backend.default = {"status": 200, "body": embedding_body(dim=dim, model=model)}
        status, headers, _ = a.post_json("/v1/embeddings", {"input": "x", "model": model})
        assert status == 200 and headers["X-Akosha-Mode"] == "real"

    for i in range(256):
        learn("made-up-%d" % i, 8)  # the table is full
    learn("real", 1536)
    for i in range(256, 300):
        learn("made-up-%d" % i, 8)
    a.admin("POST", "/upstreams/b/open")
    status, headers, data = a.post_json("/v1/embeddings", {"input": "x", "model": "real"})
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    assert len(json.loads(data)["data"][0]["embedding"]) == 1536
