"""Issue 14: the caller's deadline is the budget; what a request holds survives a reload.

Timeouts are scaled down (request_timeout of one or two seconds) so that each
test proves the bound in seconds, not minutes.
"""
import json
import re
import signal
import threading
import time

from conftest import embedding_body

EMBED = {"input": "hello", "model": "m"}


def up(name, backend, extra=""):
    return "[upstream %s]\nurl = http://127.0.0.1:%d\n%s" % (name, backend.port, extra)


def metric(a, name, labels=""):
    """The value of one series in /metrics (0 when absent)."""
    text = a.admin("GET", "/metrics")[2].decode()
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else 0.0


def timed(fn, *args, **kw):
    t0 = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t0


# ---- a hung backend -------------------------------------------------------

def test_hung_backend_is_answered_by_fallback_inside_request_timeout(backend, start_akosha):
    backend.default = {"action": "hang"}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = 2s\n" +
                     up("b", backend))  # call_timeout stays at its 30 s default
    (status, headers, body), took = timed(a.post_json, "/v1/embeddings", EMBED)
    assert status == 200, body
    assert headers["X-Akosha-Mode"] == "fallback"
    assert headers["X-Akosha-Upstream"] == "local"
    assert len(json.loads(body)["data"]) == 1
    assert took < 2.0, "the fallback answer must leave before request_timeout (%.3f s)" % took
    # The reserve is 100 ms here: the upstream had the rest of the two seconds.
    assert took >= 1.8, took
    assert backend.count() == 1
    assert metric(a, "akosha_fallback_total", '{reason="deadline",model="other"}') == 1


def test_hung_backend_with_deny_gets_504_at_the_deadline(backend, start_akosha):
    backend.default = {"action": "hang"}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = 2s\n" +
                     up("b", backend))
    (status, headers, body), took = timed(a.post_json, "/v1/embeddings", EMBED,
                                          headers={"X-Akosha-Fallback": "deny"})
    assert status == 504, body
    assert "X-Akosha-Mode" not in headers
    assert 1.9 <= took < 2.6, took


def test_attempt_timeout_is_cut_to_the_time_left(backend, start_akosha):
    """call_timeout 30 s, request_timeout 2 s, retries: the first attempt ends at the deadline."""
    backend.default = {"action": "hang"}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = 2s\n" +
                     up("b", backend, "retries = 3\nbackoff_base = 10ms\n"))
    (status, _, _), took = timed(a.post_json, "/v1/embeddings", EMBED)
    assert status == 200 and took < 2.0
    assert backend.count() == 1, "no retry can fit after an attempt that used the time left"
    assert "no answer before the request's deadline" in a.logs()


def test_backoff_never_sleeps_past_the_deadline(backend, start_akosha):
    backend.default = {"status": 500, "body": b"boom"}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = 2s\n" +
                     up("b", backend, "retries = 5\nbackoff_base = 5s\nbackoff_max = 5s\n"))
    # Full jitter: each backoff is drawn from [0, 5 s]; one that would pass the
    # deadline (less the reserve) is not slept, shorter ones are.
    for _ in range(3):
        (status, headers, _), took = timed(a.post_json, "/v1/embeddings", EMBED)
        assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
        assert took < 2.0, "slept past request_timeout: %.3f s" % took


# ---- Retry-After that will not be waited out --------------------------------

def test_retry_after_3600_is_answered_at_once_and_the_upstream_skipped(backend, start_akosha):
    backend.default = {"status": 503, "headers": {"Retry-After": "3600"}}
    a = start_akosha(up("b", backend, "retries = 2\n"))  # max_retry_after 30 s by default
    (status, headers, _), took = timed(a.post_json, "/v1/embeddings", EMBED)
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    assert took < 1.0, "Retry-After: 3600 made the caller wait %.3f s" % took
    assert backend.count() == 1
    # The upstream asked for an hour: later requests do not reach it.
    for _ in range(3):
        (status, headers, _), took = timed(a.post_json, "/v1/embeddings", EMBED)
        assert status == 200 and headers["X-Akosha-Mode"] == "fallback" and took < 1.0
    assert backend.count() == 1
    assert "skipped for that long" in a.logs()


def test_retry_after_longer_than_max_moves_to_the_next_upstream(backend, backend2,
                                                                  start_akosha):
    backend.default = {"status": 429, "headers": {"Retry-After": "3600"}}
    backend2.default = {"status": 200, "body": embedding_body()}
    a = start_akosha(up("first", backend, "priority = 0\nmax_retry_after = 1s\n") +
                     up("second", backend2, "priority = 1\n"))
    (status, headers, _), took = timed(a.post_json, "/v1/embeddings", EMBED)
    assert status == 200 and headers["X-Akosha-Upstream"] == "second"
    assert headers["X-Akosha-Mode"] == "real"
    assert took < 1.0, took
    a.post_json("/v1/embeddings", EMBED)
    assert backend.count() == 1 and backend2.count() == 2


def test_retry_after_within_limits_is_still_honoured(backend, start_akosha):
    backend.script({"status": 503, "headers": {"Retry-After": "1"}})
    backend.default = {"status": 200, "body": embedding_body()}
    a = start_akosha(up("b", backend, "retries = 1\n"))
    (status, headers, _), took = timed(a.post_json, "/v1/embeddings", EMBED)
    assert status == 200 and headers["X-Akosha-Mode"] == "real"
    assert 0.9 <= took < 2.0, took
    assert backend.count() == 2


# ---- deny and mode = off: 503 whatever the last attempt returned ------------

def assert_503(status, headers, body):
    assert status == 503, (status, body)
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["error"]["type"] == "service_unavailable"


