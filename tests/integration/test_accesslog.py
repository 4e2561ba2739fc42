"""Issue 18: the access log - one line per request, for every kind of answer."""
import json
import os
import signal
import socket
import threading
import time

from conftest import free_port


def alog_config(path, extra_proxy="", rest="", fmt="json"):
    return ("[proxy]\nlisten = 127.0.0.1:{port}\naccess_log = %s\naccess_log_format = %s\n%s\n%s"
            % (path, fmt, extra_proxy, rest))


def upstream(port, extra=""):
    return "[upstream primary]\nurl = http://127.0.0.1:%d\n%s\n" % (port, extra)


def read_lines(path, want=None, timeout=5):
    """The file's lines once it holds want of them (or whatever it has after timeout)."""
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path, "rb") as f:
                lines = f.read().splitlines()
            if want is None or len(lines) >= want:
                if want is None:
                    time.sleep(0.2)  # a line still on its way would show up
                    with open(path, "rb") as f:
                        lines = f.read().splitlines()
                break
        time.sleep(0.02)
    return [json.loads(x) for x in lines]


def only_line(path):
    lines = read_lines(path, 1)
    assert len(lines) == 1, lines
    return lines[0]


def metric(a, name):
    text = a.admin("GET", "/metrics")[2].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_a_real_answer_has_every_field(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    a = start_akosha(alog_config(log, rest=upstream(backend.port)))
    status, headers, _ = a.post_json(
        "/v1/embeddings?api_key=secret", {"input": ["a", "b"], "model": "m1"},
        headers={"X-Request-Id": "req-1", "Authorization": "Bearer sk-very-secret",
                 "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert status == 200
    e = only_line(log)
    assert e["request_id"] == "req-1"
    assert e["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert e["client"] == "127.0.0.1"
    assert e["method"] == "POST"
    assert e["path"] == "/v1/embeddings"
    assert e["status"] == 200
    assert e["bytes_in"] > 100 and e["bytes_out"] > 100
    assert e["duration_ms"] > 0
    assert e["model"] == "m1" and e["inputs"] == 2
    assert e["upstream"] == "primary" and e["attempts"] == 1 and e["mode"] == "real"
    assert "reason" not in e and "cache" not in e
    assert time.strptime(e["time"][:19], "%Y-%m-%dT%H:%M:%S")
    with open(log) as f:
        text = f.read()
    # Never a header value, never the query.
    assert "secret" not in text and "Bearer" not in text


def test_a_retried_answer_counts_its_attempts(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    backend.script({"status": 503, "body": "{}"})
    a = start_akosha(alog_config(log, rest=upstream(backend.port, "retries = 2\n"
                                                     "backoff_base = 1ms\n")))
    status, _, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "m"})
    assert status == 200
    e = only_line(log)
    assert e["attempts"] == 2 and e["mode"] == "real" and e["upstream"] == "primary"
    assert e["status"] == 200


def test_a_fallback_answer_names_local_and_the_reason(start_akosha, tmp_path):
    log = str(tmp_path / "access.log")
    a = start_akosha(alog_config(log, rest=upstream(free_port(), "retries = 0\n")))
    status, _, _ = a.post_json("/v1/embeddings", {"input": "x", "model": "m"})
    assert status == 200
    e = only_line(log)
    assert e["mode"] == "fallback" and e["upstream"] == "local"
    assert e["reason"] == "attempts_exhausted" and e["attempts"] == 1


def test_error_classes_each_get_a_line_with_a_reason(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    dead = free_port()
    a = start_akosha(alog_config(
        log, extra_proxy="max_body_size = 1K\nrequest_timeout = 1s\n",
        rest="[fallback]\nmode = off\n" + upstream(dead, "retries = 0\nmodels = known\n")))
    # no upstream could answer, fallback off: 503
    assert a.post_json("/v1/embeddings", {"input": "x", "model": "known"})[0] == 503
    # a model nobody serves: 404
    assert a.post_json("/v1/embeddings", {"input": "x", "model": "nope"})[0] == 404
    # too large: 413
    assert a.request("POST", "/v1/embeddings", b"x" * 2048,
                     {"Content-Type": "application/json"})[0] == 413
    # a malformed head: 400
    assert b" 400 " in a.raw(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    lines = read_lines(log, 4)
    assert [e["status"] for e in lines] == [503, 404, 413, 400], lines
    assert lines[0]["reason"] == "attempts_exhausted" and lines[0]["upstream"] == "primary"
    assert lines[1]["reason"] == "model_not_found" and lines[1]["model"] == "nope"
    assert lines[2]["reason"] == "request_too_large"
    assert lines[3]["reason"] == "invalid_request_error"
    assert all("mode" not in e for e in lines)


def test_request_timeout_and_upstream_error_status(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    backend.script({"action": "hang"})
    a = start_akosha(alog_config(
        log, extra_proxy="request_timeout = 500ms\n",
        rest="[fallback]\nmode = off\n" + upstream(backend.port, "retries = 0\n")))
    assert a.post_json("/v1/embeddings", {"input": "x", "model": "m"})[0] in (503, 504)
    backend.script({"status": 400, "body": '{"error":"bad"}'})
    assert a.post_json("/v1/embeddings", {"input": "x", "model": "m"})[0] == 400
    lines = read_lines(log, 2)
    assert lines[0]["status"] in (503, 504) and lines[0]["reason"] in ("deadline",
                                                                        "request_timeout")
    # An upstream's own error is relayed as a real answer.
    assert lines[1]["status"] == 400 and lines[1]["mode"] == "real"


def test_a_client_that_leaves_gets_a_499_line(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    backend.script({"delay": 1.5})
    a = start_akosha(alog_config(log, rest=upstream(backend.port)))
    body = b'{"input":"x","model":"m"}'
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"X-Request-Id: gone-1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # RST: the client is gone
    e = only_line(log)
    assert e["request_id"] == "gone-1"
    assert e["status"] == 499 and e["reason"] == "client_gone"


def test_hostile_path_and_model_stay_valid_json(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    a = start_akosha(alog_config(log, rest=upstream(backend.port)))
    body = b'{"model":"m\\"}\\n{\\u0001\xff\xfe\\\\","input":"x"}'
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    a.raw(head + body, shut_wr=True)
    # A target with a quote, a backslash and bytes that are not UTF-8.
    a.raw(b'GET /a"b\\c\xff\xc3( HTTP/1.1\r\nHost: x\r\n\r\n', shut_wr=True)
    lines = read_lines(log, 2)  # json.loads of each line is the check
    assert len(lines) == 2
    model = lines[0].get("model")
    assert model is not None and model.startswith('m"}\n{\x01'), lines[0]
    assert "\ufffd" in model or "\\" in model
    path = lines[1]["path"]
    assert path.startswith('/a"b\\c') and "\ufffd" in path, lines[1]


def test_text_format_is_one_line_of_key_values(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    a = start_akosha(alog_config(log, rest=upstream(backend.port), fmt="text"))
    a.raw(b'GET /a"b c HTTP/1.1\r\nHost: x\r\n\r\n', shut_wr=True)
    deadline = time.time() + 5
    text = ""
    while time.time() < deadline and not text.endswith("\n"):
        if os.path.exists(log):
            text = open(log).read()
        time.sleep(0.02)
    assert text.count("\n") == 1 and text.startswith("time=")
    assert " method=GET " in text


def test_sigusr1_reopens_and_no_line_is_lost(start_akosha, backend, tmp_path):
    log = str(tmp_path / "access.log")
    rotated = str(tmp_path / "access.log.1")
    a = start_akosha(alog_config(log, rest=upstream(backend.port)))
    sent = []
    stop = threading.Event()

    def client():
        i = 0
        while not stop.is_set():
            rid = "r%d" % i
            status, _, _ = a.request("GET", "/health", headers={"X-Request-Id": rid})
            sent.append(rid)
            i += 1

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.5)
    os.rename(log, rotated)
    a.signal(signal.SIGUSR1)
    time.sleep(0.5)
    stop.set()
    t.join()
    assert len(sent) > 20
    deadline = time.time() + 5
    while time.time() < deadline:
        old = read_lines(rotated, timeout=0.1)
        new = read_lines(log, timeout=0.1) if os.path.exists(log) else []
        if len(old) + len(new) >= len(sent):
            break
        time.sleep(0.05)
    ids_old = [e["request_id"] for e in old]
    ids_new = [e["request_id"] for e in new]
    assert ids_old and ids_new, "both files have lines"
    assert sorted(ids_old + ids_new) == sorted(sent)  # each request once, in one file
    assert metric(a, "akosha_access_log_dropped_total") == 0


def test_a_stalled_writer_drops_and_counts_without_slowing_requests(start_akosha, backend,
                                                                    tmp_path):
    fifo = str(tmp_path / "access.fifo")
    os.mkfifo(fifo)
    a = start_akosha(alog_config(fifo, extra_proxy="access_log_buffer = 4K\n",
                                 rest=upstream(backend.port)))
    n = 60
    start = time.time()
    for i in range(n):
        assert a.request("GET", "/x", headers={"X-Request-Id": "s%d" % i})[0] == 200
    assert time.time() - start < 10
    dropped = metric(a, "akosha_access_log_dropped_total")
    queued = metric(a, "akosha_access_log_lines_total")
    assert dropped > 0 and queued > 0
    assert dropped + queued == n
    # A reader comes: the writer opens the FIFO (it retries every second) and the
    # lines the buffer kept come through, the dropped ones never.
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    deadline = time.time() + 5
    while time.time() < deadline and data.count(b"\n") < queued:
        try:
            data += os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.05)
    os.close(fd)
    lines = [json.loads(x) for x in data.splitlines()]
    assert len(lines) == queued
    assert [e["request_id"] for e in lines] == ["s%d" % i for i in range(len(lines))]


def test_a_reload_switches_to_the_new_path_and_format(start_akosha, backend, tmp_path):
    first = str(tmp_path / "first.log")
    second = str(tmp_path / "second.log")
    a = start_akosha(alog_config(first, rest=upstream(backend.port)))
    assert a.request("GET", "/x", headers={"X-Request-Id": "before"})[0] == 200
    a.write_config(alog_config(second, rest=upstream(backend.port), fmt="text"))
    a.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and "applied" not in a.logs():
        time.sleep(0.05)
    assert a.request("GET", "/x", headers={"X-Request-Id": "after"})[0] == 200
    assert [e["request_id"] for e in read_lines(first, 1)] == ["before"]
    deadline = time.time() + 5
    text = ""
    while time.time() < deadline and "\n" not in text:
        text = open(second).read() if os.path.exists(second) else ""
        time.sleep(0.02)
    assert text.startswith("time=") and " request_id=after " in text


def test_config_dump_shows_the_keys(start_akosha, tmp_path):
    log = str(tmp_path / "access.log")
    a = start_akosha(alog_config(log))
    cfg = json.loads(a.admin("GET", "/config")[2])
    text = json.dumps(cfg)
    assert '"access_log": "%s"' % log in text
    assert '"access_log_format": "json"' in text
    assert '"access_log_buffer": "1M"' in text


def test_an_unopenable_path_fails_start_up(start_akosha, tmp_path):
    a = start_akosha(alog_config(str(tmp_path / "no" / "such" / "dir.log")), wait=False)
    assert a.proc.wait(10) != 0
    assert "access_log: cannot open" in a.logs()
