"""Issue 15: requests are routed by model; failover never crosses vector spaces."""
import http.client
import json
import socket

from conftest import embedding_body


def up(name, backend, extra=""):
    return "[upstream %s]\nurl = http://127.0.0.1:%d\nretries = 1\n%s" % (name, backend.port, extra)


def sent_model(backend, i=-1):
    return json.loads(backend.requests[i][3])["model"]


def test_a_request_goes_only_to_upstreams_serving_its_model(backend, backend2, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(model="bge-small")}
    backend2.default = {"status": 200, "body": embedding_body(model="te3")}
    a = start_akosha(up("tei", backend, "priority = 0\nmodels = bge-small\n") +
                     up("openai", backend2, "priority = 1\nmodels = te3\n"))
    for model, name, b in (("bge-small", "tei", backend), ("te3", "openai", backend2)):
        status, headers, body = a.post_json("/v1/embeddings", {"input": "x", "model": model})
        assert status == 200 and headers["X-Akosha-Upstream"] == name
        assert headers["X-Akosha-Model"] == model
        assert json.loads(body)["model"] == model
    assert backend.count() == 1 and backend2.count() == 1


def test_when_its_upstream_is_down_the_fallback_answers_never_another_model(backend, backend2,
                                                                          start_akosha):
    backend.default = {"status": 500}
    backend2.default = {"status": 200, "body": embedding_body(model="te3")}
    a = start_akosha(up("tei", backend, "priority = 0\nmodels = bge-small\n") +
                     up("openai", backend2, "priority = 1\nmodels = te3\n"))
    status, headers, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "bge-small"})
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    assert headers["X-Akosha-Model"] == "bge-small"
    assert backend2.count() == 0, "bge-small must never be answered from te3's upstream"
    a.admin("POST", "/upstreams/tei/open")
    status, headers, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "bge-small"},
                                     headers={"X-Akosha-Fallback": "deny"})
    assert status == 503 and "Retry-After" in headers
    assert backend2.count() == 0


def test_names_are_rewritten_per_upstream(backend, backend2, start_akosha):
    backend.default = {"status": 500}
    backend2.default = {"status": 200, "body": embedding_body(model="remote-name")}
    a = start_akosha(up("a", backend, "priority = 0\nmodels = small=local-name\n") +
                     up("b", backend2, "priority = 1\nmodels = small=remote-name\n"))
    status, headers, body = a.post_json("/v1/embeddings", {"input": "x", "model": "small"})
    assert status == 200 and headers["X-Akosha-Upstream"] == "b"
    assert headers["X-Akosha-Model"] == "small"
    assert json.loads(body)["model"] == "remote-name", "the answer says what the upstream said"
    assert sent_model(backend) == "local-name"
    assert sent_model(backend2) == "remote-name"
    # The rest of the body is untouched, and Content-Length follows the new length.
    sent = json.loads(backend2.requests[-1][3])
    assert sent == {"input": "x", "model": "remote-name"}


def test_an_escaped_model_after_a_large_input_array_is_routed_and_rewritten(backend,
                                                                             start_akosha):
    backend.default = {"status": 200, "body": embedding_body(n=2000)}
    a = start_akosha(up("a", backend, "models = bge-small=BAAI/bge-small-en-v1.5\n"))
    inputs = json.dumps(["text number %d with \"quotes\" and \\ slashes" % i
                         for i in range(2000)])
    body = ('{"input":%s,"model":"bge\\u002dsmall","encoding_format":"float"}' % inputs).encode()
    status, headers, _ = a.request("POST", "/v1/embeddings", body,
                                   {"Content-Type": "application/json"})
    assert status == 200 and headers["X-Akosha-Model"] == "bge-small"
    sent = json.loads(backend.requests[-1][3])
    assert sent["model"] == "BAAI/bge-small-en-v1.5"
    assert sent["input"] == json.loads(inputs) and sent["encoding_format"] == "float"


