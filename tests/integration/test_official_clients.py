"""Issue 15: the official clients' list and embedding calls work through akosha.

The official JavaScript clients from npm, `openai` and `ollama`, at the exact
versions tests/integration/clients/package-lock.json pins, run against the real
akosha on loopback. tests/integration/clients/clients.mjs makes the calls and
prints what each returned; the asserts are here.

`npm ci` installs the clients once per session into a temporary directory
(node_modules is never committed). Without node, npm or the npm registry the
tests fail, naming what is missing: they never skip.
"""
import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time

import pytest

CLIENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clients")
FILES = ("package.json", "package-lock.json", "clients.mjs")
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 60


def tool(name, package):
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s not found on PATH: the official JavaScript clients need Node.js 18 or "
                    "later and npm (Debian package %s, which tools/dev test installs when no %s "
                    "is found)" % (name, package, name), pytrace=False)
    return path


@pytest.fixture(scope="session")
def clients():
    """A directory with clients.mjs and its node_modules, installed by `npm ci`."""
    node = tool("node", "nodejs")
    npm = tool("npm", "npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0] or 0)
    if major < 18:
        pytest.fail("%s is Node.js %s: the pinned openai and ollama clients need 18 or later"
                    % (node, version), pytrace=False)
    with tempfile.TemporaryDirectory(prefix="akosha-clients-") as d:
        for f in FILES:
            shutil.copy(os.path.join(CLIENTS, f), d)
        env = dict(os.environ, npm_config_update_notifier="false")
        started = time.monotonic()
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                                "--prefer-offline"], cwd=d, env=env, capture_output=True,
                               text=True, timeout=INSTALL_TIMEOUT)
            failed = r.returncode != 0
            said = (r.stdout + r.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            failed = True
            said = "no answer in %d s\n%s" % (INSTALL_TIMEOUT, e.stderr or "")
        if failed:
            registry = subprocess.run([npm, "config", "get", "registry"], capture_output=True,
                                      text=True, env=env).stdout.strip()
            pytest.fail("npm ci could not install the official clients (openai and ollama, "
                        "tests/integration/clients/package-lock.json) from the npm registry "
                        "%s: is it reachable from this machine?\nnpm said:\n%s"
                        % (registry or "https://registry.npmjs.org/", said), pytrace=False)
        print("node %s, npm ci: %.1f s" % (version, time.monotonic() - started))
        yield {"node": node, "dir": d}


def run_clients(clients, akosha, model, inputs, only=None):
    """clients.mjs against akosha: {"node": ..., "openai": {...}, "ollama": {...}}."""
    cmd = [clients["node"], os.path.join(clients["dir"], "clients.mjs"), str(akosha.port),
           model] + list(inputs)
    if only:
        cmd += ["--only", only]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, "clients.mjs failed:\n%s%s\nakosha:\n%s" % (
        r.stdout, r.stderr, akosha.logs())
    out = json.loads(r.stdout)
    with open(os.path.join(CLIENTS, "package.json")) as f:
        pinned = json.load(f)["dependencies"]
    for name in ("openai", "ollama"):
        if name in out:
            assert out[name]["version"] == pinned[name], "npm ci installed another version"
    return out


def value(result, what):
    """A client call's result; a call that threw fails with the client's own words."""
    assert result["ok"], "%s threw: %s (HTTP status %s)" % (what, result["error"],
                                                            result.get("status"))
    return result["value"]


def floats(akosha, model, inputs):
    """akosha's own answer for these inputs, as floats: what the clients must decode to."""
    status, _, body = akosha.post_json("/v1/embeddings", {"model": model, "input": inputs,
                                                          "encoding_format": "float"})
    assert status == 200, body
    return [d["embedding"] for d in json.loads(body)["data"]]


def assert_vectors(got, want, what):
    assert [len(v["values"]) for v in got] == [len(w) for w in want], what
    for v, w in zip(got, want):
        assert v["type"] == "array", "%s: an embedding is a %s, not an array" % (what, v["type"])
        assert v["values"] == pytest.approx(w, rel=1e-6, abs=1e-7), what


FALLBACK_CONFIG = """[fallback]
mode = always
[model bge-small]
dimensions = 16
aliases = bge, BAAI/bge-small-en-v1.5
[model te3]
dimensions = 8
"""


def test_openai_and_ollama_clients_list_models_and_embed(clients, start_akosha):
    a = start_akosha(FALLBACK_CONFIG)
    inputs = ["hello world", "a second text"]
    out = run_clients(clients, a, "bge", inputs)
    names = ["bge-small", "bge", "BAAI/bge-small-en-v1.5", "te3"]
    want = floats(a, "bge", inputs)
    assert [len(v) for v in want] == [16, 16]

    openai = out["openai"]
    assert value(openai["models"], "openai models.list()") == names
    emb = value(openai["embeddings"], "openai embeddings.create()")
    assert emb["index"] == [0, 1]
    # The SDK asked for base64 (its default) and decoded it: 16 floats each, akosha's values.
    assert_vectors(emb["vectors"], want, "openai embeddings.create()")

    ollama = out["ollama"]
    assert value(ollama["models"], "ollama list()") == names
    assert_vectors(value(ollama["embed"], "ollama embed()")["vectors"], want, "ollama embed()")

    # Another model, another size, through both clients.
    out = run_clients(clients, a, "te3", ["x"])
    assert len(value(out["openai"]["embeddings"], "openai")["vectors"][0]["values"]) == 8
    assert len(value(out["ollama"]["embed"], "ollama")["vectors"][0]["values"]) == 8


def test_openai_and_ollama_clients_through_to_a_backend(clients, backend, start_akosha):
    a = start_akosha("[upstream tei]\nurl = http://127.0.0.1:%d\nretries = 1\n"
                     "models = bge-small=BAAI/bge-small-en-v1.5, e5\n"
                     "[model bge-small]\naliases = bge\n" % backend.port)
    names = ["bge-small", "bge", "e5"]
    vector = [i / 16.0 for i in range(16)]  # exact in float32

    # OpenAI: the SDK asks for base64; the backend answers in kind.
    b64 = base64.b64encode(struct.pack("<16f", *vector)).decode()
    backend.default = {"status": 200, "body": json.dumps({
        "object": "list", "model": "BAAI/bge-small-en-v1.5",
        "data": [{"object": "embedding", "index": 0, "embedding": b64}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1}})}
    out = run_clients(clients, a, "bge", ["hello"], only="openai")
    assert value(out["openai"]["models"], "openai models.list()") == names
    emb = value(out["openai"]["embeddings"], "openai embeddings.create()")
    assert emb["model"] == "BAAI/bge-small-en-v1.5"
    assert emb["vectors"] == [{"type": "array", "values": vector}]
    method, path, _, body, _ = backend.requests[-1]
    assert (method, path) == ("POST", "/v1/embeddings")
    sent = json.loads(body)
    assert sent["model"] == "BAAI/bge-small-en-v1.5" and sent["input"] == ["hello"]
    assert sent["encoding_format"] == "base64"

    # Ollama.
    backend.default = {"status": 200, "body": json.dumps({
        "model": "BAAI/bge-small-en-v1.5", "embeddings": [vector]})}
    out = run_clients(clients, a, "bge", ["hello"], only="ollama")
    assert value(out["ollama"]["models"], "ollama list()") == names
    emb = value(out["ollama"]["embed"], "ollama embed()")
    assert emb["vectors"] == [{"type": "array", "values": vector}]
    method, path, _, body, _ = backend.requests[-1]
    assert (method, path) == ("POST", "/api/embed")
    sent = json.loads(body)
    assert sent["model"] == "BAAI/bge-small-en-v1.5" and sent["input"] == ["hello"]
    # The lists came from akosha's config: only the two embedding calls reached the backend.
    assert backend.count() == 2
