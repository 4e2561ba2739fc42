"""Issue 7: running under systemd.

The notify protocol is tested against the real daemon with a datagram socket
standing in for systemd. The unit file is checked with systemd-analyze, and
both man pages with mandoc; those tools come from Debian's systemd and mandoc
packages (tools/dev installs them).
"""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import AKOSHA_BIN

SRCDIR = os.environ.get("AKOSHA_SRCDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
UNIT_TEMPLATE = os.path.join(SRCDIR, "systemd", "akosha.service.in")
MAN_PAGES = [os.path.join(SRCDIR, "man", "akosha.8"), os.path.join(SRCDIR, "man", "akosha.conf.5")]


class Notifier:
    """A datagram socket that plays systemd's side of sd_notify."""

    def __init__(self, tmpdir, abstract):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "akosha-test-" + uuid.uuid4().hex
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = os.path.join(tmpdir, "notify.sock")
            self.sock.bind(path)
            self.address = path
        self.pending = []  # (monotonic seconds, text) not yet taken by wait_for

    def receive(self, timeout):
        """Every datagram that arrives within timeout seconds, also queued for wait_for."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                return got
            entry = (time.monotonic(), data.decode())
            got.append(entry)
            self.pending.append(entry)

    def wait_for(self, predicate, timeout=5):
        """Queued datagrams up to and including the first one predicate accepts."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                text = self.pending.pop(0)[1]
                got.append(text)
                if predicate(text):
                    return got
            if time.monotonic() >= deadline:
                raise AssertionError("no matching notify message; got %r" % got)
            self.receive(min(0.1, deadline - time.monotonic()))

    def close(self):
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notifier(request):
    d = tempfile.TemporaryDirectory()
    n = Notifier(d.name, abstract=request.param == "abstract")
    yield n
    n.close()
    d.cleanup()


def test_notify_ready_status_reload_and_stopping(notifier, start_akosha):
    a = start_akosha("", env={"NOTIFY_SOCKET": notifier.address})
    got = notifier.wait_for(lambda m: m.startswith("STATUS="))
    assert "READY=1" in got[:-1], "READY=1 comes before the first STATUS="
    status = got[-1]
    assert "serving" in status and "fallback auto" in status
    assert "no upstreams" in status

    before = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
    a.signal(signal.SIGHUP)
    got = notifier.wait_for(lambda m: m.startswith("RELOADING=1"))
    after = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
    fields = dict(line.split("=", 1) for line in got[-1].split("\n"))
    assert fields["RELOADING"] == "1"
    # systemd drops a RELOADING=1 whose MONOTONIC_USEC is not the current time.
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    got = notifier.wait_for(lambda m: m == "READY=1")
    assert not any(m.startswith("STOPPING") for m in got)
    notifier.wait_for(lambda m: m.startswith("STATUS="))

    a.signal(signal.SIGTERM)
    notifier.wait_for(lambda m: m == "STOPPING=1")
    assert a.proc.wait(10) == 0


def test_notify_reload_of_a_bad_file_still_ends_with_ready(notifier, start_akosha):
    a = start_akosha("", env={"NOTIFY_SOCKET": notifier.address})
    notifier.wait_for(lambda m: m == "READY=1")
    with open(a.path, "a") as f:
        f.write("[proxy]\nbogus = 1\n")
    a.signal(signal.SIGHUP)
    notifier.wait_for(lambda m: m.startswith("RELOADING=1"))
    notifier.wait_for(lambda m: m == "READY=1")
    assert a.admin("GET", "/readyz")[0] == 200


def test_watchdog_pings_at_half_the_interval(start_akosha):
    with tempfile.TemporaryDirectory() as d:
        n = Notifier(d, abstract=False)
        try:
            start_akosha("", env={"NOTIFY_SOCKET": n.address, "WATCHDOG_USEC": "400000"})
            n.wait_for(lambda m: m.startswith("STATUS="))
            n.pending.clear()
            window = n.receive(2.0)
            pings = [t for t, m in window if m == "WATCHDOG=1"]
            # 400 ms interval: one ping per 200 ms, about ten in two seconds.
            assert 7 <= len(pings) <= 13, "%d pings in 2 s" % len(pings)
            gaps = [b - a for a, b in zip(pings, pings[1:])]
            assert max(gaps) < 0.4, "a gap of %.3f s would trip the watchdog" % max(gaps)
        finally:
            n.close()


def test_watchdog_for_another_pid_is_ignored(start_akosha):
    with tempfile.TemporaryDirectory() as d:
        n = Notifier(d, abstract=False)
        try:
            start_akosha("", env={"NOTIFY_SOCKET": n.address, "WATCHDOG_USEC": "400000",
                                  "WATCHDOG_PID": "1"})
            got = n.wait_for(lambda m: m.startswith("STATUS="))
            got += [m for _, m in n.receive(1.0)]
            assert "READY=1" in got
            assert "WATCHDOG=1" not in got
        finally:
            n.close()


# ---- the unit file ---------------------------------------------------------

def need_tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s is not installed (Debian: apt-get install %s)" % (
            name, "systemd" if name == "systemd-analyze" else name))
    return path


