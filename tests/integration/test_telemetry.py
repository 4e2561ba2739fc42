"""Issue 6: spans over OTLP/HTTP; issue 5: exact metrics."""
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import AKOSHA_BIN, embedding_body, free_port

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def _varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7
        assert shift < 70, "varint too long"


def pb_fields(b):
    """The (number, wire type, value) fields of one protobuf message, in order."""
    out, i = [], 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(b, i)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            v, i = b[i:i + n], i + n
            assert len(v) == n, "truncated fixed field"
        elif wire == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
            assert len(v) == n, "truncated length-delimited field"
        else:
            raise AssertionError("wire type %d" % wire)
        out.append((num, wire, v))
    return out


def _pb_any(b):
    for num, wire, v in pb_fields(b):
        if num == 1:
            return {"stringValue": v.decode("utf-8")}
        if num == 2:
            return {"boolValue": bool(v)}
        if num == 3:
            return {"intValue": str(v - (1 << 64) if v >> 63 else v)}
        if num == 4:
            return {"doubleValue": struct.unpack("<d", v)[0]}
    raise AssertionError("empty AnyValue")


def _pb_kv(b):
    f = {num: v for num, _, v in pb_fields(b)}
    return {"key": f[1].decode("utf-8"), "value": _pb_any(f[2])}


def _pb_span(b):
    """A Span message as OTLP JSON would write it (proto3 defaults made explicit)."""
    span = {"attributes": [], "status": {"code": 0}}
    for num, wire, v in pb_fields(b):
        if num == 1:
            assert wire == 2 and len(v) == 16
            span["traceId"] = v.hex()
        elif num == 2:
            assert wire == 2 and len(v) == 8
            span["spanId"] = v.hex()
        elif num == 4:
            assert wire == 2 and len(v) == 8
            span["parentSpanId"] = v.hex()
        elif num == 5:
            span["name"] = v.decode("utf-8")
        elif num == 6:
            span["kind"] = v
        elif num in (7, 8):
            assert wire == 1
            key = "startTimeUnixNano" if num == 7 else "endTimeUnixNano"
            span[key] = str(int.from_bytes(v, "little"))
        elif num == 9:
            span["attributes"].append(_pb_kv(v))
        elif num == 10:
            span["droppedAttributesCount"] = v
        elif num == 11:
            ev = {"attributes": []}
            for n2, w2, v2 in pb_fields(v):
                if n2 == 1:
                    assert w2 == 1
                    ev["timeUnixNano"] = str(int.from_bytes(v2, "little"))
                elif n2 == 2:
                    ev["name"] = v2.decode("utf-8")
                elif n2 == 3:
                    ev["attributes"].append(_pb_kv(v2))
                elif n2 == 4:
                    ev["droppedAttributesCount"] = v2
                else:
                    raise AssertionError("unexpected Event field %d" % n2)
            span.setdefault("events", []).append(ev)
        elif num == 12:
            span["droppedEventsCount"] = v
        elif num == 15:
            for n2, _, v2 in pb_fields(v):
                if n2 == 2:
                    span["status"]["message"] = v2.decode("utf-8")
                elif n2 == 3:
                    span["status"]["code"] = v2
        else:
            raise AssertionError("unexpected Span field %d" % num)
    return span


def pb_request(b):
    """An ExportTraceServiceRequest in the shape of its OTLP JSON form."""
    out = {"resourceSpans": []}
    for num, _, rs in pb_fields(b):
        assert num == 1
        entry = {"resource": {"attributes": []}, "scopeSpans": []}
        for n2, _, v in pb_fields(rs):
            if n2 == 1:
                entry["resource"]["attributes"] = [_pb_kv(kv) for n3, _, kv in pb_fields(v)
                                                   if n3 == 1]
            elif n2 == 2:
                ss = {"scope": {}, "spans": []}
                for n3, _, v3 in pb_fields(v):
                    if n3 == 1:
                        sc = {n4: v4 for n4, _, v4 in pb_fields(v3)}
                        ss["scope"] = {"name": sc[1].decode(), "version": sc[2].decode()}
                    elif n3 == 2:
                        ss["spans"].append(_pb_span(v3))
                entry["scopeSpans"].append(ss)
        out["resourceSpans"].append(entry)
    return out


