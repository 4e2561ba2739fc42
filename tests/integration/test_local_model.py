"""Issue 17: the upstream's own model run locally, so fallback vectors stay in its space.

The models are tiny random-weight BERTs written by tests/bert_model.py, with a
float64 numpy reference of what they compute.
"""
import base64
import concurrent.futures
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import time

import pytest

from conftest import AKOSHA_BIN, embedding_body

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR = os.path.join(HERE, "..", "bert_model.py")


def make_model(path, *extra):
    subprocess.run(["/usr/bin/python3", GENERATOR, "--out", str(path)] + list(extra), check=True,
                   capture_output=True)
    if "--no-reference" in extra:
        return None
    with open(os.path.join(str(path), "reference.json")) as f:
        return json.load(f)


@pytest.fixture
def model(tmp_path):
    ref = make_model(tmp_path / "m")
    return str(tmp_path / "m"), ref


def close(a, b):
    assert len(a) == len(b)
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    assert dot / (na * nb) >= 0.99999


def texts(ref):
    return [t for t in ref["texts"] if t.strip()]


def expected(ref, text):
    return ref["embeddings"][ref["texts"].index(text)]


def test_with_no_upstream_the_local_model_answers_in_each_api_shape(model, start_akosha):
    path, ref = model
    a = start_akosha("[model mini]\nlocal = %s\n" % path)
    inputs = texts(ref)
    status, headers, body = a.post_json("/v1/embeddings", {"model": "mini", "input": inputs})
    assert status == 200, body
    assert headers["X-Akosha-Mode"] == "local" and headers["X-Akosha-Upstream"] == "local"
    assert headers["X-Akosha-Model"] == "mini"
    answer = json.loads(body)
    assert answer["model"] == "mini"
    for item, text in zip(answer["data"], inputs):
        close(item["embedding"], expected(ref, text))
    assert answer["usage"]["prompt_tokens"] > len(inputs)  # tokens, [CLS] and [SEP] included
    # base64, as OpenAI's SDKs ask by default
    status, _, body = a.post_json("/v1/embeddings", {"model": "mini", "input": inputs[0],
                                                     "encoding_format": "base64"})
    raw = base64.b64decode(json.loads(body)["data"][0]["embedding"])
    close(list(struct.unpack("<%df" % (len(raw) // 4), raw)), expected(ref, inputs[0]))
    # TEI (default_model names the model) and Ollama
    b = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\ndefault_model = mini\n"
                     "[model mini]\nlocal = %s\n" % path)
    status, headers, body = b.post_json("/embed", {"inputs": inputs[:2]})
    assert status == 200 and headers["X-Akosha-Mode"] == "local"
    for vec, text in zip(json.loads(body), inputs[:2]):
        close(vec, expected(ref, text))
    status, headers, body = a.post_json("/api/embed", {"model": "mini", "input": inputs[1]})
    assert status == 200 and headers["X-Akosha-Mode"] == "local"
    close(json.loads(body)["embeddings"][0], expected(ref, inputs[1]))
    status, _, body = a.post_json("/api/embeddings", {"model": "mini", "prompt": inputs[2]})
    close(json.loads(body)["embedding"], expected(ref, inputs[2]))


def test_two_workers_split_one_request_or_run_two_and_answer_the_same(model, start_akosha):
    """An idle second worker takes half of each dense layer; busy, each runs its own request."""
    path, ref = model
    a = start_akosha("[fallback]\nworkers = 2\n[model mini]\nlocal = %s\n" % path)
    inputs = texts(ref)
    for text in inputs:  # one at a time: the other worker is idle and helps
        status, _, body = a.post_json("/v1/embeddings", {"model": "mini", "input": text})
        assert status == 200, body
        close(json.loads(body)["data"][0]["embedding"], expected(ref, text))

    def one(text):
        status, _, body = a.post_json("/v1/embeddings", {"model": "mini", "input": [text] * 3})
        assert status == 200, body
        return text, json.loads(body)["data"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for text, data in pool.map(one, inputs * 4):
            for item in data:
                close(item["embedding"], expected(ref, text))


def test_other_models_keep_the_hash_fallback(model, start_akosha):
    path, _ = model
    a = start_akosha("[model mini]\nlocal = %s\n" % path)
    status, headers, _ = a.post_json("/v1/embeddings", {"model": "other", "input": "x"})
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    # Token ids are the upstream's tokenizer's: the hash reads them.
    status, headers, _ = a.post_json("/v1/embeddings", {"model": "mini", "input": [[1, 2, 3]]})
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"


def test_dimensions_truncate_and_renormalise_or_are_refused(model, start_akosha):
    path, ref = model
    a = start_akosha("[model mini]\nlocal = %s\n" % path)
    text = texts(ref)[0]
    status, _, body = a.post_json("/v1/embeddings", {"model": "mini", "input": text,
                                                     "dimensions": 8})
    assert status == 200
    vec = json.loads(body)["data"][0]["embedding"]
    want = expected(ref, text)[:8]
    norm = math.sqrt(sum(x * x for x in want))
    close(vec, [x / norm for x in want])
    status, _, body = a.post_json("/v1/embeddings", {"model": "mini", "input": text,
                                                     "dimensions": 64})
    assert status == 400 and b"dimensions" in body


def test_when_the_upstream_goes_down_its_model_answers_locally(model, backend, start_akosha):
    path, ref = model
    backend.default = {"status": 200, "body": embedding_body(dim=32, model="mini")}
    a = start_akosha("[upstream gpu]\nurl = http://127.0.0.1:%d\nretries = 0\nmodels = mini\n"
                     "[model mini]\nlocal = %s\n" % (backend.port, path))
    text = texts(ref)[0]
    status, headers, _ = a.post_json("/v1/embeddings", {"model": "mini", "input": text})
    assert status == 200 and headers["X-Akosha-Mode"] == "real"
    backend.default = {"status": 503}
    status, headers, body = a.post_json("/v1/embeddings", {"model": "mini", "input": text})
    assert status == 200 and headers["X-Akosha-Mode"] == "local"
    close(json.loads(body)["data"][0]["embedding"], expected(ref, text))
    stats = {m["name"]: m for m in a.stats()["models"]}["mini"]
    assert (stats["real"], stats["local"], stats["fallback"]) == (1, 1, 0)
    assert stats["local_model"] is True
    text_metrics = a.admin("GET", "/metrics")[2].decode()
    assert 'embedding_generated_total{mode="local"} 1' in text_metrics


def test_a_reload_to_a_broken_model_keeps_the_old_one(model, start_akosha, tmp_path):
    path, ref = model
    a = start_akosha("[model mini]\nlocal = %s\n" % path)
    broken = tmp_path / "broken"
    shutil.copytree(path, str(broken))
    with open(str(broken / "model.safetensors"), "r+b") as f:
        f.truncate(100)
    a.write_config("[model mini]\nlocal = %s\n" % broken)
    a.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reload failed" not in a.logs() and time.time() < deadline:
        time.sleep(0.05)
    assert "reload failed" in a.logs() and "[model mini] local:" in a.logs()
    text = texts(ref)[0]
    status, headers, body = a.post_json("/v1/embeddings", {"model": "mini", "input": text})
    assert status == 200 and headers["X-Akosha-Mode"] == "local"
    close(json.loads(body)["data"][0]["embedding"], expected(ref, text))


def test_check_names_what_is_unsupported(tmp_path):
    make_model(tmp_path / "roberta", "--set", 'model_type="roberta"', "--no-reference")
    make_model(tmp_path / "bpe", "--no-reference")
    tok = json.load(open(str(tmp_path / "bpe" / "tokenizer.json")))
    tok["model"]["type"] = "BPE"
    json.dump(tok, open(str(tmp_path / "bpe" / "tokenizer.json"), "w"))
    for name, want in (("roberta", "roberta"), ("bpe", "BPE")):
        conf = tmp_path / (name + ".conf")
        conf.write_text("[model m]\nlocal = %s\n" % (tmp_path / name))
        r = subprocess.run([AKOSHA_BIN, "-t", "-c", str(conf)], capture_output=True, text=True)
        assert r.returncode == 1
        assert "[model m] local:" in r.stderr and want in r.stderr, r.stderr
