#!/usr/bin/python3
"""A bounded fault soak: steady mixed load while the backends flap and akosha reloads.

Runs for SOAK_SECONDS (default 100) against the real binary on 127.0.0.1 and
then checks that every request got exactly one complete answer in time, that
breakers opened and closed, that memory and descriptors came back, and that
/stats and /metrics agree with what the client saw.

Every few seconds it rewrites the config and sends SIGHUP: a valid file
alternates [upstream one] backoff_base between two values, and every
INVALID_EVERY-th file is deliberately broken. A valid reload counts as applied
only when the admin /config shows the new value; a broken one counts as refused
only when /stats counts a failure and /config still shows the old value. The
summary reports applied and refused reloads as observed, not as requested.

Exits non-zero on any violation and prints a summary line
"N passed, N failed, N skipped in Ts" (pytest's shape, which tools/dev counts).
"""
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from conftest import Akosha, Backend, embedding_body  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "100"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "8"))
MAX_REQUESTS = int(os.environ.get("SOAK_MAX_REQUESTS", "200000"))
REQUEST_TIMEOUT = 3.0
RELOAD_EVERY = 3.0          # seconds between SIGHUPs
INVALID_EVERY = 4           # every 4th rewritten file is broken and must be refused
BACKOFF_VALUES = ("20ms", "25ms")

PHASES = [
    ("healthy", {"status": 200, "body": embedding_body(dim=16)}),
    ("500s", {"status": 500, "body": b"err"}),
    ("resets", {"action": "reset"}),
    ("healthy", {"status": 200, "body": embedding_body(dim=16)}),
    ("hangs", {"action": "hang"}),
    ("slow", {"status": 200, "body": embedding_body(dim=16), "delay": 0.2}),
    ("429", {"status": 429, "headers": {"Retry-After": "1"}}),
    ("malformed", {"action": "garbage"}),
    ("healthy", {"status": 200, "body": embedding_body(dim=16)}),
]


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.answers = {}
        self.problems = []
        self.max_latency = 0.0

    def add(self, status, latency, problem=None):
        with self.lock:
            self.answers[status] = self.answers.get(status, 0) + 1
            self.max_latency = max(self.max_latency, latency)
            if problem:
                self.problems.append(problem)


def soak_config(backoff_base):
    return ("[proxy]\nlisten = 127.0.0.1:{port}\nrequest_timeout = %ds\n"
            "[admin]\nlisten = 127.0.0.1:{admin}\n"
            "[upstream one]\nurl = http://127.0.0.1:{b1}\ncall_timeout = 500ms\n"
            "failure_threshold = 3\nopen_timeout = 1s\nretries = 1\nbackoff_base = %s\n"
            "[upstream two]\nurl = http://127.0.0.1:{b2}\ncall_timeout = 500ms\n"
            "failure_threshold = 3\nopen_timeout = 1s\npriority = 2\n"
            % (int(REQUEST_TIMEOUT), backoff_base))


class Reloads:
    """Rewrites the file, sends SIGHUP and records what akosha actually did with it."""

    def __init__(self, a, ports):
        self.a = a
        self.ports = ports
        self.current = BACKOFF_VALUES[0]   # the value akosha is serving
        self.sent = 0
        self.applied = 0                   # valid files seen in /config after the SIGHUP
        self.refused = 0                   # broken files refused with the old config kept
        self.problems = []

    def served_backoff(self):
        cfg = json.loads(self.a.admin("GET", "/config")[2])
        return cfg["upstreams"]["one"]["backoff_base"]

    def failures(self):
        return self.a.stats()["config_reloads"]["failure"]

    def write(self, text):
        self.a.write_config(text.replace("{b1}", str(self.ports[0]))
                            .replace("{b2}", str(self.ports[1])))

    def once(self):
        self.sent += 1
        broken = self.sent % INVALID_EVERY == 0
        want = BACKOFF_VALUES[1] if self.current == BACKOFF_VALUES[0] else BACKOFF_VALUES[0]
        failures_before = self.failures()
        # A broken file: "soon" is not a duration, so the whole file must be refused.
        self.write(soak_config("soon" if broken else want))
        self.a.signal(signal.SIGHUP)
        deadline = time.time() + 2.0
        while time.time() < deadline:
            if broken and self.failures() > failures_before:
                if self.served_backoff() == self.current:
                    self.refused += 1
                else:
                    self.problems.append("reload %d: broken file changed the config" % self.sent)
                return
            if not broken and self.served_backoff() == want:
                self.current = want
                self.applied += 1
                return
            time.sleep(0.05)
        self.problems.append("reload %d (%s): no effect seen within 2s" %
                             (self.sent, "broken" if broken else "backoff_base " + want))