class Receiver:
    """An OTLP/HTTP receiver on loopback, protobuf or JSON by Content-Type;
    `answers` scripts status codes."""

    def __init__(self):
        self.port = free_port()
        self.batches = []
        self.answers = []
        self.paths = []
        self.content_types = []
        self.lock = threading.Lock()
        rec = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ctype = self.headers.get("Content-Type")
                with rec.lock:
                    status = rec.answers.pop(0) if rec.answers else 200
                    rec.paths.append(self.path)
                    rec.content_types.append(ctype)
                    if status == 200:
                        if ctype == "application/x-protobuf":
                            rec.batches.append(pb_request(body))
                        else:
                            assert ctype == "application/json", ctype
                            rec.batches.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self):
        out = []
        with self.lock:
            for b in self.batches:
                for rs in b["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        out.extend(ss["spans"])
        return out

    def wait_spans(self, n, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.spans()
            if len(s) >= n:
                return s
            time.sleep(0.05)
        return self.spans()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def telemetry(receiver, extra=""):
    return ("[telemetry]\notlp_endpoint = http://127.0.0.1:%d\nsample_rate = 1.0\n%s"
            % (receiver.port, extra))


def attr(span, key):
    for a in span.get("attributes", []):
        if a["key"] == key:
            v = a["value"]
            return next(iter(v.values()))
    return None


TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def test_traceparent_is_honoured_and_client_spans_are_children(backend, receiver,
                                                                start_akosha):
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     % backend.port, env=FAST_EXPORT)
    status, _, _ = a.post_json("/v1/embeddings", {"input": "x"},
                               headers={"traceparent": "00-%s-%s-01" % (TRACE, PARENT),
                                        "tracestate": "vendor=1"})
    assert status == 200
    spans = receiver.wait_spans(2)
    server = [s for s in spans if s["kind"] == 2]
    client = [s for s in spans if s["kind"] == 3]
    assert len(server) == 1 and len(client) == 1
    assert server[0]["traceId"] == TRACE
    assert server[0]["parentSpanId"] == PARENT
    assert server[0]["name"] == "POST /v1/embeddings"
    assert attr(server[0], "http.response.status_code") == "200"
    assert client[0]["parentSpanId"] == server[0]["spanId"]
    assert attr(client[0], "akosha.upstream") == "b"
    assert attr(client[0], "akosha.circuit_state") == "closed"
    assert int(server[0]["startTimeUnixNano"]) <= int(client[0]["startTimeUnixNano"])
    # the backend saw a traceparent naming the CLIENT span
    h = backend.requests[-1][2]
    assert h["traceparent"] == "00-%s-%s-01" % (TRACE, client[0]["spanId"])
    assert h["tracestate"] == "vendor=1"
    assert receiver.paths[0] == "/v1/traces"


def _normal(spans):
    """Spans without what differs between two runs: ids, times, the resource."""
    out = []
    for sp in spans:
        out.append((sp["kind"], sp["name"], "parentSpanId" in sp,
                    sorted((a["key"], json.dumps(a["value"], sort_keys=True))
                           for a in sp["attributes"]),
                    sp["status"].get("code", 0), sp["status"].get("message"),
                    [(e["name"], sorted((a["key"], json.dumps(a["value"], sort_keys=True))
                                        for a in e["attributes"]
                                        if a["key"] != "akosha.retry.backoff_ms"))
                     for e in sp.get("events", [])]))
    return sorted(out)


def test_json_and_protobuf_carry_the_same_spans(backend, start_akosha):
    """The default body is protobuf; otlp_protocol = http/json (or the OTel
    variable) sends the same spans as JSON."""
    runs = {}
    for name, extra, env in (("protobuf", "", {}),
                             ("json-file", "otlp_protocol = http/json\n", {}),
                             ("json-env", "", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})):
        rec = Receiver()
        try:
            backend.script({"status": 500}, {"status": 200, "body": embedding_body()})
            a = start_akosha(telemetry(rec, extra) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                             "retries = 1\nbackoff_base = 10ms\n" % backend.port,
                             env=dict(FAST_EXPORT, **env))
            status, _, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "m"},
                                       headers={"traceparent": "00-%s-%s-01" % (TRACE, PARENT),
                                                "X-Request-Id": "same-id"})
            assert status == 200
            spans = rec.wait_spans(3)
            assert len(spans) == 3
            assert all(s["traceId"] == TRACE for s in spans)
            res = rec.batches[0]["resourceSpans"][0]["resource"]["attributes"]
            assert {"key": "service.name", "value": {"stringValue": "akosha"}} in res
            runs[name] = (set(rec.content_types), _normal(spans))
            a.stop()
        finally:
            rec.stop()
    assert runs["protobuf"][0] == {"application/x-protobuf"}
    assert runs["json-file"][0] == {"application/json"}
    assert runs["json-env"][0] == {"application/json"}
    assert runs["protobuf"][1] == runs["json-file"][1] == runs["json-env"][1]
    kinds = [k[0] for k in runs["protobuf"][1]]
    assert sorted(kinds) == [2, 3, 3]
    assert any(k[6] for k in runs["protobuf"][1]), "the events came through protobuf too"


