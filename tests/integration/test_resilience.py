"""Issue 3: circuit breakers, retries with backoff, failover, retry budget, admin control."""
import json
import threading
import time

from conftest import embedding_body, free_port


def up(name, backend, extra=""):
    return "[upstream %s]\nurl = http://127.0.0.1:%d\n%s" % (name, backend.port, extra)


def no_fallback():
    return "[fallback]\nmode = off\n"


FAST = "retries = 0\nfailure_threshold = 5\nopen_timeout = 1s\n"


def test_five_500s_open_the_breaker_and_stop_traffic(backend, start_akosha):
    backend.default = {"status": 500, "body": b"boom"}
    a = start_akosha(no_fallback() + up("b", backend, "retries = 0\nopen_timeout = 60s\n"))
    for _ in range(5):
        status, _, data = a.request("GET", "/x")
        assert status == 500  # the final attempt's own answer is relayed
    assert backend.count() == 5
    br = a.breaker("b")
    assert br["state"] == "open"
    assert br["failed_calls"] == 5 and br["consecutive_failures"] == 5
    assert br["last_failure_time"] is not None and br["last_state_change"] is not None
    for _ in range(3):
        status, headers, data = a.request("GET", "/x")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert json.loads(data)["error"]["type"] == "service_unavailable"
    assert backend.count() == 5, "an open breaker must not reach the upstream"
    assert a.breaker("b")["rejected_calls"] == 3
    assert "circuit closed -> open" in a.logs()