def test_an_alias_is_the_same_model(backend, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(model="bge-small")}
    a = start_akosha(up("a", backend, "models = bge-small\n") +
                     "[model bge-small]\naliases = bge, BAAI/bge-small-en-v1.5\n")
    for name in ("bge", "BAAI/bge-small-en-v1.5", "bge-small"):
        status, headers, _ = a.post_json("/v1/embeddings", {"input": "x", "model": name})
        assert status == 200 and headers["X-Akosha-Model"] == "bge-small"
        assert sent_model(backend) == name  # listed without a rename: sent as the caller said


def test_tei_requests_follow_default_model(backend, backend2, start_akosha):
    backend.default = {"status": 200, "body": b"[[0.1,0.2]]"}
    backend2.default = {"status": 200, "body": b"[[0.3,0.4]]"}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\ndefault_model = bge-small\n" +
                     up("other", backend2, "priority = 0\nmodels = e5\n") +
                     up("tei", backend, "priority = 1\nmodels = bge-small\n"))
    status, headers, body = a.post_json("/embed", {"inputs": "x"})
    assert status == 200 and headers["X-Akosha-Upstream"] == "tei"
    assert headers["X-Akosha-Model"] == "bge-small"
    assert backend2.count() == 0


def test_an_unknown_model_is_a_404_in_each_apis_shape(backend, start_akosha):
    a = start_akosha(up("a", backend, "models = bge-small\n"))
    status, _, body = a.post_json("/v1/embeddings", {"input": "x", "model": "gpt-9"})
    assert status == 404
    err = json.loads(body)["error"]
    assert err["code"] == "model_not_found" and "gpt-9" in err["message"]
    status, _, body = a.post_json("/api/embed", {"input": "x", "model": "gpt-9"})
    assert status == 404 and "gpt-9" in json.loads(body)["error"]
    status, _, body = a.post_json("/api/embeddings", {"prompt": "x", "model": "gpt-9"})
    assert status == 404 and "gpt-9" in json.loads(body)["error"]
    assert backend.count() == 0


def test_with_an_upstream_serving_any_model_unknown_models_go_there(backend, backend2,
                                                                  start_akosha):
    backend2.default = {"status": 200, "body": embedding_body(model="whatever")}
    a = start_akosha(up("listed", backend, "priority = 0\nmodels = bge-small\n") +
                     up("any", backend2, "priority = 1\n"))
    status, headers, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "whatever"})
    assert status == 200 and headers["X-Akosha-Upstream"] == "any"
    assert "X-Akosha-Model" not in headers
    assert backend.count() == 0


def test_the_embedded_default_serves_every_model(start_akosha):
    a = start_akosha("")
    for model in ("a", "b/c", None):
        req = {"input": "x"} if model is None else {"input": "x", "model": model}
        status, headers, _ = a.post_json("/v1/embeddings", req)
        assert status == 200 and headers["X-Akosha-Mode"] == "fallback"


def test_fallback_sizes_follow_aliases(backend, start_akosha):
    a = start_akosha("[fallback]\nmode = always\n[model bge-small]\ndimensions = 48\n"
                     "aliases = bge\n")
    status, headers, body = a.post_json("/v1/embeddings", {"input": "x", "model": "bge"})
    assert status == 200 and headers["X-Akosha-Model"] == "bge-small"
    assert len(json.loads(body)["data"][0]["embedding"]) == 48