@pytest.mark.parametrize("traceparent", [
    "ff-%s-%s-01" % (TRACE, PARENT),                    # version ff is never valid
    "00-%s-%s-01" % (TRACE.upper(), PARENT),            # ids are lower-case hex only
    "00-%s-%s-01" % (TRACE, "0" * 16),                  # all-zero parent id
    "00-%s-%s-01" % (TRACE, PARENT[:-1]),               # parent id one digit short
], ids=["version-ff", "upper-case", "zero-parent", "short-parent"])
def test_invalid_traceparent_starts_a_new_trace(backend, receiver, start_akosha, traceparent):
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     % backend.port, env=FAST_EXPORT)
    a.request("GET", "/x", headers={"traceparent": traceparent})
    spans = receiver.wait_spans(2)
    server = [s for s in spans if s["kind"] == 2][0]
    # Neither the caller's trace id nor its parent span may be adopted: a new root.
    assert server["traceId"].lower() != TRACE, server
    assert server.get("parentSpanId", "") == "", server
    assert all(s["traceId"] == server["traceId"] for s in spans), spans
    sent = {k.lower(): v for k, v in backend.requests[-1][2].items()}
    assert TRACE not in sent.get("traceparent", "").lower(), sent


def test_retried_request_has_one_client_span_per_attempt(backend, receiver, start_akosha):
    backend.script({"status": 500}, {"status": 200, "body": b"ok"})
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     "retries = 1\nbackoff_base = 10ms\n" % backend.port, env=FAST_EXPORT)
    assert a.request("GET", "/x")[0] == 200
    spans = receiver.wait_spans(3)
    client = sorted([s for s in spans if s["kind"] == 3], key=lambda s: s["startTimeUnixNano"])
    assert len(client) == 2
    assert client[0]["status"]["code"] == 2
    assert attr(client[0], "http.request.resend_count") is None
    assert attr(client[1], "http.request.resend_count") == "1"


