"""Issue 4: the embedded fallback worker, in each API's shape."""
import base64
import json
import math
import struct
import threading
import time

from conftest import embedding_body, free_port


def dead_upstream(extra=""):
    return ("[upstream dead]\nurl = http://127.0.0.1:%d\nretries = 0\n" % free_port()) + extra


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def check_fallback_headers(headers):
    assert headers["X-Akosha-Mode"] == "fallback"
    assert headers["X-Akosha-Upstream"] == "local"


def test_openai_float_answer_with_upstream_down(start_akosha):
    a = start_akosha(dead_upstream())
    status, headers, data = a.post_json("/v1/embeddings",
                                        {"input": ["hello world", "second text"], "model": "m"})
    assert status == 200
    check_fallback_headers(headers)
    obj = json.loads(data)
    assert obj["object"] == "list"
    assert obj["model"] == "akosha-hash-384"
    assert [d["index"] for d in obj["data"]] == [0, 1]
    for d in obj["data"]:
        assert d["object"] == "embedding"
        assert len(d["embedding"]) == 384
        assert abs(norm(d["embedding"]) - 1.0) < 1e-5
    assert obj["usage"]["prompt_tokens"] >= 2


def test_openai_base64_answer_decodes_to_the_float_answer(start_akosha):
    a = start_akosha(dead_upstream())
    _, _, f = a.post_json("/v1/embeddings", {"input": "base64 please", "model": "m"})
    status, headers, b = a.post_json("/v1/embeddings", {"input": "base64 please", "model": "m",
                                                        "encoding_format": "base64"})
    assert status == 200
    raw = base64.b64decode(json.loads(b)["data"][0]["embedding"])
    floats = struct.unpack("<%df" % (len(raw) // 4), raw)
    expect = json.loads(f)["data"][0]["embedding"]
    assert len(floats) == 384
    assert all(struct.pack("<f", x) == struct.pack("<f", y) for x, y in zip(floats, expect))


def test_tei_answer(start_akosha):
    a = start_akosha(dead_upstream())
    status, headers, data = a.post_json("/embed", {"inputs": ["a b c", "d e f"]})
    assert status == 200
    check_fallback_headers(headers)
    obj = json.loads(data)
    assert isinstance(obj, list) and len(obj) == 2 and len(obj[0]) == 384


def test_ollama_answers(start_akosha):
    a = start_akosha(dead_upstream())
    status, headers, data = a.post_json("/api/embed", {"model": "nomic", "input": ["x y", "z"]})
    assert status == 200
    check_fallback_headers(headers)
    obj = json.loads(data)
    assert obj["model"] == "akosha-hash-384" and len(obj["embeddings"]) == 2
    status, headers, data = a.post_json("/api/embeddings", {"model": "nomic", "prompt": "x y"})
    assert status == 200
    check_fallback_headers(headers)
    assert len(json.loads(data)["embedding"]) == 384


def test_same_text_same_vector_across_restarts(start_akosha):
    a = start_akosha(dead_upstream())
    first = json.loads(a.post_json("/embed", {"inputs": "determinism matters"})[2])
    a.stop()
    b = start_akosha(dead_upstream())
    second = json.loads(b.post_json("/embed", {"inputs": "determinism matters"})[2])
    assert first == second


def test_similar_texts_score_higher(start_akosha):
    a = start_akosha("[fallback]\nmode = always\n")
    vecs = json.loads(a.post_json("/embed", {"inputs": [
        "the cat sat on the mat", "a cat sat on a mat", "quarterly revenue grew five percent"]})[2])
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])


def test_deny_header_gives_503(start_akosha):
    a = start_akosha(dead_upstream())
    status, headers, data = a.post_json("/v1/embeddings", {"input": "x"},
                                        headers={"X-Akosha-Fallback": "deny"})
    assert status == 503
    assert json.loads(data)["error"]["type"] == "service_unavailable"


def test_mode_always_with_no_upstream_serves(start_akosha):
    a = start_akosha("")
    status, headers, data = a.post_json("/v1/embeddings", {"input": "no upstream at all"})
    assert status == 200
    check_fallback_headers(headers)
    # other paths have nobody to answer them
    status, _, data = a.request("GET", "/v1/models")
    assert status == 503


def check_no_upstream_answer(status, headers, data):
    """The documented answer when fallback is refused: 503, Retry-After, OpenAI error shape."""
    assert status == 503, (status, data)
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(data)["error"]["type"] == "service_unavailable"
    assert headers.get("X-Akosha-Mode") != "fallback"


def test_mode_off_gives_503(start_akosha):
    # man akosha.conf(5), [fallback] mode off: "answer 503 instead" (not the upstream's 502).
    a = start_akosha("[fallback]\nmode = off\n" + dead_upstream())
    check_no_upstream_answer(*a.post_json("/v1/embeddings", {"input": "x"}))


