"""Issue 16: the shared Redis tier: sidecars share entries, and a dead or stopped Redis
costs at most redis_timeout and never fails a request."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from test_cache import answer, vec, vectors


class Redis:
    def __init__(self):
        exe = shutil.which("redis-server")
        assert exe, "redis-server is missing: apt-get install redis-server"
        self.dir = tempfile.mkdtemp(prefix="akosha-redis-")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.exe = exe
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.exe, "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if os.path.exists(self.sock):
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        if os.path.exists(self.sock):
            os.unlink(self.sock)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.stop()


def config(backend, redis, memory="memory = 16M\n"):
    return ("[cache]\n%sredis = unix:%s\nredis_timeout = 50ms\n"
            "[upstream u]\nurl = http://127.0.0.1:%d\nretries = 0\n"
            % (memory, redis.sock, backend.port))


def wait_connected(a):
    for _ in range(100):
        if a.stats()["cache"]["redis"]["state"] == "connected":
            return
        time.sleep(0.05)
    raise AssertionError("never connected to Redis")


def test_two_sidecars_share_entries(backend, redis, start_akosha):
    backend.default = {"fn": answer}
    one = start_akosha(config(backend, redis))
    two = start_akosha(config(backend, redis))
    wait_connected(one)
    wait_connected(two)
    _, h, _ = one.post_json("/v1/embeddings", {"model": "m", "input": ["s1", "s2"]})
    assert h["X-Akosha-Cache"] == "miss"
    for _ in range(50):  # stores are written after the caller has its answer
        if two.post_json("/v1/embeddings", {"model": "m", "input": ["s1", "s2"]})[1][
                "X-Akosha-Cache"] == "hit":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the second sidecar never found the first's entries")
    assert backend.count() < 50
    n = backend.count()
    _, h, body = two.post_json("/v1/embeddings", {"model": "m", "input": ["s2", "s1"]})
    assert h["X-Akosha-Cache"] == "hit" and vectors(body) == [vec("s2"), vec("s1")]
    assert backend.count() == n
    assert two.stats()["cache"]["redis"]["hits"] >= 2


def test_redis_alone_without_memory(backend, redis, start_akosha):
    backend.default = {"fn": answer}
    a = start_akosha(config(backend, redis, memory=""))
    wait_connected(a)
    a.post_json("/v1/embeddings", {"model": "m", "input": "r"})
    for _ in range(50):
        _, h, _ = a.post_json("/v1/embeddings", {"model": "m", "input": "r"})
        if h["X-Akosha-Cache"] == "hit":
            break
        time.sleep(0.05)
    assert h["X-Akosha-Cache"] == "hit"


def timed(a, req):
    t = time.monotonic()
    status, h, body = a.post_json("/v1/embeddings", req)
    return status, h, time.monotonic() - t


@pytest.mark.parametrize("how", ["sigstop", "kill"])
def test_a_stopped_or_dead_redis_costs_at_most_its_timeout(backend, redis, start_akosha, how):
    backend.default = {"fn": answer}
    a = start_akosha(config(backend, redis, memory=""))
    wait_connected(a)
    base = min(timed(a, {"model": "m", "input": "warm %d" % i})[2] for i in range(5))
    if how == "sigstop":
        os.kill(redis.proc.pid, signal.SIGSTOP)
    else:
        redis.kill()
    worst = 0.0
    for i in range(12):
        status, h, took = timed(a, {"model": "m", "input": "during %d" % i})
        assert status == 200 and h["X-Akosha-Mode"] == "real", "Redis never fails a request"
        worst = max(worst, took)
    # redis_timeout is 50 ms; the margin covers a loaded test machine.
    assert worst < base + 0.05 + 0.25, (base, worst)
    stats = a.stats()["cache"]["redis"]
    assert stats["circuit_state"] == "open", stats
    breakers = {b["service_name"]: b for b in a.stats()["breakers"]}
    assert breakers["cache-redis"]["state"] == "open"
    if how == "sigstop":
        os.kill(redis.proc.pid, signal.SIGCONT)
    else:
        redis.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        a.post_json("/v1/embeddings", {"model": "m", "input": "after %f" % time.monotonic()})
        if a.stats()["cache"]["redis"]["circuit_state"] == "closed":
            break
        time.sleep(0.2)
    assert a.stats()["cache"]["redis"]["circuit_state"] == "closed", "the breaker closes again"
    metrics = a.admin("GET", "/metrics")[2].decode()
    assert 'circuit_state{service_name="cache-redis"} 1' in metrics, "closed again"
    assert "akosha_cache_redis_lookups_total{result=\"timeout\"}" in metrics