def test_every_attempt_span_arrives_past_those_held_for_the_server_span(
        backend, receiver, start_akosha):
    """A request's CLIENT spans wait for its SERVER span and go to the exporter
    with it (OBSERVE_ENDED_MAX, 4, at most); the attempts past those go as they
    end. Six attempts: six CLIENT spans, each once, in one trace."""
    backend.script(*([{"status": 500}] * 5), {"status": 200, "body": b"ok"})
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     "retries = 5\nbackoff_base = 1ms\nbackoff_max = 5ms\n"
                     "failure_threshold = 100\n" % backend.port, env=FAST_EXPORT)
    assert a.request("GET", "/x")[0] == 200
    spans = receiver.wait_spans(7)
    time.sleep(0.3)  # and no more than those
    spans = receiver.spans()
    server = [s for s in spans if s["kind"] == 2]
    client = sorted([s for s in spans if s["kind"] == 3], key=lambda s: int(s["startTimeUnixNano"]))
    assert len(server) == 1 and len(client) == 6, spans
    assert len({s["spanId"] for s in client}) == 6
    assert all(s["traceId"] == server[0]["traceId"] for s in client)
    assert all(s["parentSpanId"] == server[0]["spanId"] for s in client)
    assert [attr(s, "http.request.resend_count") for s in client] == \
        [None, "1", "2", "3", "4", "5"]
    assert [s["status"].get("code", 0) for s in client] == [2] * 5 + [0]  # ERROR, then UNSET


def events(span, name):
    """The span's events called name, each as {"time": ns, attribute: value...}."""
    out = []
    for e in span.get("events", []):
        if e["name"] == name:
            d = {"time": int(e["timeUnixNano"])}
            for a in e["attributes"]:
                d[a["key"]] = next(iter(a["value"].values()))
            out.append(d)
    return out


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
def test_failed_attempt_has_an_exception_event_and_the_retry_a_server_event(
        backend, receiver, start_akosha, protocol):
    backend.script({"status": 503}, {"status": 200, "body": b"ok"})
    a = start_akosha(telemetry(receiver, "otlp_protocol = %s\n" % protocol) +
                     "[upstream b]\nurl = http://127.0.0.1:%d\nretries = 1\n"
                     "backoff_base = 20ms\nbackoff_max = 20ms\n" % backend.port, env=FAST_EXPORT)
    assert a.request("GET", "/x")[0] == 200
    spans = receiver.wait_spans(3)
    server = [s for s in spans if s["kind"] == 2][0]
    client = sorted([s for s in spans if s["kind"] == 3], key=lambda s: int(s["startTimeUnixNano"]))
    assert len(client) == 2
    failed, ok = client
    assert failed["status"]["code"] == 2
    assert "HTTP 503" in failed["status"]["message"], failed["status"]
    (exc,) = events(failed, "exception")
    assert exc["exception.type"] == "5xx"
    assert "HTTP 503" in exc["exception.message"]
    assert int(failed["startTimeUnixNano"]) <= exc["time"] <= int(failed["endTimeUnixNano"])
    assert events(ok, "exception") == [] and ok["status"]["code"] != 2
    (retry,) = events(server, "akosha.retry")
    assert retry["akosha.retry.attempt"] == "2"
    assert 0 <= int(retry["akosha.retry.backoff_ms"]) <= 20
    assert retry["akosha.retry.reason"] == "5xx"
    assert retry["akosha.upstream"] == "b"
    assert events(server, "akosha.breaker") == [] and events(server, "akosha.fallback") == []


