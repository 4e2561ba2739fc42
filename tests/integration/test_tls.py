"""HTTPS upstreams: verification is on by default, tls_ca_file and tls_server_name."""
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port


@pytest.fixture
def https_backend(tmp_path):
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=backend.test", "-addext", "subjectAltName=DNS:backend.test",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = free_port()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            body = b"secure"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Seen-Host", self.headers.get("Host", ""))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), H)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, str(cert)
    server.shutdown()
    server.server_close()


def conf(port, extra=""):
    return ("[fallback]\nmode = off\n[upstream tls]\nurl = https://127.0.0.1:%d\nretries = 0\n%s"
            % (port, extra))


def test_self_signed_certificate_is_refused_by_default(https_backend, start_akosha):
    port, _ = https_backend
    a = start_akosha(conf(port))
    status, _, data = a.request("GET", "/x")
    assert status == 502
    assert b"certificate verify failed" in data or b"TLS" in data
    assert a.breaker("tls")["failed_calls"] == 1


def test_ca_file_alone_still_refuses_a_wrong_host_name(https_backend, start_akosha):
    port, cert = https_backend
    a = start_akosha(conf(port, "tls_ca_file = %s\n" % cert))
    status, _, data = a.request("GET", "/x")
    assert status == 502
    assert b"TLS" in data


def test_ca_file_and_server_name_are_accepted(https_backend, start_akosha):
    port, cert = https_backend
    a = start_akosha(conf(port, "tls_ca_file = %s\ntls_server_name = backend.test\n" % cert))
    status, headers, data = a.request("GET", "/x")
    assert status == 200 and data == b"secure"
    assert headers["X-Akosha-Upstream"] == "tls"
    # the pooled TLS connection is reused
    assert a.request("GET", "/y")[0] == 200
    assert a.stats()["upstreams"][0]["pool"]["idle"] == 1


def test_wrong_server_name_is_refused(https_backend, start_akosha):
    port, cert = https_backend
    a = start_akosha(conf(port, "tls_ca_file = %s\ntls_server_name = other.test\n" % cert))
    assert a.request("GET", "/x")[0] == 502


def test_tls_verify_off_accepts(https_backend, start_akosha):
    port, _ = https_backend
    a = start_akosha(conf(port, "tls_verify = no\n"))
    assert a.request("GET", "/x")[0] == 200


def test_world_readable_config_with_headers_warns(backend, start_akosha):
    os.umask(0o022)
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nheader = X-Key: v\n" % backend.port)
    assert os.stat(a.path).st_mode & 0o004
    assert "readable by other users" in a.logs()
    assert "X-Key: v" not in a.logs()


def test_private_config_with_headers_does_not_warn(backend, start_akosha, tmp_path):
    old = os.umask(0o077)
    try:
        a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nheader = X-Key: v\n"
                         % backend.port)
    finally:
        os.umask(old)
    assert not os.stat(a.path).st_mode & 0o004
    assert "readable by other users" not in a.logs()



# ---- issue 19: items 5, 11 and 13 ------------------------------------------

def make_ca(tmp_path, name):
    cert, key = tmp_path / (name + ".pem"), tmp_path / (name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + name, "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert)


def wait_applied(a, n):
    deadline = time.time() + 5
    while a.logs().count("applied") < n and time.time() < deadline:
        time.sleep(0.05)
    assert a.logs().count("applied") >= n


def test_tls_tightened_by_reload_is_not_bypassed_by_a_pooled_connection(https_backend,
                                                                       start_akosha, tmp_path):
    port, _ = https_backend
    other_ca = make_ca(tmp_path, "unrelated-ca")
    a = start_akosha(conf(port, "tls_verify = no\nheader = Authorization: Bearer k\n"))
    assert a.request("GET", "/x")[0] == 200
    assert a.stats()["upstreams"][0]["pool"]["idle"] == 1  # a warm, unverified connection
    a.write_config(conf(port, "tls_verify = yes\ntls_ca_file = %s\n"
                              "header = Authorization: Bearer k\n" % other_ca))
    a.signal(signal.SIGHUP)
    wait_applied(a, 1)
    status, _, data = a.request("GET", "/x")
    assert status == 502, "the request (and its key) went over the old unverified connection"
    assert b"certificate verify failed" in data
    assert "connection settings changed" in a.logs()


def test_host_follows_tls_server_name(https_backend, start_akosha):
    port, cert = https_backend
    a = start_akosha(conf(port, "tls_ca_file = %s\ntls_server_name = backend.test\n" % cert))
    status, headers, _ = a.request("GET", "/x")
    assert status == 200
    assert headers["X-Seen-Host"] == "backend.test:%d" % port


def test_host_key_overrides_tls_server_name(https_backend, start_akosha):
    port, cert = https_backend
    a = start_akosha(conf(port, "tls_ca_file = %s\ntls_server_name = backend.test\n"
                                "host = vhost.test\n" % cert))
    status, headers, _ = a.request("GET", "/x")
    assert status == 200 and headers["X-Seen-Host"] == "vhost.test"


def test_a_plain_http_server_behind_https_is_named_not_tls(backend, start_akosha):
    a = start_akosha(conf(backend.port))
    status, _, data = a.request("GET", "/x")
    assert status == 502
    assert "does not speak TLS" in a.logs()
    assert "lib(0)" not in a.logs()


def test_a_reset_during_the_handshake_is_a_tls_failure(start_akosha):
    """The peer reads the ClientHello and resets: a TLS failure, with its cause."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        a = start_akosha(conf(port))
        status, _, data = a.request("GET", "/x")
        assert status == 502
        logs = a.logs()
        # The RST's errno names it; where the TLS layer reports it as a close, that is named.
        assert ("TLS handshake: Connection reset by peer" in logs or
                "TLS handshake: closed by the upstream" in logs), logs[-600:]
        assert b"TLS handshake" in data
    finally:
        srv.close()