def test_deny_after_upstream_failures_gives_503(backend, start_akosha):
    a = start_akosha(up("b", backend, "retries = 0\nfailure_threshold = 100\n"))
    for answer in ({"status": 500, "body": b"boom"}, {"status": 502}, {"status": 504},
                   {"action": "reset"}, {"action": "garbage"}):
        backend.script(answer)
        assert_503(*a.post_json("/v1/embeddings", EMBED, headers={"X-Akosha-Fallback": "deny"}))
    assert backend.count() == 5


def test_mode_off_after_upstream_failures_gives_503(backend, start_akosha):
    a = start_akosha("[fallback]\nmode = off\n" +
                     up("b", backend, "retries = 0\nfailure_threshold = 100\n"))
    for answer in ({"status": 500, "body": b"boom"}, {"status": 504}, {"action": "reset"}):
        backend.script(answer)
        status, headers, body = a.post_json("/v1/embeddings", EMBED)
        assert_503(status, headers, body)
        assert b"boom" not in body
    # A route the fallback never serves still relays the upstream's own answer.
    backend.script({"status": 500, "body": b"boom"})
    status, _, body = a.request("GET", "/other")
    assert status == 500 and body == b"boom"


# ---- the retry budget -------------------------------------------------------

def test_a_retry_refused_by_the_budget_is_counted_once(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nretry_budget = 0%\n"
                     "retry_budget_min = 0\n" + up("b", backend, "retries = 2\n"))
    status, headers, _ = a.post_json("/v1/embeddings", EMBED)
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    assert backend.count() == 1
    assert metric(a, "akosha_retry_budget_exhausted_total") == 1
    assert a.logs().count("retry budget exhausted") == 1


# ---- a burst against a healthy upstream -------------------------------------

def test_burst_waiting_for_pooled_connections_is_not_an_upstream_failure(backend, start_akosha):
    backend.default = {"status": 200, "body": embedding_body(), "delay": 0.3}
    a = start_akosha(up("b", backend, "max_connections = 2\ncall_timeout = 1s\n"))
    results = []
    lock = threading.Lock()

    def one():
        status, headers, _ = a.post_json("/v1/embeddings", EMBED, timeout=30)
        with lock:
            results.append((status, headers.get("X-Akosha-Mode")))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [(200, "real")] * 20, results
    br = a.breaker("b")
    assert br["state"] == "closed" and br["failed_calls"] == 0
    waits = metric(a, "akosha_upstream_pool_waits_total", '{upstream="b"}')
    assert waits >= 10, waits
    assert a.stats()["upstreams"][0]["pool_waits"] == waits


def test_a_queued_attempt_gets_its_whole_call_once_a_slot_frees(backend, start_akosha):
    """The wait for a slot does not eat into call_timeout, nor count against the breaker."""
    backend.script({"status": 200, "body": embedding_body(), "delay": 1.5})
    backend.default = {"status": 200, "body": embedding_body(), "delay": 0.3}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = 2s\n" +
                     up("b", backend, "max_connections = 1\ncall_timeout = 600ms\n"))
    out = []
    t = threading.Thread(target=lambda: out.append(a.post_json("/v1/embeddings", EMBED)))
    t.start()
    time.sleep(0.2)
    # Queued behind the first call for 0.4 s, then 0.3 s of its own: more than
    # call_timeout in all, well inside it once the connection is ours.
    status, headers, _ = a.post_json("/v1/embeddings", EMBED)
    t.join(10)
    assert status == 200 and headers["X-Akosha-Mode"] == "real"
    assert out[0][0] == 200  # its first call timed out; a retry answered it
    br = a.breaker("b")
    assert br["failed_calls"] == 1, br  # the first call's timeout, nothing else
    assert metric(a, "akosha_upstream_pool_waits_total", '{upstream="b"}') >= 1


# ---- reloads never change what a request in flight uses ---------------------

def test_reload_removing_the_upstream_in_use_answers_the_request(backend, backend2,
                                                                 start_akosha):
    backend.default = {"status": 200, "body": embedding_body(), "delay": 1.0}
    backend2.default = {"status": 200, "body": embedding_body()}
    a = start_akosha(up("old", backend))
    out = []
    t = threading.Thread(target=lambda: out.append(a.post_json("/v1/embeddings", EMBED)))
    t.start()
    time.sleep(0.3)
    a.write_config(up("new", backend2))
    a.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "applied" not in a.logs() and time.time() < deadline:
        time.sleep(0.05)
    assert "applied" in a.logs()
    t.join(10)
    status, headers, _ = out[0]
    assert status == 200 and headers["X-Akosha-Upstream"] == "old"
    status, headers, _ = a.post_json("/v1/embeddings", EMBED)
    assert status == 200 and headers["X-Akosha-Upstream"] == "new"
    assert a.proc.poll() is None


def test_a_retry_after_a_reload_uses_the_upstreams_the_request_started_with(
        backend, backend2, start_akosha):
    backend.script({"status": 500, "delay": 1.0})
    backend.default = {"status": 200, "body": embedding_body()}
    backend2.default = {"status": 200, "body": embedding_body()}
    a = start_akosha(up("old", backend, "retries = 1\nbackoff_base = 10ms\n"))
    out = []
    t = threading.Thread(target=lambda: out.append(a.post_json("/v1/embeddings", EMBED)))
    t.start()
    time.sleep(0.3)
    a.write_config(up("new", backend2))
    a.signal(signal.SIGHUP)
    t.join(10)
    status, headers, _ = out[0]
    assert status == 200 and headers["X-Akosha-Upstream"] == "old"
    assert backend.count() == 2 and backend2.count() == 0