def test_breaker_change_and_fallback_are_server_span_events(backend, receiver, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha(telemetry(receiver, "otlp_protocol = http/json\n") +
                     "[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n"
                     "failure_threshold = 1\n" % backend.port, env=FAST_EXPORT)
    status, headers, _ = a.post_json("/v1/embeddings", {"input": "x"})
    assert status == 200, "the fallback answers"
    server = [s for s in receiver.wait_spans(3) if s["kind"] == 2][0]
    (change,) = events(server, "akosha.breaker")
    assert change["akosha.upstream"] == "b"
    assert change["akosha.breaker.old_state"] == "closed"
    assert change["akosha.breaker.new_state"] == "open"
    (fb,) = events(server, "akosha.fallback")
    assert fb["akosha.fallback.reason"]
    assert change["time"] <= fb["time"]
    assert a.breaker("b")["state"] == "open"
    # The next request finds the breaker open: a fallback, and no change to report.
    assert a.post_json("/v1/embeddings", {"input": "y"})[0] == 200
    later = [s for s in receiver.wait_spans(5) if s["kind"] == 2]
    assert len(later) == 2
    second = [s for s in later if s["spanId"] != server["spanId"]][0]
    assert events(second, "akosha.breaker") == []
    (fb2,) = events(second, "akosha.fallback")
    assert fb2["akosha.fallback.reason"] == "all_open"


def test_fallback_answer_has_the_internal_span(receiver, start_akosha):
    a = start_akosha(telemetry(receiver) + "[fallback]\nmode = always\n", env=FAST_EXPORT)
    a.post_json("/v1/embeddings", {"input": ["a b", "c d"]})
    spans = receiver.wait_spans(2)
    internal = [s for s in spans if s["kind"] == 1]
    assert len(internal) == 1
    assert internal[0]["name"] == "generate_batch_embeddings"
    assert attr(internal[0], "embedding.mode") == "fallback"
    assert attr(internal[0], "batch.size") == "2"
    server = [s for s in spans if s["kind"] == 2][0]
    assert internal[0]["parentSpanId"] == server["spanId"]


def test_the_exporter_and_worker_threads_are_named(receiver, start_akosha):
    """akosha(8): the span exporter is akosha-otlp, the embedding workers akosha-worker."""
    a = start_akosha(telemetry(receiver) + "[fallback]\nmode = always\nworkers = 2\n",
                     env=FAST_EXPORT)
    a.post_json("/v1/embeddings", {"input": "name the threads"})
    receiver.wait_spans(2)
    if a.proc.args[0] != AKOSHA_BIN:
        pytest.skip("akosha runs under a wrapper here")
    names = []
    for tid in os.listdir("/proc/%d/task" % a.proc.pid):
        with open("/proc/%d/task/%s/comm" % (a.proc.pid, tid)) as f:
            names.append(f.read().strip())
    assert names.count("akosha-otlp") == 1, names
    assert names.count("akosha-worker") == 2, names


def test_receiver_503_then_200_still_gets_the_spans(backend, receiver, start_akosha):
    receiver.answers = [503]
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     % backend.port, env=FAST_EXPORT)
    a.request("GET", "/x")
    spans = receiver.wait_spans(2, timeout=15)
    assert len(spans) == 2


def test_receiver_down_leaves_requests_unaffected(backend, start_akosha):
    dead = free_port()
    a = start_akosha("[telemetry]\notlp_endpoint = http://127.0.0.1:%d\nsample_rate = 1.0\n"
                     "[upstream b]\nurl = http://127.0.0.1:%d\n" % (dead, backend.port),
                     env=dict(FAST_EXPORT, OTEL_BSP_MAX_QUEUE_SIZE="4",
                              OTEL_BSP_EXPORT_TIMEOUT="200"))
    t0 = time.time()
    for _ in range(20):
        assert a.request("GET", "/x")[0] == 200
    assert time.time() - t0 < 5
    deadline = time.time() + 10
    dropped = failures = 0
    while time.time() < deadline:
        _, _, m = a.admin("GET", "/metrics")
        for line in m.decode().splitlines():
            if line.startswith("akosha_spans_dropped_total "):
                dropped = float(line.split()[1])
            if line.startswith("akosha_span_export_failures_total "):
                failures = float(line.split()[1])
        if dropped + failures > 0:
            break
        time.sleep(0.2)
    assert dropped + failures > 0
    names = [b["service_name"] for b in a.stats()["breakers"]]
    assert "otlp-exporter" in names


def test_sigterm_flushes_pending_spans(backend, receiver, start_akosha):
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     % backend.port, env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})
    for _ in range(3):
        a.request("GET", "/x")
    assert receiver.spans() == []
    a.signal(signal.SIGTERM)
    assert a.proc.wait(15) == 0
    assert len(receiver.spans()) == 6


