"""The admin listener's guard on breaker controls, and secrets kept out of
everything akosha prints: logs, /config, /stats, /metrics and spans.

Real binary, real sockets. The non-loopback case binds the admin listener to
this host's own non-loopback address (still nothing leaves the machine)."""
import http.client
import json
import os
import socket
import stat
import subprocess
import time

import pytest

from conftest import AKOSHA_BIN, free_port
from test_telemetry import Receiver

TOKEN = "tok-9f2c1e7d4b-secret"


def upstream_conf(backend):
    return "[upstream main]\nurl = http://127.0.0.1:%d\n" % backend.port


def call(host, port, method, path, headers=None):
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def unix_call(path, method, target, headers=""):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: 0\r\n\r\n"
               % (method, target, headers)).encode())
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        out += d
    s.close()
    return int(out.split(b" ", 2)[1])


def everything_printed(a):
    """Logs and every read-only admin endpoint, as one text to search."""
    parts = [a.logs()]
    for path in ("/config", "/stats", "/metrics", "/healthz", "/readyz"):
        parts.append(a.admin("GET", path)[2].decode())
    return "\n".join(parts)


def non_loopback_ipv4():
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for addr in out.split():
        if "." in addr and not addr.startswith("127."):
            s = socket.socket()
            try:
                s.bind((addr, 0))
                return addr
            except OSError:
                continue
            finally:
                s.close()
    return None


# ---- [admin] token --------------------------------------------------------

def test_token_set_breaker_controls_need_the_bearer_token(backend, start_akosha, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin_token").write_text(TOKEN + "\n")
    a = start_akosha(upstream_conf(backend) + "[admin]\nlisten = 127.0.0.1:{admin}\n"
                     "token = ${file:admin_token}\n",
                     env={"CREDENTIALS_DIRECTORY": str(creds)})
    url = "/upstreams/main/open"
    st, hdrs, body = call("127.0.0.1", a.admin_port, "POST", url)
    assert st == 401, body
    assert hdrs.get("WWW-Authenticate", "").startswith("Bearer")
    for wrong in ("Bearer nope", "Bearer " + TOKEN + "x", "Bearer " + TOKEN[:-1],
                  "Basic " + TOKEN, TOKEN, "Bearer"):
        assert call("127.0.0.1", a.admin_port, "POST", url,
                    {"Authorization": wrong})[0] == 401, wrong
    assert a.breaker("main")["state"] == "closed"
    st, _, body = call("127.0.0.1", a.admin_port, "POST", url,
                       {"Authorization": "Bearer " + TOKEN})
    assert st == 200, body
    assert json.loads(body)["state"] == "open"
    assert call("127.0.0.1", a.admin_port, "POST", "/upstreams/main/reset",
                {"Authorization": "bearer  " + TOKEN})[0] == 200
    # read-only endpoints stay open
    for path in ("/healthz", "/readyz", "/stats", "/config", "/metrics"):
        assert a.admin("GET", path)[0] == 200, path
    cfg = json.loads(a.admin("GET", "/config")[2])
    assert cfg["admin"]["token"] == "<redacted>"
    assert TOKEN not in everything_printed(a)


def test_literal_token_is_never_shown(backend, start_akosha):
    a = start_akosha(upstream_conf(backend) + "[admin]\nlisten = 127.0.0.1:{admin}\n"
                     "token = %s\n" % TOKEN)
    assert call("127.0.0.1", a.admin_port, "POST", "/upstreams/main/open",
                {"Authorization": "Bearer " + TOKEN})[0] == 200
    assert call("127.0.0.1", a.admin_port, "POST", "/upstreams/main/close",
                {"Authorization": "Bearer wrong"})[0] == 401
    a.signal(1)  # SIGHUP: the reload path logs too
    time.sleep(0.5)
    assert TOKEN not in everything_printed(a)


def test_token_comparison_is_constant_time_in_code():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "src", "admin.c")) as f:
        src = f.read()
    assert "CRYPTO_memcmp" in src and "EVP_sha256" in src


# ---- no token: loopback and unix-socket peers only ------------------------

