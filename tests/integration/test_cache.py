"""Issue 16: the embedding cache, memory tier: per-input hits, partial batches merged in
order, real vectors through an outage, the caller's Cache-Control, per-caller keys, purge."""
import base64
import hashlib
import json
import struct
import time

import pytest

DIM = 8


def vec(text, dim=DIM):
    """The backend's vector for a text: deterministic, distinct per text, exact in float32."""
    h = hashlib.sha256(text.encode() if isinstance(text, str) else json.dumps(text).encode())
    return [struct.unpack("<h", h.digest()[2 * i:2 * i + 2])[0] / 256.0 for i in range(dim)]


def f32(values):
    """Values as float32 reads them: what a cached answer, parsed, must equal."""
    return list(struct.unpack("<%df" % len(values), struct.pack("<%df" % len(values), *values)))


def answer(path, body):
    """An upstream that embeds what it is asked, in the route's API shape."""
    req = json.loads(body)
    if path == "/embed":
        inputs = req["inputs"] if isinstance(req["inputs"], list) else [req["inputs"]]
        return json.dumps([vec(t) for t in inputs]).encode()
    inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
    if path == "/api/embed":
        return json.dumps({"model": req.get("model"), "embeddings": [vec(t) for t in inputs],
                           "prompt_eval_count": 10 * len(inputs)}).encode()
    b64 = req.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i,
             "embedding": (base64.b64encode(struct.pack("<%df" % DIM, *vec(t))).decode()
                           if b64 else vec(t))} for i, t in enumerate(inputs)]
    return json.dumps({"object": "list", "data": data, "model": req.get("model"),
                       "usage": {"prompt_tokens": 10 * len(inputs),
                                 "total_tokens": 10 * len(inputs)}}).encode()


def config(backend, cache="memory = 16M\n", extra=""):
    return ("[cache]\n%s\n[upstream u]\nurl = http://127.0.0.1:%d\nretries = 0\n%s"
            % (cache, backend.port, extra))


def inputs_sent(backend, i=-1):
    req = json.loads(backend.requests[i][3])
    return req.get("input", req.get("inputs"))


def vectors(body, b64=False):
    doc = json.loads(body)
    out = []
    for d in sorted(doc["data"], key=lambda d: d["index"]):
        e = d["embedding"]
        out.append(list(struct.unpack("<%df" % DIM, base64.b64decode(e))) if b64 else f32(e))
    return out


@pytest.fixture
def embedder(backend):
    backend.default = {"fn": answer}
    return backend


def test_a_repeated_request_is_served_from_memory(embedder, start_akosha):
    a = start_akosha(config(embedder))
    req = {"model": "m", "input": ["alpha", "beta"]}
    status, h, body = a.post_json("/v1/embeddings", req)
    assert status == 200 and h["X-Akosha-Cache"] == "miss" and h["X-Akosha-Mode"] == "real"
    first = vectors(body)
    status, h, body = a.post_json("/v1/embeddings", req)
    assert status == 200 and h["X-Akosha-Cache"] == "hit", h
    assert h["X-Akosha-Mode"] == "real" and h["X-Akosha-Upstream"] == "cache"
    assert embedder.count() == 1, "a hit costs no upstream call"
    assert vectors(body) == first == [vec("alpha"), vec("beta")]
    assert json.loads(body)["usage"]["prompt_tokens"] == 0, "cached inputs cost no tokens"


def test_a_partial_batch_asks_only_for_the_misses_and_merges_in_order(embedder, start_akosha):
    a = start_akosha(config(embedder))
    a.post_json("/v1/embeddings", {"model": "m", "input": ["b", "d"]})
    texts = ["a", "b", "c", "d", "e"]
    status, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": texts})
    assert status == 200, body
    assert h["X-Akosha-Cache"] == "partial" and h["X-Akosha-Cache-Hits"] == "2/5"
    assert h["X-Akosha-Upstream"] == "u" and h["X-Akosha-Mode"] == "real"
    assert inputs_sent(embedder) == ["a", "c", "e"], "only the misses go upstream"
    assert vectors(body) == [vec(t) for t in texts]
    assert json.loads(body)["usage"]["prompt_tokens"] == 30, "the upstream's usage for 3 inputs"
    status, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": texts})
    assert h["X-Akosha-Cache"] == "hit" and embedder.count() == 2


def test_base64_and_float_share_entries(embedder, start_akosha):
    a = start_akosha(config(embedder))
    a.post_json("/v1/embeddings", {"model": "m", "input": ["x", "y"], "encoding_format": "base64"})
    status, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": ["x", "y", "z"]})
    assert h["X-Akosha-Cache"] == "partial"
    assert vectors(body) == [vec("x"), vec("y"), vec("z")]
    status, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": ["z", "x"],
                                                     "encoding_format": "base64"})
    assert h["X-Akosha-Cache"] == "hit"
    assert vectors(body, b64=True) == [vec("z"), vec("x")]