def test_unsampled_requests_propagate_without_spans(backend, receiver, start_akosha):
    a = start_akosha(telemetry(receiver).replace("sample_rate = 1.0", "sample_rate = 0.0") +
                     "[upstream b]\nurl = http://127.0.0.1:%d\n" % backend.port,
                     env=FAST_EXPORT)
    a.request("GET", "/x")
    time.sleep(0.5)
    assert receiver.spans() == []
    tp = backend.requests[-1][2]["traceparent"]
    assert tp.endswith("-00") and len(tp) == 55


def test_exact_metrics_for_a_known_mix(backend, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(dim=4)}
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n" % backend.port)
    a.post_json("/v1/embeddings", {"input": ["r1", "r2", "r3"]})          # real, batch of 3
    a.post_json("/embed", {"inputs": "real one"})                         # real, single
    a.admin("POST", "/upstreams/b/open")
    a.post_json("/v1/embeddings", {"input": "fallback text"})             # fallback, 13 chars
    a.post_json("/api/embed", {"model": "m", "input": ["f1", "f2"]})      # fallback, batch
    _, _, m = a.admin("GET", "/metrics")
    text = m.decode()
    expect = [
        'embedding_generated_total{mode="real"} 4',
        'embedding_generated_total{mode="fallback"} 3',
        'embedding_batch_generated_total{mode="real"} 1',
        'embedding_batch_generated_total{mode="fallback"} 1',
        'embedding_batch_size_count{mode="real"} 2',
        'embedding_batch_size_sum{mode="real"} 4',
        'embedding_batch_size_bucket{mode="real",le="1"} 1',
        'embedding_batch_size_bucket{mode="real",le="4"} 2',
        'embedding_text_length_count{mode="fallback"} 3',
        'embedding_text_length_sum{mode="fallback"} 17',
        'embedding_text_length_bucket{mode="fallback",le="+Inf"} 3',
        'akosha_requests_total{route="embeddings",code="200",model="other"} 2',
        'akosha_requests_total{route="embed",code="200",model="other"} 1',
        'akosha_requests_total{route="api_embed",code="200",model="other"} 1',
        'akosha_fallback_total{reason="all_open",model="other"} 2',
        'akosha_upstream_requests_total{upstream="b",outcome="success"} 2',
        'circuit_state{service_name="b"} 0',
        'circuit_successful_calls_total{service_name="b"} 2',
        'circuit_rejected_calls_total{service_name="b"} 2',
        'akosha_build_info{version="0.1.0"} 1',
    ]
    for line in expect:
        assert line in text, line
    assert "# TYPE akosha_request_duration_seconds histogram" in text
    assert "process_resident_memory_bytes " in text


def test_spans_carry_the_genai_model_attributes(backend, receiver, start_akosha):
    """gen_ai.request.model is what was asked (the CLIENT span: what that upstream was
    sent), gen_ai.response.model what answered; OpenAI puts it after the vectors."""
    body = ('{"object":"list","data":[{"object":"embedding","index":0,"embedding":[%s]}],'
            '"model":"text-embedding-3-small","usage":{"prompt_tokens":1,"total_tokens":1}}'
            % ",".join(["0.25"] * 3000))
    backend.default = {"status": 200, "body": body.encode()}
    a = start_akosha(telemetry(receiver) + "[upstream b]\nurl = http://127.0.0.1:%d\n"
                     "models = te3=text-embedding-3-small\n" % backend.port, env=FAST_EXPORT)
    assert a.post_json("/v1/embeddings", {"input": "x", "model": "te3"})[0] == 200
    spans = receiver.wait_spans(2)
    server = [s for s in spans if s["kind"] == 2][0]
    client = [s for s in spans if s["kind"] == 3][0]
    assert attr(server, "gen_ai.request.model") == "te3"
    assert attr(server, "gen_ai.response.model") == "text-embedding-3-small"
    assert attr(server, "akosha.model") == "te3"
    assert attr(client, "gen_ai.request.model") == "text-embedding-3-small"