@pytest.fixture
def unit_dir():
    """The unit as make writes it, with paths that exist on this machine."""
    d = tempfile.TemporaryDirectory()
    etc = os.path.join(d.name, "etc")
    os.makedirs(os.path.join(etc, "akosha"))
    shutil.copy(os.path.join(SRCDIR, "conf", "akosha.conf"), os.path.join(etc, "akosha"))
    with open(UNIT_TEMPLATE) as f:
        text = f.read()
    text = text.replace("@sbindir@", os.path.dirname(os.path.abspath(AKOSHA_BIN)))
    text = text.replace("@sysconfdir@", etc)
    assert not re.search(r"@\w+@", text), "a placeholder make does not substitute"
    with open(os.path.join(d.name, "akosha.service"), "w") as f:
        f.write(text)
    # systemd-analyze verify runs man(1) for each Documentation=man: link.
    for page in MAN_PAGES:
        mandir = os.path.join(d.name, "man", "man" + page[-1])
        os.makedirs(mandir, exist_ok=True)
        shutil.copy(page, mandir)
    yield d.name
    d.cleanup()


def unit_settings(path):
    settings = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_type_notify_with_check_reload_restart_and_watchdog(unit_dir):
    s = unit_settings(os.path.join(unit_dir, "akosha.service"))
    assert s["Type"] == ["notify"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["DynamicUser"] == ["yes"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0] != "0"
    assert " -t " in s["ExecStartPre"][0]
    # akosha(8), STOPPING: TimeoutStopSec >= drain_timeout + shutdown_timeout + 5s.
    drain = sample_default_seconds("proxy", "drain_timeout")
    flush = sample_default_seconds("telemetry", "shutdown_timeout")
    assert int(s["TimeoutStopSec"][0].rstrip("s")) >= drain + flush + 5
    # Room for the default max_connections, admin, one upstream pool and the margin.
    assert int(s["LimitNOFILE"][0]) >= 4096 + 64 + 64 + 64


def sample_default_seconds(section, key):
    """A duration in seconds from the '# key = Ns' line of the sample file's section."""
    current = None
    with open(os.path.join(SRCDIR, "conf", "akosha.conf")) as f:
        for line in f:
            text = line.lstrip("#").strip()
            m = re.match(r"\[(\w+)", text)
            if m:
                current = m.group(1)
            m = re.match(r"%s = (\d+)s$" % key, text)
            if m and current == section:
                return int(m.group(1))
    raise KeyError((section, key))


def test_unit_start_pre_check_accepts_the_installed_sample(unit_dir):
    s = unit_settings(os.path.join(unit_dir, "akosha.service"))
    argv = shlex.split(s["ExecStartPre"][0])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert "configuration ok" in r.stdout


def test_unit_security_exposure_is_at_most_2(unit_dir):
    tool = need_tool("systemd-analyze")
    r = subprocess.run([tool, "security", "--offline=yes", "akosha.service"], cwd=unit_dir,
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for akosha\.service: ([0-9.]+)", out)
    assert m, out
    assert float(m.group(1)) <= 2.0, out


def test_unit_verify_reports_nothing(unit_dir):
    tool = need_tool("systemd-analyze")
    if not os.access("/bin/kill", os.X_OK):
        pytest.fail("ExecReload= runs /bin/kill; install Debian's procps")
    argv = [tool, "verify"]
    if shutil.which("man") is None:
        # Without man(1) the Documentation= links cannot be opened; the pages
        # themselves are checked by the mandoc tests below.
        argv.append("--man=no")
    env = dict(os.environ, MANPATH=os.path.join(unit_dir, "man"))
    r = subprocess.run(argv + ["akosha.service"], cwd=unit_dir, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_unit_verify_would_catch_a_missing_binary(unit_dir):
    tool = need_tool("systemd-analyze")
    path = os.path.join(unit_dir, "akosha.service")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(os.path.dirname(os.path.abspath(AKOSHA_BIN)), "/nonexistent"))
    r = subprocess.run([tool, "verify", "--man=no", "akosha.service"], cwd=unit_dir,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "/nonexistent/akosha" in r.stdout + r.stderr


# ---- the man pages ---------------------------------------------------------

@pytest.mark.parametrize("page", MAN_PAGES, ids=os.path.basename)
def test_man_page_passes_mandoc_lint(page):
    tool = need_tool("mandoc")
    # -W warning: STYLE notes such as "referenced manual not found" depend on
    # which other pages this machine has installed.
    r = subprocess.run([tool, "-T", "lint", "-W", "warning", page], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_man_page_options_match_the_help_text():
    r = subprocess.run([AKOSHA_BIN, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    with open(MAN_PAGES[0]) as f:
        page = f.read()
    for short, long in re.findall(r"-(\w), --([\w-]+)", r.stdout):
        assert ".It Fl %s" % short in page, "-%s is not documented" % short
        assert "Fl -%s" % long in page, "--%s is not documented" % long