def test_no_token_loopback_peer_may_use_breaker_controls(backend, start_akosha):
    a = start_akosha(upstream_conf(backend))
    assert call("127.0.0.1", a.admin_port, "POST", "/upstreams/main/open")[0] == 200
    assert a.breaker("main")["state"] == "open"
    assert call("127.0.0.1", a.admin_port, "POST", "/upstreams/main/reset")[0] == 200


def test_no_token_non_loopback_peer_gets_403(backend, start_akosha):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to bind")
    port = free_port()
    a = start_akosha(upstream_conf(backend) + "[admin]\nlisten = %s:%d\n" % (addr, port),
                     wait=False)
    deadline = time.time() + 20
    while True:
        try:
            if call(addr, port, "GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline and a.proc.poll() is None, a.logs()
        time.sleep(0.05)
    st, _, body = call(addr, port, "POST", "/upstreams/main/open")
    assert st == 403, body
    assert b"loopback" in body
    # any method but GET/HEAD counts as mutating, whatever the path
    assert call(addr, port, "DELETE", "/stats")[0] == 403
    assert call(addr, port, "POST", "/upstreams/nope/open")[0] == 403
    # nothing changed, and read-only endpoints still answer that peer
    stats = json.loads(call(addr, port, "GET", "/stats")[2])
    assert [b for b in stats["breakers"] if b["service_name"] == "main"][0]["state"] == "closed"
    assert call(addr, port, "GET", "/metrics")[0] == 200


def test_token_set_non_loopback_peer_with_the_token_is_allowed(backend, start_akosha):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to bind")
    port = free_port()
    a = start_akosha(upstream_conf(backend) + "[admin]\nlisten = %s:%d\ntoken = ${ADMIN_TOK}\n"
                     % (addr, port), env={"ADMIN_TOK": TOKEN}, wait=False)
    deadline = time.time() + 20
    while True:
        try:
            if call(addr, port, "GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline and a.proc.poll() is None, a.logs()
        time.sleep(0.05)
    assert call(addr, port, "POST", "/upstreams/main/open")[0] == 401
    assert call(addr, port, "POST", "/upstreams/main/open",
                {"Authorization": "Bearer " + TOKEN})[0] == 200


def test_unix_admin_socket_peer_allowed_and_mode_ignores_umask(backend, start_akosha, tmp_path):
    path = str(tmp_path / "admin.sock")
    ppath = str(tmp_path / "proxy.sock")
    old = os.umask(0)  # the child inherits it: a lax umask must not widen the sockets
    try:
        a = start_akosha("[proxy]\nlisten = unix:%s\nlisten_mode = 0660\n" % ppath
                         + upstream_conf(backend)
                         + "[admin]\nlisten = unix:%s\n" % path, wait=False)
    finally:
        os.umask(old)
    deadline = time.time() + 20
    while not os.path.exists(path) or not os.path.exists(ppath):
        assert time.time() < deadline and a.proc.poll() is None, a.logs()
        time.sleep(0.05)
    time.sleep(0.2)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ppath).st_mode) == 0o660
    assert unix_call(path, "POST", "/upstreams/main/open") == 200
    assert unix_call(path, "GET", "/healthz") == 200


def test_proxy_unix_socket_default_mode_is_0666_under_a_strict_umask(backend, start_akosha,
                                                                       tmp_path):
    ppath = str(tmp_path / "proxy.sock")
    old = os.umask(0o077)  # the shipped unit's UMask=
    try:
        start_akosha("[proxy]\nlisten = unix:%s\n" % ppath + upstream_conf(backend))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ppath).st_mode) == 0o666


# ---- secrets in urls and expanded values ----------------------------------