def test_fallback_spans_name_the_hash_model_as_the_response_model(receiver, start_akosha):
    a = start_akosha(telemetry(receiver) + "[fallback]\nmode = always\n", env=FAST_EXPORT)
    a.post_json("/v1/embeddings", {"input": "x", "model": "m"})
    server = [s for s in receiver.wait_spans(2) if s["kind"] == 2][0]
    assert attr(server, "gen_ai.request.model") == "m"
    assert attr(server, "gen_ai.response.model") == "akosha-hash-384"


# ---- OTLP/gRPC (issue 20) ----
#
# A real gRPC receiver: grpc-js serving TraceService/Export with the official
# OpenTelemetry proto files, installed by `npm ci` from otlp_grpc/package-lock.json
# once per session (node_modules is never committed). Without node, npm or the npm
# registry these tests fail, naming what is missing: they never skip.

GRPC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "otlp_grpc")
GRPC_FILES = ("package.json", "package-lock.json", "receiver.mjs")
GRPC_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture(scope="session")
def grpc_receiver_dir():
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the OTLP/gRPC receiver (Debian packages "
                    "nodejs and npm)", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="akosha-otlp-grpc-") as d:
        for f in GRPC_FILES:
            shutil.copy(os.path.join(GRPC_DIR, f), d)
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                            "--prefer-offline"], cwd=d, capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, npm_config_update_notifier="false"))
        if r.returncode != 0:
            pytest.fail("npm ci could not install the OTLP/gRPC receiver "
                        "(tests/integration/otlp_grpc/package-lock.json):\n%s"
                        % (r.stdout + r.stderr)[-3000:], pytrace=False)
        yield {"node": node, "dir": d}


class GrpcReceiver:
    """otlp_grpc/receiver.mjs: one JSON line per Export call it answered."""

    def __init__(self, where, unavailable=0):
        self.calls = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([where["node"], os.path.join(where["dir"], "receiver.mjs"),
                                      "--unavailable", str(unavailable)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        assert first, "receiver.mjs did not start: %s" % self.proc.stderr.read()
        self.port = json.loads(first)["port"]
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.calls.append(json.loads(line))

    def accepted_spans(self):
        with self.lock:
            return [s for c in self.calls if c["code"] == 0 for s in c["spans"]]

    def wait_spans(self, n, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.accepted_spans()) < n:
            time.sleep(0.05)
        return self.accepted_spans()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def grpc_receiver(grpc_receiver_dir):
    made = []

    def make(unavailable=0):
        r = GrpcReceiver(grpc_receiver_dir, unavailable)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def grpc_config(rec, backend, extra=""):
    return ("[telemetry]\notlp_endpoint = http://127.0.0.1:%d\notlp_protocol = grpc\n"
            "sample_rate = 1.0\n%s[upstream b]\nurl = http://127.0.0.1:%d\n"
            % (rec.port, extra, backend.port))


def test_grpc_export_delivers_every_span_decoded_by_the_official_schema(backend, grpc_receiver,
                                                                        start_akosha):
    rec = grpc_receiver()
    backend.default = {"status": 200, "body": embedding_body()}
    a = start_akosha(grpc_config(rec, backend), env=FAST_EXPORT)
    traces = ["%032x" % (0x1000 + i) for i in range(8)]
    for t in traces:
        status, _, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "m"},
                                   headers={"traceparent": "00-%s-%s-01" % (t, PARENT)})
        assert status == 200
    spans = rec.wait_spans(2 * len(traces))
    assert len(spans) == 2 * len(traces), (rec.calls, a.logs())
    for t in traces:
        mine = [s for s in spans if s["trace_id"] == t]
        server = [s for s in mine if s["kind"] == "SPAN_KIND_SERVER"]
        client = [s for s in mine if s["kind"] == "SPAN_KIND_CLIENT"]
        assert len(server) == 1 and len(client) == 1, mine
        assert server[0]["name"] == "POST /v1/embeddings"
        assert server[0]["parent_span_id"] == PARENT
        assert server[0]["attributes"]["http.response.status_code"] == 200
        assert server[0]["attributes"]["gen_ai.request.model"] == "m"
        assert client[0]["parent_span_id"] == server[0]["span_id"]
        assert client[0]["attributes"]["akosha.upstream"] == "b"
        assert int(server[0]["start"]) <= int(client[0]["start"]) <= int(client[0]["end"])
        assert server[0]["service"] == "akosha" and server[0]["scope"] == "akosha"
    md = rec.calls[0]["metadata"]
    assert md.get("user-agent", "").startswith("akosha/"), md
    assert "grpc-encoding" not in md or md["grpc-encoding"] == "identity", md
    assert "OTLP/gRPC" not in a.logs(), "the protocol was given: no port rule line"