def client(a, stop, res, seed):
    rng = random.Random(seed)
    conn = None
    while not stop.is_set():
        with res.lock:
            if res.sent >= MAX_REQUESTS:
                return
            res.sent += 1
        path, body = rng.choice([
            ("/v1/embeddings", {"input": ["soak text %d" % rng.randint(0, 999)], "model": "m"}),
            ("/v1/embeddings", {"input": "x", "encoding_format": "base64"}),
            ("/embed", {"inputs": ["a b c", "d e"]}),
            ("/api/embeddings", {"model": "m", "prompt": "p"}),
            ("/v1/models", None),
        ])
        t0 = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=REQUEST_TIMEOUT + 5)
            if body is None:
                conn.request("GET", path)
            else:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            latency = time.time() - t0
            problem = None
            if latency > REQUEST_TIMEOUT + 0.5:
                problem = "answer after %.2fs on %s" % (latency, path)
            clen = resp.getheader("Content-Length")
            if clen is not None and int(clen) != len(data):
                problem = "short body on %s" % path
            if resp.status >= 400:
                try:
                    json.loads(data)
                except ValueError:
                    if resp.status not in (429, 500):  # relayed upstream answers are not ours
                        problem = "non-JSON error %d on %s: %r" % (resp.status, path, data[:80])
            res.add(resp.status, latency, problem)
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            res.add("transport", time.time() - t0, "no answer on %s: %r" % (path, e))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def main():
    import tempfile
    checks = []
    skipped = []
    started = time.time()

    def check(name, ok, detail=""):
        checks.append((name, ok))
        print("%s %s %s" % ("ok  " if ok else "FAIL", name, detail), flush=True)

    def skip(name, why):
        skipped.append(name)
        print("skip %s: %s" % (name, why), flush=True)

    b1, b2 = Backend(), Backend()
    tmp = tempfile.TemporaryDirectory()
    config = (soak_config(BACKOFF_VALUES[0]).replace("{b1}", str(b1.port))
              .replace("{b2}", str(b2.port)))
    a = Akosha(tmp.name, config)
    reloads = Reloads(a, (b1.port, b2.port))
    pid = a.proc.pid
    # warm up, then take the baseline
    for _ in range(200):
        a.post_json("/v1/embeddings", {"input": "warm"})
    time.sleep(0.5)
    base_rss, base_fds = rss_kb(pid), nfds(pid)

    res = Results()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(a, stop, res, i)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    t_end = time.time() + SECONDS
    phase = 0
    next_hup = time.time() + RELOAD_EVERY
    restarted = False
    while time.time() < t_end:
        name, beh = PHASES[phase % len(PHASES)]
        b1.default = beh
        b2.default = PHASES[(phase + 4) % len(PHASES)][1]
        phase += 1
        step_end = min(t_end, time.time() + SECONDS / (2 * len(PHASES)))
        while time.time() < step_end:
            if time.time() >= next_hup:
                reloads.once()
                next_hup = time.time() + RELOAD_EVERY
            time.sleep(0.1)
        if not restarted and phase == len(PHASES):
            # a backend restart: its connections vanish, it comes back on the same port
            port = b1.port
            b1.stop()
            time.sleep(0.5)
            b1 = Backend(port)
            restarted = True
    stop.set()
    b1.hang_event.set()
    b2.hang_event.set()
    for t in threads:
        t.join(REQUEST_TIMEOUT + 10)

    b1.default = b2.default = PHASES[0][1]
    time.sleep(2.5)  # open breakers reach a trial; pooled connections settle
    for _ in range(20):
        a.post_json("/v1/embeddings", {"input": "after"})
    total = sum(res.answers.values())
    answered = total - res.answers.get("transport", 0)
    check("no crash", a.proc.poll() is None)
    check("every request answered exactly once", total == res.sent and not res.problems,
          "sent %d answered %d problems %d %s" % (res.sent, answered, len(res.problems),
                                                   res.problems[:3]))
    check("no answer past request_timeout", res.max_latency <= REQUEST_TIMEOUT + 0.5,
          "max %.2fs" % res.max_latency)
    logs = a.logs()
    check("breakers opened and closed", "-> open" in logs and "half_open -> closed" in logs)
    end_rss, end_fds = rss_kb(pid), nfds(pid)
    if os.environ.get("AKOSHA_SANITIZERS"):
        # ASan's quarantine and shadow memory grow by design; the plain build enforces this.
        skip("RSS grew by less than 10%", "ASan build, %d kB -> %d kB" % (base_rss, end_rss))
    else:
        check("RSS grew by less than 10%", end_rss < base_rss * 1.10,
              "%d kB -> %d kB" % (base_rss, end_rss))
    deadline = time.time() + 35
    while time.time() < deadline and nfds(pid) > base_fds:
        time.sleep(0.5)
    end_fds = nfds(pid)
    check("file descriptors back to baseline", end_fds <= base_fds,
          "%d -> %d" % (base_fds, end_fds))
    stats = a.stats()
    _, _, m = a.admin("GET", "/metrics")
    metric_total = sum(float(l.split()[-1]) for l in m.decode().splitlines()
                       if l.startswith("akosha_requests_total{"))
    client_total = answered + 200 + 20
    check("/stats counts equal the client's", stats["requests_total"] == client_total,
          "stats %d client %d" % (stats["requests_total"], client_total))
    check("/metrics counts equal the client's", int(metric_total) == client_total,
          "metrics %d client %d" % (metric_total, client_total))
    expect_refused = reloads.sent // INVALID_EVERY
    check("every valid reload applied (seen in /config)",
          reloads.applied == reloads.sent - expect_refused and not reloads.problems,
          "applied %d of %d %s" % (reloads.applied, reloads.sent - expect_refused,
                                   reloads.problems[:3]))
    check("every broken reload refused, old config kept", reloads.refused == expect_refused,
          "refused %d of %d" % (reloads.refused, expect_refused))
    check("/stats reload counts equal what was observed",
          stats["config_reloads"] == {"success": reloads.applied, "failure": reloads.refused},
          "stats %s" % stats["config_reloads"])
    check("at least two reloads applied", reloads.applied >= 2, "applied %d" % reloads.applied)
    print("soak: %d requests in %.0fs, answers %s, reloads: %d sent, %d applied, %d refused "
          "(%d broken on purpose)" %
          (res.sent, SECONDS, dict(sorted((str(k), v) for k, v in res.answers.items())),
           reloads.sent, reloads.applied, reloads.refused, expect_refused))
    a.stop()
    b1.stop()
    b2.stop()
    tmp.cleanup()
    passed = sum(1 for _, ok in checks if ok)
    print("%d passed, %d failed, %d skipped in %.1fs" %
          (passed, len(checks) - passed, len(skipped), time.time() - started))
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