def test_mode_off_gives_503_after_an_upstream_5xx(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha("[fallback]\nmode = off\n[upstream b]\nurl = http://127.0.0.1:%d\n"
                     "retries = 0\n" % backend.port)
    check_no_upstream_answer(*a.post_json("/v1/embeddings", {"input": "x"}))
    assert backend.count() == 1


def test_deny_header_gives_503_after_an_upstream_5xx(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n" % backend.port)
    check_no_upstream_answer(*a.post_json("/v1/embeddings", {"input": "x"},
                                          headers={"X-Akosha-Fallback": "deny"}))
    assert backend.count() == 1


def test_mode_always_never_contacts_upstreams(backend, start_akosha):
    a = start_akosha("[fallback]\nmode = always\n[upstream b]\nurl = http://127.0.0.1:%d\n"
                     % backend.port)
    status, headers, _ = a.post_json("/v1/embeddings", {"input": "x"})
    assert status == 200
    check_fallback_headers(headers)
    assert backend.count() == 0


def test_open_breaker_goes_straight_to_fallback(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n"
                     "failure_threshold = 2\n" % backend.port)
    for _ in range(2):
        status, headers, _ = a.post_json("/v1/embeddings", {"input": "x"})
        assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    assert a.breaker("b")["state"] == "open"
    status, headers, _ = a.post_json("/v1/embeddings", {"input": "x"})
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    assert backend.count() == 2
    _, _, metrics = a.admin("GET", "/metrics")
    assert b'akosha_fallback_total{reason="all_open",model="other"} 1' in metrics
    assert b'akosha_fallback_total{reason="attempts_exhausted",model="other"} 2' in metrics


def test_bad_requests_get_400_in_each_api_shape(start_akosha):
    a = start_akosha("[fallback]\nmode = always\n")
    status, _, data = a.request("POST", "/v1/embeddings", b"not json")
    assert status == 400
    err = json.loads(data)["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    status, _, data = a.post_json("/v1/embeddings", {"input": "   "})
    assert status == 400
    status, _, data = a.post_json("/embed", {"inputs": 5})
    assert status == 400
    obj = json.loads(data)
    assert set(obj) == {"error", "error_type"}
    status, _, data = a.post_json("/api/embed", {"model": "m"})
    assert status == 400
    assert set(json.loads(data)) == {"error"}
    status, _, data = a.post_json("/api/embeddings", {"model": "m", "prompt": ""})
    assert status == 400
    assert set(json.loads(data)) == {"error"}
    status, _, data = a.post_json("/v1/embeddings", {"input": ["x"] * 2049})
    assert status == 400


def test_dimensions_request_model_section_and_default(start_akosha):
    a = start_akosha("[fallback]\nmode = always\ndimensions = 64\n[model big]\ndimensions = 1024\n")
    emb = lambda obj: json.loads(a.post_json("/v1/embeddings", obj)[2])["data"][0]["embedding"]
    assert len(emb({"input": "x", "model": "other"})) == 64
    assert len(emb({"input": "x", "model": "big"})) == 1024
    assert len(emb({"input": "x", "model": "big", "dimensions": 16})) == 16


def test_learned_dimensions_follow_the_last_real_answer(backend, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(dim=768, model="learned")}
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n" % backend.port)
    status, headers, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "learned"})
    assert status == 200 and headers["X-Akosha-Mode"] == "real"
    a.admin("POST", "/upstreams/b/open")
    status, headers, data = a.post_json("/v1/embeddings", {"input": "x", "model": "learned"})
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    assert len(json.loads(data)["data"][0]["embedding"]) == 768
    # another model still gets the default
    _, _, data = a.post_json("/v1/embeddings", {"input": "x", "model": "unknown"})
    assert len(json.loads(data)["data"][0]["embedding"]) == 384


def test_learned_dimensions_are_rechecked_once_a_second(backend, start_akosha):
    # A model's size is sniffed from its first real answer, then at most once
    # a second: a change shows up in the fallback after the next check.
    backend.default = {"status": 200, "body": embedding_body(dim=768, model="m")}
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n" % backend.port)
    def real():
        status, headers, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "m"})
        assert status == 200 and headers["X-Akosha-Mode"] == "real"

    def fallback_dim():
        a.admin("POST", "/upstreams/b/open")
        status, headers, data = a.post_json("/v1/embeddings", {"input": "x", "model": "m"})
        a.admin("POST", "/upstreams/b/close")
        assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
        return len(json.loads(data)["data"][0]["embedding"])

    real()
    assert fallback_dim() == 768
    backend.default = {"status": 200, "body": embedding_body(dim=1024, model="m")}
    real()  # within the second: not sniffed
    assert fallback_dim() == 768
    time.sleep(1.1)
    real()  # the once-a-second check
    assert fallback_dim() == 1024


def test_full_queue_gives_503(start_akosha):
    # One worker, queue of one: a burst of big batches overflows it.
    a = start_akosha("[fallback]\nmode = always\nworkers = 1\nqueue_size = 1\n")
    big = {"input": ["lorem ipsum dolor sit amet " * 40] * 2048, "model": "m",
           "dimensions": 4096}
    results = []

    def call():
        results.append(a.post_json("/v1/embeddings", big, timeout=60))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    codes = sorted(r[0] for r in results)
    assert 200 in codes and 503 in codes, codes
    for status, headers, data in results:
        if status == 503:
            assert headers["Retry-After"] == "1"
            assert json.loads(data)["error"]["code"] == "queue_full"


def test_fallback_metrics_count_inputs(backend, start_akosha):
    a = start_akosha("[fallback]\nmode = always\n")
    a.post_json("/v1/embeddings", {"input": ["one", "two", "three"]})
    a.post_json("/v1/embeddings", {"input": "four"})
    _, headers, metrics = a.admin("GET", "/metrics")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'embedding_generated_total{mode="fallback"} 4' in metrics
    assert b'embedding_batch_generated_total{mode="fallback"} 1' in metrics
    assert b'embedding_batch_size_count{mode="fallback"} 2' in metrics
    assert b'akosha_requests_total{route="embeddings",code="200",model="other"} 2' in metrics