def test_url_userinfo_is_refused_without_echoing_it(tmp_path):
    p = tmp_path / "a.conf"
    p.write_text("[upstream u]\nurl = https://bob:Pa55w0rdXYZ@api.example.test/v1\n")
    r = subprocess.run([AKOSHA_BIN, "-t", "-c", str(p)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1
    assert "header = Authorization" in r.stderr
    assert "Pa55w0rdXYZ" not in r.stdout + r.stderr


def test_expanded_tls_ca_file_is_not_logged(tmp_path):
    secret_dir = tmp_path / "tenant-7f3a9-private"
    secret_dir.mkdir()
    ca = secret_dir / "ca.pem"
    ca.write_text("not a certificate\n")
    p = tmp_path / "a.conf"
    p.write_text("[admin]\nlisten = 127.0.0.1:%d\n[proxy]\nlisten = 127.0.0.1:%d\n"
                 "[upstream u]\nurl = https://127.0.0.1:1\ntls_ca_file = ${AK_TEST_CA}\n"
                 % (free_port(), free_port()))
    env = dict(os.environ, AK_TEST_CA=str(ca))
    r = subprocess.run([AKOSHA_BIN, "-c", str(p)], capture_output=True, text=True,
                       timeout=20, env=env)
    assert r.returncode != 0
    assert "tls_ca_file" in r.stderr and "${AK_TEST_CA}" in r.stderr
    assert "tenant-7f3a9-private" not in r.stdout + r.stderr


def test_expanded_values_and_endpoint_userinfo_stay_out_of_everything(backend, start_akosha,
                                                                      tmp_path):
    rec = Receiver()
    try:
        a = start_akosha(
            upstream_conf(backend).replace("url = http://127.0.0.1:%d" % backend.port,
                                           "url = http://127.0.0.1:%d${AK_PREFIX}" % backend.port)
            + "header = Authorization: Bearer ${AK_KEY}\n"
            + "[telemetry]\notlp_endpoint = http://span-user:Sp4nPassQ@127.0.0.1:%d\n"
              "otlp_protocol = http/json\nsample_rate = 1.0\n" % rec.port,
            env={"AK_PREFIX": "/k-77aa66bb", "AK_KEY": "sk-live-123abc"})
        st, _, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "m"})
        assert st == 200
        # the prefix is really used, so it is the expanded value that must stay hidden
        assert backend.requests[-1][1].startswith("/k-77aa66bb/")
        assert backend.requests[-1][2]["Authorization"] == "Bearer sk-live-123abc"
        spans = rec.wait_spans(2)
        assert spans, a.logs()
        a.signal(1)
        time.sleep(0.5)
        text = everything_printed(a) + json.dumps(rec.batches)
        for secret in ("k-77aa66bb", "sk-live-123abc", "Sp4nPassQ", "span-user"):
            assert secret not in text, secret
        assert "http://***@127.0.0.1:%d" % rec.port in a.logs()
        cfg = json.loads(a.admin("GET", "/config")[2])
        assert cfg["telemetry"]["otlp_endpoint"] == "http://***@127.0.0.1:%d" % rec.port
        assert cfg["upstreams"]["main"]["url"].endswith("${AK_PREFIX}")
        assert a.stats()["upstreams"][0]["url"].endswith("${AK_PREFIX}")
    finally:
        rec.stop()


# ---- the world-readable warning -------------------------------------------

def test_world_readable_warning_gives_advice_that_fits_the_unit(backend, start_akosha):
    old = os.umask(0o022)
    try:
        a = start_akosha(upstream_conf(backend) + "[admin]\nlisten = 127.0.0.1:{admin}\n"
                         "token = %s\n" % TOKEN)
    finally:
        os.umask(old)
    logs = a.logs()
    assert "readable by other users" in logs and "[admin] token" in logs
    assert "LoadCredential=" in logs and "${file:" in logs
    assert "chmod o-r it, or" not in logs
    assert TOKEN not in logs


def test_secrets_from_credentials_do_not_warn(backend, start_akosha, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin_token").write_text(TOKEN)
    old = os.umask(0o022)
    try:
        a = start_akosha(upstream_conf(backend) + "header = Authorization: Bearer ${file:admin_token}\n"
                         "[admin]\nlisten = 127.0.0.1:{admin}\ntoken = ${file:admin_token}\n",
                         env={"CREDENTIALS_DIRECTORY": str(creds)})
    finally:
        os.umask(old)
    assert "readable by other users" not in a.logs()
