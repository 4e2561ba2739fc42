"""Fixtures for black-box tests: the real akosha binary, real loopback sockets.

Every server here listens on 127.0.0.1 only. Each test gets fresh ports,
a temporary config file, and a fault-injecting backend it can script.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

AKOSHA_BIN = os.environ.get("AKOSHA_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "src", "akosha")


_ports_given = set()


def free_port():
    """A loopback port nothing listens on, never one handed out before.

    bind(0) can give the port it gave a moment ago once that socket is
    closed; two calls in a row (proxy and admin) then collide."""
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("no fresh loopback port in 100 tries")


def embedding_body(dim=4, n=1, model="test-model"):
    data = [{"object": "embedding", "index": i,
             "embedding": [0.5] * dim} for i in range(n)]
    return json.dumps({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()


class Backend:
    """A scriptable HTTP/1.1 backend on loopback.

    `behaviours` is a list consumed one per request; when empty, `default`
    is used. A behaviour is a dict: status, body, headers, delay (seconds
    before answering), action ("reset" closes with no answer, "hang" never
    answers, "garbage" sends a malformed response), fn (fn(path, body) computes
    the answer's body from the request).
    """

    def __init__(self, port=None):
        self.port = port or free_port()
        self.behaviours = []
        self.default = {"status": 200, "body": embedding_body()}
        self.requests = []  # (method, path, headers, body, connection id)
        self.lock = threading.Lock()
        self.connections = 0
        self.hang_event = threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                # Head and body go in separate writes: without this, Nagle holds the
                # body for akosha's delayed ACK, 40 ms a request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with backend.lock:
                    backend.connections += 1
                    self.conn_id = backend.connections

            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with backend.lock:
                    backend.requests.append(
                        (self.command, self.path, dict(self.headers.items()), body, self.conn_id))
                    b = backend.behaviours.pop(0) if backend.behaviours else backend.default
                if b.get("delay"):
                    time.sleep(b["delay"])
                action = b.get("action")
                if action == "reset":
                    self.close_connection = True
                    sock = self.connection
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
                    return
                if action == "hang":
                    backend.hang_event.wait(30)
                    self.close_connection = True
                    return
                if action == "garbage":
                    self.wfile.write(b"HTTP/1.1 2OO NOPE\r\n\r\n")
                    self.close_connection = True
                    return
                payload = b.get("body", b"")
                if b.get("fn"):
                    payload = b["fn"](self.path, body)  # an answer computed from the request
                if isinstance(payload, str):
                    payload = payload.encode()
                self.send_response(b.get("status", 200))
                self.send_header("Content-Type", b.get("content_type", "application/json"))
                for k, v in b.get("headers", {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, *behaviours):
        with self.lock:
            self.behaviours = list(behaviours)

    def count(self):
        with self.lock:
            return len(self.requests)

    def stop(self):
        self.hang_event.set()
        self.server.shutdown()
        self.server.server_close()


class RawBackend:
    """A loopback listener whose handle(conn) speaks raw bytes, one thread a connection:
    for answers the scripted Backend cannot give (chunked, odd codings, resets)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            try:
                self.handle(conn)
            except OSError:
                pass

    def handle(self, conn):
        raise NotImplementedError

    def stop(self):
        self.sock.close()


class Akosha:
    def __init__(self, tmpdir, config, env=None, wait=True, wrapper=None):
        self.port = free_port()
        self.admin_port = free_port()
        self.path = os.path.join(tmpdir, "akosha.conf")
        self.write_config(config)
        self.log = open(os.path.join(tmpdir, "akosha.log"), "w+")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen((wrapper or []) + [AKOSHA_BIN, "-c", self.path],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        if wait:
            self.wait_ready()

    def write_config(self, config):
        text = config.replace("{port}", str(self.port)).replace("{admin}", str(self.admin_port))
        if "[proxy]" not in text:
            text = "[proxy]\nlisten = 127.0.0.1:{}\n".format(self.port) + text
        if "[admin]" not in text:
            text = "[admin]\nlisten = 127.0.0.1:{}\n".format(self.admin_port) + text
        with open(self.path, "w") as f:
            f.write(text)

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("akosha exited: " + self.logs())
            try:
                status, _, _ = self.admin("GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("akosha not ready: " + self.logs())

    def logs(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def request(self, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), data

    def post_json(self, path, obj, headers=None, timeout=30):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        status, hdrs, data = self.request("POST", path, json.dumps(obj).encode(), h, timeout)
        return status, hdrs, data

    def admin(self, method, path, timeout=5):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        conn.request(method, path)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), data

    def stats(self):
        return json.loads(self.admin("GET", "/stats")[2])

    def breaker(self, name):
        for b in self.stats()["breakers"]:
            if b["service_name"] == name:
                return b
        raise KeyError(name)

    def raw(self, data, timeout=5, shut_wr=False):
        """Send raw bytes (then half-close if shut_wr); return everything the server
        sent until it closed or went quiet."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.sendall(data)
        if shut_wr:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        s.close()
        return b"".join(chunks)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.stop()


@pytest.fixture
def backend2():
    b = Backend()
    yield b
    b.stop()


@pytest.fixture
def start_akosha():
    started = []
    tmpdirs = []

    def start(config, env=None, wait=True, wrapper=None):
        d = tempfile.TemporaryDirectory()
        tmpdirs.append(d)
        a = Akosha(d.name, config, env=env, wait=wait, wrapper=wrapper)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()
    for d in tmpdirs:
        d.cleanup()
