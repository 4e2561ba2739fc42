"""Issue 5: a real Prometheus server (Debian package) scrapes akosha on loopback.

The test checks an exact counter through Prometheus' HTTP API and that every
query of the shipped dashboard and alert rules evaluates without error.
Issue 20: a Prometheus with exemplar storage scrapes OpenMetrics and returns,
through /api/v1/query_exemplars, the trace id of a span akosha exported.
"""
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import free_port
from test_telemetry import FAST_EXPORT, Receiver, receiver, telemetry  # noqa: F401 (fixture)

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


class Prometheus:
    def __init__(self, port, log_path):
        self.port = port
        self.log_path = log_path

    def log(self):
        with open(self.log_path) as f:
            return f.read()


@pytest.fixture
def prometheus():
    """start(target_port, flags=()) runs a Prometheus scraping akosha's admin
    port every second, with extra command-line flags; it returns a Prometheus."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    procs = []
    dirs = []

    def start(target_port, flags=()):
        d = tempfile.TemporaryDirectory()
        dirs.append(d)
        port = free_port()
        conf = os.path.join(d.name, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: akosha\n    metrics_path: /metrics\n"
                    "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % target_port)
        log_path = os.path.join(d.name, "log")
        log = open(log_path, "w")
        p = subprocess.Popen([binary, "--config.file=" + conf,
                              "--storage.tsdb.path=" + os.path.join(d.name, "data"),
                              "--web.listen-address=127.0.0.1:%d" % port] + list(flags),
                             stdout=log, stderr=subprocess.STDOUT)
        procs.append((p, log))
        return Prometheus(port, log_path)

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


def api(port, path, **params):
    url = "http://127.0.0.1:%d%s?%s" % (port, path, urllib.parse.urlencode(params))
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def query(port, expr):
    return api(port, "/api/v1/query", query=expr)


def test_prometheus_scrapes_and_every_query_evaluates(start_akosha, prometheus, backend):
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\n" % backend.port)
    for _ in range(3):
        a.post_json("/v1/embeddings", {"input": ["x", "y"]})
    a.admin("POST", "/upstreams/b/open")
    a.post_json("/v1/embeddings", {"input": "fallback"})
    port = prometheus(a.admin_port).port
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


OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What Prometheus 2.x sends when it scrapes.
SCRAPE_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                 "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
EXEMPLAR = re.compile(r'^akosha_request_duration_seconds_bucket\{route="embeddings",le="([^"]+)"\}'
                      r' (\d+) # \{trace_id="([0-9a-f]{32})"\} (\S+) (\d+\.\d+)$')


def metrics_page(a, accept=None):
    conn = http.client.HTTPConnection("127.0.0.1", a.admin_port, timeout=5)
    conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 200
    return resp.getheader("Content-Type"), data


def promtool_openmetrics(page):
    """promtool 2.42 parses OpenMetrics only when backfilling, and wants a
    timestamp on every sample: add one (before any exemplar), then parse."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    lines = []
    for line in page.decode().splitlines():
        if not line.startswith("#"):
            sample, sep, exemplar = line.partition(" # ")
            line = sample + " 1700000000" + (sep + exemplar if sep else "")
        lines.append(line)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "page.om")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        p = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", path,
                            os.path.join(d, "blocks")], capture_output=True)
    assert p.returncode == 0, (p.stdout, p.stderr)


def test_openmetrics_scrape_has_exemplars_of_traced_requests(start_akosha, backend, receiver):
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     % backend.port, env=FAST_EXPORT)
    for i in range(3):
        status, _, _ = a.post_json("/v1/embeddings", {"input": "x%d" % i})
        assert status == 200
    spans = receiver.wait_spans(6)
    server_traces = {s["traceId"] for s in spans if s["kind"] == 2}
    assert len(server_traces) == 3

    ctype, page = metrics_page(a, SCRAPE_ACCEPT)
    assert ctype == OPENMETRICS
    assert page.endswith(b"\n# EOF\n")
    text = page.decode()
    assert "# TYPE akosha_requests counter\n" in text
    assert "# TYPE akosha_requests_total" not in text
    exemplars = [m.groups() for m in map(EXEMPLAR.match, text.splitlines()) if m]
    assert exemplars, text
    for le, _, trace_id, value, ts in exemplars:
        assert trace_id in server_traces
        assert float(value) <= float(le)
        assert abs(float(ts) - time.time()) < 60
    promtool_openmetrics(page)

    # Without an Accept header, or asking for text, the page stays 0.0.4.
    for accept in (None, "text/plain;version=0.0.4"):
        ctype, page = metrics_page(a, accept)
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        assert b"# EOF" not in page and b"trace_id" not in page