def test_grpc_unavailable_is_retried(backend, grpc_receiver, start_akosha):
    rec = grpc_receiver(unavailable=1)
    a = start_akosha(grpc_config(rec, backend), env=FAST_EXPORT)
    assert a.request("GET", "/x")[0] == 200
    spans = rec.wait_spans(2, timeout=15)
    assert len(spans) == 2, (rec.calls, a.logs())
    assert [c["code"] for c in rec.calls] == [14, 0]
    assert rec.calls[0]["spans"] == rec.calls[1]["spans"], "the same batch again"
    assert a.breaker("otlp-exporter")["state"] == "closed"


def test_grpc_gzip_compresses_the_message(backend, grpc_receiver, start_akosha):
    """grpc-js hides grpc-encoding from the handler, so the proof is the size: the
    same spans in a smaller message, decoded by the receiver all the same."""
    sizes = {}
    for compression in ("none", "gzip"):
        rec = grpc_receiver()
        a = start_akosha(grpc_config(rec, backend),
                         env={"OTEL_BSP_SCHEDULE_DELAY": "60000",
                              "OTEL_EXPORTER_OTLP_COMPRESSION": compression})
        for _ in range(10):
            assert a.request("GET", "/x")[0] == 200
        a.signal(signal.SIGTERM)  # one batch of all 20 spans
        assert a.proc.wait(15) == 0
        spans = rec.wait_spans(20)
        assert len(spans) == 20, (rec.calls, a.logs())
        assert {s["kind"] for s in spans} == {"SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"}
        assert all(s["attributes"].get("url.path") == "/x" for s in spans
                   if s["kind"] == "SPAN_KIND_SERVER"), spans
        assert len(rec.calls) == 1
        sizes[compression] = int(rec.calls[0]["metadata"]["content-length"])
    assert sizes["gzip"] < sizes["none"] * 0.7, sizes


def test_grpc_from_the_environment_and_by_port_4317(backend, grpc_receiver, start_akosha):
    rec = grpc_receiver()
    a = start_akosha("[telemetry]\notlp_endpoint = http://127.0.0.1:%d\nsample_rate = 1.0\n"
                     "[upstream b]\nurl = http://127.0.0.1:%d\n" % (rec.port, backend.port),
                     env=dict(FAST_EXPORT, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"))
    assert a.request("GET", "/x")[0] == 200
    assert len(rec.wait_spans(2)) == 2, (rec.calls, a.logs())
    a.stop()
    # No protocol anywhere and port 4317: gRPC, said once in the log. Nothing needs to
    # listen there: the line is written at start-up.
    b = start_akosha("[telemetry]\notlp_endpoint = http://127.0.0.1:4317\nsample_rate = 1.0\n"
                     "[upstream b]\nurl = http://127.0.0.1:%d\n" % backend.port,
                     env={"OTEL_BSP_EXPORT_TIMEOUT": "200"})
    logs = b.logs()
    assert logs.count("exporting with OTLP/gRPC") == 1, logs
    assert GRPC_PATH in logs, logs
