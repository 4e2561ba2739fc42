"""Issue 5: a real Prometheus server (Debian package) scrapes akosha on loopback.

The test checks an exact counter through Prometheus' HTTP API and that every
query of the shipped dashboard and alert rules evaluates without error.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import free_port

SRCDIR = os.environ.get("AKOSHA_SRCDIR") or os.path.join(os.path.dirname(__file__), "..", "..")


def dashboard_queries():
    with open(os.path.join(SRCDIR, "conf", "grafana", "akosha.json")) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(t["expr"])
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def alert_queries():
    with open(os.path.join(SRCDIR, "conf", "alerts.yml")) as f:
        rules = yaml.safe_load(f)
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


@pytest.fixture
def prometheus():
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    procs = []
    dirs = []

    def start(target_port):
        d = tempfile.TemporaryDirectory()
        dirs.append(d)
        port = free_port()
        conf = os.path.join(d.name, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: akosha\n    metrics_path: /metrics\n"
                    "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % target_port)
        log = open(os.path.join(d.name, "log"), "w")
        p = subprocess.Popen([binary, "--config.file=" + conf,
                              "--storage.tsdb.path=" + os.path.join(d.name, "data"),
                              "--web.listen-address=127.0.0.1:%d" % port],
                             stdout=log, stderr=subprocess.STDOUT)
        procs.append((p, log))
        return port

    yield start
    for p, log in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
    for d in dirs:
        d.cleanup()


def query(port, expr):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def test_prometheus_scrapes_and_every_query_evaluates(start_akosha, prometheus, backend):
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\n" % backend.port)
    for _ in range(3):
        a.post_json("/v1/embeddings", {"input": ["x", "y"]})
    a.admin("POST", "/upstreams/b/open")
    a.post_json("/v1/embeddings", {"input": "fallback"})
    port = prometheus(a.admin_port)
    deadline = time.time() + 40
    real = fallback = None
    while time.time() < deadline:
        try:
            res = query(port, "embedding_generated_total")
        except OSError:
            time.sleep(0.5)
            continue
        if res.get("status") == "success":
            for s in res["data"]["result"]:
                if s["metric"].get("mode") == "real":
                    real = s["value"][1]
                if s["metric"].get("mode") == "fallback":
                    fallback = s["value"][1]
        if real is not None and fallback is not None:
            break
        time.sleep(0.5)
    assert real == "6" and fallback == "1", (real, fallback)
    up = query(port, 'up{job="akosha"}')
    assert up["data"]["result"][0]["value"][1] == "1"
    queries = dashboard_queries() + alert_queries()
    assert len(queries) > 10
    for q in queries:
        res = query(port, q)
        assert res.get("status") == "success", (q, res)


def test_live_metrics_page_passes_promtool(start_akosha, backend):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\n" % backend.port)
    a.post_json("/v1/embeddings", {"input": ["x", "y"]})
    a.request("GET", "/other")
    a.admin("POST", "/upstreams/b/open")
    a.post_json("/embed", {"inputs": "fallback"})
    _, headers, page = a.admin("GET", "/metrics")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    p = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True)
    assert p.returncode == 0 and p.stdout == b"" and p.stderr == b"", (p.stdout, p.stderr)