def test_tei_and_ollama_partial_batches(embedder, start_akosha):
    a = start_akosha(config(embedder))
    a.post_json("/embed", {"inputs": ["p"]})
    status, h, body = a.post_json("/embed", {"inputs": ["o", "p", "q"]})
    assert status == 200 and h["X-Akosha-Cache"] == "partial"
    assert inputs_sent(embedder) == ["o", "q"]
    assert [f32(v) for v in json.loads(body)] == [vec("o"), vec("p"), vec("q")]
    a.post_json("/api/embed", {"model": "m", "input": ["k"]})
    status, h, body = a.post_json("/api/embed", {"model": "m", "input": ["j", "k"]})
    assert status == 200 and h["X-Akosha-Cache"] == "partial"
    doc = json.loads(body)
    assert [f32(v) for v in doc["embeddings"]] == [vec("j"), vec("k")]
    assert doc["prompt_eval_count"] == 10


def test_parameters_that_change_vectors_are_in_the_key(embedder, start_akosha):
    a = start_akosha(config(embedder))
    a.post_json("/v1/embeddings", {"model": "m", "input": "t"})
    _, h, _ = a.post_json("/v1/embeddings", {"model": "m", "input": "t", "dimensions": DIM})
    assert h["X-Akosha-Cache"] == "miss", "dimensions changes the vector"
    _, h, _ = a.post_json("/v1/embeddings", {"model": "other", "input": "t"})
    assert h["X-Akosha-Cache"] == "miss", "another model, another space"
    _, h, _ = a.post_json("/v1/embeddings", {"model": "m", "input": "t", "user": "u1"})
    assert h["X-Akosha-Cache"] == "hit", "user does not change the vector"


def test_cache_control_no_store_and_no_cache(embedder, start_akosha):
    a = start_akosha(config(embedder))
    req = {"model": "m", "input": "s"}
    _, h, _ = a.post_json("/v1/embeddings", req, headers={"Cache-Control": "no-store"})
    assert h["X-Akosha-Cache"] == "bypass"
    _, h, _ = a.post_json("/v1/embeddings", req)
    assert h["X-Akosha-Cache"] == "miss", "no-store wrote nothing"
    _, h, _ = a.post_json("/v1/embeddings", req, headers={"Cache-Control": "no-cache"})
    assert h["X-Akosha-Cache"] == "bypass" and embedder.count() == 3, "no-cache looks nothing up"
    _, h, _ = a.post_json("/v1/embeddings", req)
    assert h["X-Akosha-Cache"] == "hit" and embedder.count() == 3


def test_per_caller_keys_keep_callers_apart(embedder, start_akosha):
    a = start_akosha(config(embedder, cache="memory = 16M\nper_caller = yes\n"))
    req = {"model": "m", "input": "secret text"}
    a.post_json("/v1/embeddings", req, headers={"Authorization": "Bearer one"})
    _, h, _ = a.post_json("/v1/embeddings", req, headers={"Authorization": "Bearer two"})
    assert h["X-Akosha-Cache"] == "miss"
    _, h, _ = a.post_json("/v1/embeddings", req, headers={"Authorization": "Bearer one"})
    assert h["X-Akosha-Cache"] == "hit"


def test_an_outage_serves_hits_and_marks_fallback_items(embedder, start_akosha):
    a = start_akosha(config(embedder))
    a.post_json("/v1/embeddings", {"model": "m", "input": ["h0", "h2"]})
    embedder.default = {"status": 500}
    status, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": ["h0", "m1", "h2"]})
    assert status == 200 and h["X-Akosha-Mode"] == "fallback"
    assert h["X-Akosha-Fallback-Items"] == "1"
    assert h["X-Akosha-Cache"] == "partial" and h["X-Akosha-Cache-Hits"] == "2/3"
    got = vectors(body)
    assert got[0] == vec("h0") and got[2] == vec("h2") and got[1] != vec("m1")
    assert len(got[1]) == DIM, "the fallback's vector has the cached size"
    status, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": ["h2", "h0"]})
    assert status == 200 and h["X-Akosha-Mode"] == "real" and h["X-Akosha-Cache"] == "hit"
    status, h, _ = a.post_json("/v1/embeddings", {"model": "m", "input": ["h0", "m1"]},
                               headers={"X-Akosha-Fallback": "deny"})
    assert status == 503, "deny: a miss during an outage is a 503"