def test_after_open_timeout_trials_close_the_breaker(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha(no_fallback() + up("b", backend, FAST + "success_threshold = 2\n"))
    for _ in range(5):
        a.request("GET", "/x")
    assert a.breaker("b")["state"] == "open"
    backend.default = {"status": 200, "body": b"ok"}
    time.sleep(1.1)
    assert a.request("GET", "/x")[0] == 200
    assert a.breaker("b")["state"] == "half_open"
    assert a.request("GET", "/x")[0] == 200
    br = a.breaker("b")
    assert br["state"] == "closed"
    logs = a.logs()
    assert "open -> half_open" in logs and "half_open -> closed" in logs


def test_failed_trial_reopens(backend, start_akosha):
    backend.default = {"status": 503}
    a = start_akosha(no_fallback() + up("b", backend, FAST))
    for _ in range(5):
        a.request("GET", "/x")
    time.sleep(1.1)
    assert a.request("GET", "/x")[0] == 503  # the trial fails
    assert a.breaker("b")["state"] == "open"
    n = backend.count()
    assert a.request("GET", "/x")[0] == 503
    assert backend.count() == n


def test_half_open_admits_at_most_max_calls_in_flight(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha(no_fallback() + up("b", backend, FAST + "half_open_max_calls = 2\n"))
    for _ in range(5):
        a.request("GET", "/x")
    time.sleep(1.1)
    backend.default = {"status": 200, "body": b"slow", "delay": 1.0}
    before = backend.count()
    results = []

    def call():
        results.append(a.request("GET", "/x")[0])

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    assert backend.count() - before == 2
    assert sorted(results) == [200, 200, 503, 503, 503]


def test_reset_hang_and_429_count_as_failures(backend, start_akosha):
    a = start_akosha(no_fallback() + up("b", backend, "retries = 0\ncall_timeout = 300ms\n"))
    backend.script({"action": "reset"}, {"action": "hang"}, {"status": 429},
                   {"action": "garbage"})
    assert a.request("GET", "/x")[0] == 502
    assert a.request("GET", "/x")[0] == 504
    assert a.request("GET", "/x")[0] == 429
    assert a.request("GET", "/x")[0] == 502
    br = a.breaker("b")
    assert br["failed_calls"] == 4
    assert br["consecutive_failures"] == 4


def test_4xx_passes_through_and_does_not_count(backend, start_akosha):
    backend.default = {"status": 400, "body": b'{"error":"bad"}'}
    a = start_akosha(no_fallback() + up("b", backend, "retries = 2\n"))
    for _ in range(7):
        status, _, data = a.request("POST", "/v1/embeddings", b'{"input":"x"}')
        assert status == 400 and data == b'{"error":"bad"}'
    assert backend.count() == 7, "a 4xx must not be retried"
    br = a.breaker("b")
    assert br["state"] == "closed"
    assert br["failed_calls"] == 0 and br["successful_calls"] == 0


def test_failover_sends_the_retry_to_the_second_upstream(backend, backend2, start_akosha):
    backend.default = {"status": 500}
    backend2.default = {"status": 200, "body": b"from-two"}
    a = start_akosha(no_fallback() + up("one", backend, "priority = 1\nretries = 1\n"
                                        "backoff_base = 10ms\n") +
                     up("two", backend2, "priority = 2\n"))
    status, headers, data = a.request("POST", "/v1/embeddings", b'{"input":"replay me"}')
    assert status == 200 and data == b"from-two"
    assert headers["X-Akosha-Upstream"] == "two"
    assert backend.requests[0][3] == backend2.requests[0][3] == b'{"input":"replay me"}'


def test_priority_order_and_weighted_round_robin(backend, backend2, start_akosha):
    b3 = type(backend)()
    try:
        a = start_akosha(up("w1", backend, "priority = 1\nweight = 3\n") +
                         up("w2", backend2, "priority = 1\nweight = 1\n") +
                         up("low", b3, "priority = 5\n"))
        for _ in range(8):
            assert a.request("GET", "/")[0] == 200
        assert backend.count() == 6 and backend2.count() == 2 and b3.count() == 0
    finally:
        b3.stop()


def test_retry_after_delays_the_retry(backend, start_akosha):
    backend.script({"status": 503, "headers": {"Retry-After": "1"}},
                   {"status": 200, "body": b"ok"})
    a = start_akosha(no_fallback() + up("b", backend, "retries = 1\n"))
    t0 = time.time()
    status, _, data = a.request("GET", "/x")
    elapsed = time.time() - t0
    assert status == 200 and data == b"ok"
    assert 0.9 <= elapsed < 2.0, elapsed


def test_retry_after_past_the_deadline_answers_at_once(backend, start_akosha):
    backend.script({"status": 503, "headers": {"Retry-After": "10"}})
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = 2s\n" +
                     no_fallback() + up("b", backend, "retries = 3\n"))
    t0 = time.time()
    status, _, _ = a.request("GET", "/x")
    assert status == 503
    assert time.time() - t0 < 1.0
    assert backend.count() == 1


def test_retries_zero_makes_exactly_one_attempt(backend, start_akosha):
    backend.default = {"status": 502}
    a = start_akosha(no_fallback() + up("b", backend, "retries = 0\n"))
    assert a.request("GET", "/x")[0] == 502
    assert backend.count() == 1


def test_retries_make_one_plus_retries_attempts_with_one_answer(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha(no_fallback() + up("b", backend, "retries = 2\nbackoff_base = 10ms\n"
                                        "backoff_max = 50ms\n"))
    status, _, _ = a.request("POST", "/v1/x", b"body")
    assert status == 500
    assert backend.count() == 3
    assert all(r[3] == b"body" for r in backend.requests)


def test_retry_budget_limits_retries(backend, start_akosha):
    backend.default = {"status": 500}
    a = start_akosha("[proxy]\nlisten = 127.0.0.1:{port}\nretry_budget = 0%\n"
                     "retry_budget_min = 0.1\n" + no_fallback() +
                     up("b", backend, "retries = 5\nbackoff_base = 1ms\nbackoff_max = 1ms\n"
                        "failure_threshold = 1000\n"))
    for _ in range(5):
        a.request("GET", "/x")
    # 0.1/s over a 10 s window allows one retry in all; every other failure is answered at once
    assert backend.count() == 6
    _, _, metrics = a.admin("GET", "/metrics")
    assert b"akosha_retry_budget_exhausted_total 5" in metrics


def test_admin_force_open_close_reset(backend, start_akosha):
    a = start_akosha(no_fallback() + up("b", backend))
    status, _, data = a.admin("POST", "/upstreams/b/open")
    assert status == 200 and json.loads(data)["state"] == "open"
    assert a.request("GET", "/x")[0] == 503
    assert backend.count() == 0
    status, _, data = a.admin("POST", "/upstreams/b/close")
    assert json.loads(data)["state"] == "closed"
    assert a.request("GET", "/x")[0] == 200
    status, _, data = a.admin("POST", "/upstreams/b/reset")
    assert json.loads(data)["total_calls"] == 0
    assert a.admin("POST", "/upstreams/nope/open")[0] == 404
    assert a.admin("GET", "/upstreams/b/open")[0] == 405
    assert "breaker open by admin request" in a.logs()


def test_reload_keeps_breaker_state_of_unchanged_upstreams(backend, start_akosha):
    import signal
    backend.default = {"status": 500}
    conf = no_fallback() + up("b", backend, "retries = 0\nopen_timeout = 60s\n")
    a = start_akosha(conf)
    for _ in range(5):
        a.request("GET", "/x")
    assert a.breaker("b")["state"] == "open"
    a.write_config(conf + "\n# touched\n")
    a.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and a.stats()["config_reloads"]["success"] == 0:
        time.sleep(0.05)
    br = a.breaker("b")
    assert br["state"] == "open" and br["failed_calls"] == 5


def test_stats_breaker_keys(backend, start_akosha):
    a = start_akosha(up("b", backend))
    a.request("GET", "/")
    br = a.breaker("b")
    for key in ("service_name", "state", "total_calls", "successful_calls", "failed_calls",
                "rejected_calls", "consecutive_failures", "consecutive_successes",
                "success_rate", "last_failure_time", "last_state_change"):
        assert key in br
    assert br["success_rate"] == 1.0 and br["successful_calls"] == 1