DURATION_BUCKETS = 'akosha_request_duration_seconds_bucket{route="embeddings"}'


def test_prometheus_with_exemplar_storage_returns_the_trace_id_of_an_exported_span(
        start_akosha, prometheus, backend, receiver):
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     % backend.port, env=FAST_EXPORT)
    since = time.time()
    for i in range(3):
        status, _, _ = a.post_json("/v1/embeddings", {"input": "x%d" % i})
        assert status == 200
    spans = receiver.wait_spans(6)
    server = sorted((s for s in spans if s["kind"] == 2), key=lambda s: int(s["startTimeUnixNano"]))
    assert len(server) == 3, spans
    span_seconds = {s["traceId"]: (int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"])) / 1e9
                    for s in server}
    assert len(span_seconds) == 3

    prom = prometheus(a.admin_port, ["--enable-feature=exemplar-storage"])
    deadline = time.time() + 40
    found = []
    while time.time() < deadline:
        try:
            res = api(prom.port, "/api/v1/query_exemplars", query=DURATION_BUCKETS,
                      start="%.3f" % (since - 60), end="%.3f" % (time.time() + 60))
        except OSError:
            time.sleep(0.5)
            continue
        if res.get("status") == "success" and res["data"]:
            found = res["data"]
            break
        time.sleep(0.5)
    assert found, ("Prometheus kept no exemplar", prom.log())

    # Bucket bounds as Prometheus stored them: "1.0" is OpenMetrics', "1" the 0.0.4 text's.
    buckets = query(prom.port, DURATION_BUCKETS)["data"]["result"]
    les = {b["metric"]["le"] for b in buckets}
    assert "1.0" in les and "1" not in les, les
    bounds = sorted(float(le) for le in les)

    ids = set()
    for series in found:
        labels = series["seriesLabels"]
        assert labels["__name__"] == "akosha_request_duration_seconds_bucket", labels
        assert labels["route"] == "embeddings" and labels["job"] == "akosha", labels
        upper = float(labels["le"])
        lower = max((b for b in bounds if b < upper), default=0.0)
        assert series["exemplars"], series
        for ex in series["exemplars"]:
            assert set(ex["labels"]) == {"trace_id"}, ex
            trace_id = ex["labels"]["trace_id"]
            assert trace_id in span_seconds, (trace_id, sorted(span_seconds))
            ids.add(trace_id)
            value = float(ex["value"])
            # In its bucket's range, and in seconds: about as long as the request's
            # SERVER span (in milliseconds it would be a thousand times that).
            assert 0 < value and lower < value <= upper, (value, lower, upper)
            assert abs(value - span_seconds[trace_id]) < 0.02 + span_seconds[trace_id] / 4, \
                (value, span_seconds[trace_id])
            assert since - 1 <= float(ex["timestamp"]) <= time.time() + 1, (ex, since)
    # The last request's bucket holds it: akosha keeps the latest sampled one.
    assert server[-1]["traceId"] in ids, (server[-1]["traceId"], ids)

    targets = api(prom.port, "/api/v1/targets")["data"]["activeTargets"]
    assert len(targets) == 1, targets
    assert targets[0]["health"] == "up" and targets[0]["lastError"] == "", targets
    # Exemplars Prometheus could not ingest (out of order, bad labels) are logged, not failed.
    complaints = [line for line in prom.log().splitlines()
                  if "exemplar" in line.lower() and "level=info" not in line]
    assert not complaints, complaints