def test_stale_entries_serve_only_in_an_outage(embedder, start_akosha):
    a = start_akosha(config(embedder, cache="memory = 16M\nttl = 1s\nstale_if_error = 1h\n"))
    a.post_json("/v1/embeddings", {"model": "m", "input": "old"})

    time.sleep(1.3)
    _, h, _ = a.post_json("/v1/embeddings", {"model": "m", "input": "old"})
    assert h["X-Akosha-Cache"] == "miss" and embedder.count() == 2, "past ttl: asked again"
    time.sleep(1.3)
    embedder.default = {"status": 500}
    status, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": "old"})
    assert status == 200 and h["X-Akosha-Mode"] == "real", "stale_if_error covers the outage"
    assert vectors(body) == [vec("old")]


def test_fallback_vectors_are_never_cached(embedder, start_akosha):
    embedder.default = {"status": 500}
    a = start_akosha(config(embedder))
    _, h, _ = a.post_json("/v1/embeddings", {"model": "m", "input": "f"})
    assert h["X-Akosha-Mode"] == "fallback"
    embedder.default = {"fn": answer}
    a.admin("POST", "/upstreams/u/close")
    _, h, body = a.post_json("/v1/embeddings", {"model": "m", "input": "f"})
    assert h["X-Akosha-Mode"] == "real" and h["X-Akosha-Cache"] == "miss"
    assert vectors(body) == [vec("f")]


def test_without_a_cache_answers_say_off(embedder, start_akosha):
    a = start_akosha(config(embedder, cache=""))
    _, h, _ = a.post_json("/v1/embeddings", {"model": "m", "input": "n"})
    assert h["X-Akosha-Cache"] == "off"


def test_stats_metrics_and_purge(embedder, start_akosha):
    a = start_akosha(config(embedder, extra="models = m, n\n") +
                     "\n[model m]\naliases = m-alias\n")
    a.post_json("/v1/embeddings", {"model": "m", "input": ["1", "2"]})
    a.post_json("/v1/embeddings", {"model": "n", "input": ["1"]})
    a.post_json("/v1/embeddings", {"model": "m-alias", "input": ["1", "3"]})
    cache = a.stats()["cache"]
    assert cache["entries"] == 4 and cache["hits"] == 1 and cache["budget"] == 16 << 20
    assert 0 < cache["bytes"] <= cache["budget"]
    metrics = a.admin("GET", "/metrics")[2].decode()
    assert 'akosha_cache_lookups_total{result="hit"} 1' in metrics
    assert 'akosha_cache_requests_total{result="partial"} 1' in metrics
    assert "akosha_cache_entries 4" in metrics
    status, _, body = a.admin("POST", "/cache/purge?model=m-alias")
    assert status == 200 and json.loads(body) == {"purged": 3}, "the alias names model m"
    _, h, _ = a.post_json("/v1/embeddings", {"model": "n", "input": "1"})
    assert h["X-Akosha-Cache"] == "hit", "another model's entries stay"
    status, _, body = a.admin("POST", "/cache/purge")
    assert status == 200 and json.loads(body) == {"purged": 1}
    assert a.stats()["cache"]["entries"] == 0
    assert a.admin("GET", "/cache/purge")[0] == 405


def test_spans_count_hits_and_misses(embedder, start_akosha):
    from test_telemetry import FAST_EXPORT, Receiver, attr, telemetry
    receiver = Receiver()
    try:
        a = start_akosha(telemetry(receiver) + config(embedder), env=FAST_EXPORT)
        a.post_json("/v1/embeddings", {"model": "m", "input": ["t1"]})
        a.post_json("/v1/embeddings", {"model": "m", "input": ["t1", "t2", "t3"]})
        spans = receiver.wait_spans(5)
        servers = [s for s in spans if s["kind"] == 2]
        assert len(servers) == 2
        last = [s for s in servers if attr(s, "akosha.cache") == "partial"][0]
        assert int(attr(last, "akosha.cache.hits")) == 1
        assert int(attr(last, "akosha.cache.misses")) == 2
    finally:
        receiver.stop()


def test_access_log_lines_say_what_the_cache_did(embedder, start_akosha, tmp_path):
    log = tmp_path / "access.log"
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\naccess_log = %s\n" % log +
                     config(embedder))
    a.post_json("/v1/embeddings", {"model": "m", "input": "l"})
    a.post_json("/v1/embeddings", {"model": "m", "input": "l"})
    lines = []
    for _ in range(50):
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.1)
    assert [json.loads(line).get("cache") for line in lines] == ["miss", "hit"]
    assert json.loads(lines[1])["upstream"] == "cache" and json.loads(lines[1])["mode"] == "real"