def test_check_reports_model_name_mistakes(tmp_path):
    import subprocess
    from conftest import AKOSHA_BIN
    path = tmp_path / "bad.conf"
    path.write_text("[proxy]\ndefault_model = ghost\n"
                    "[upstream u]\nurl = http://127.0.0.1:9\nmodels = a=x, a=y\n"
                    "[model a]\n[model b]\naliases = a\n")
    r = subprocess.run([AKOSHA_BIN, "-t", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "default_model: ghost is named by no upstream" in r.stderr
    assert "are the same model (a)" in r.stderr
    assert "aliases: a already names a" in r.stderr


def test_model_lists_are_answered_from_the_config(backend, start_akosha):
    a = start_akosha(up("a", backend, "models = bge-small, te3=text-embedding-3-small\n") +
                     "[model bge-small]\naliases = bge\n")
    status, headers, body = a.request("GET", "/v1/models")
    assert status == 200 and headers["X-Akosha-Upstream"] == "local"
    listing = json.loads(body)
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["bge-small", "bge", "te3"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in listing["data"])
    status, _, body = a.request("GET", "/api/tags")
    assert status == 200
    tags = json.loads(body)["models"]
    assert [m["name"] for m in tags] == ["bge-small", "bge", "te3"]
    assert tags[1]["details"]["parent_model"] == "bge-small"
    assert all(m["modified_at"].endswith("Z") for m in tags)
    assert backend.count() == 0


def test_without_named_models_the_list_passes_through(backend, start_akosha):
    backend.default = {"status": 200, "body": b'{"object":"list","data":[{"id":"up"}]}'}
    a = start_akosha(up("a", backend))
    status, headers, body = a.request("GET", "/v1/models")
    assert status == 200 and headers["X-Akosha-Upstream"] == "a"
    assert json.loads(body)["data"][0]["id"] == "up"


def test_metric_labels_stay_bounded_under_1000_unknown_model_names(backend, start_akosha):
    backend.default = {"status": 200, "body": embedding_body()}
    a = start_akosha(up("listed", backend, "models = bge-small\n") +
                     up("any", backend, "priority = 2\n"))
    # One keep-alive connection, each request in one write (no Nagle stalls): 1,000 in seconds.
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(1000):
        body = json.dumps({"input": "x", "model": "made-up-%d" % i}).encode()
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()
    a.post_json("/v1/embeddings", {"input": "x", "model": "bge-small"})
    text = a.admin("GET", "/metrics")[2].decode()
    series = [l for l in text.splitlines() if l.startswith("akosha_requests_total{")]
    assert series == ['akosha_requests_total{route="embeddings",code="200",model="other"} 1000',
                      'akosha_requests_total{route="embeddings",code="200",model="bge-small"} 1']
    assert "made-up" not in text


def test_stats_show_each_model(backend, backend2, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(dim=8, model="bge-small")}
    backend2.default = {"status": 500}
    a = start_akosha(up("tei", backend, "models = bge\n") +
                     up("openai", backend2, "models = te3=text-embedding-3-small\n") +
                     "[model bge-small]\naliases = bge\n")
    a.post_json("/v1/embeddings", {"input": "x", "model": "bge"})
    a.post_json("/v1/embeddings", {"input": "x", "model": "te3"})
    models = {m["name"]: m for m in a.stats()["models"]}
    assert set(models) == {"bge-small", "te3"}
    bge, te3 = models["bge-small"], models["te3"]
    assert bge["aliases"] == ["bge"]
    assert bge["upstreams"] == [{"name": "tei", "calls_it": "bge-small"}]
    assert (bge["requests"], bge["real"], bge["fallback"]) == (1, 1, 0)
    assert bge["learned_dimensions"] == 8
    assert te3["upstreams"] == [{"name": "openai", "calls_it": "text-embedding-3-small"}]
    assert (te3["requests"], te3["real"], te3["fallback"]) == (1, 0, 1)
    status, _, body = a.admin("GET", "/metrics")
    assert b'akosha_fallback_total{reason="attempts_exhausted",model="te3"} 1' in body


def test_the_readme_models_example_passes_the_check(tmp_path):
    import os
    import re
    import subprocess
    from conftest import AKOSHA_BIN
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme[readme.index("### Models"):]
    block = re.search(r"```ini\n(.*?)```", section, re.S).group(1)
    (tmp_path / "openai_key").write_text("sk-test\n")
    path = tmp_path / "models.conf"
    path.write_text(block)
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(tmp_path))
    r = subprocess.run([AKOSHA_BIN, "-t", "-c", str(path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
