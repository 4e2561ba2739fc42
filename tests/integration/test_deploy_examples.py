"""Issue 7: the deployment examples, checked as far as this machine allows.

There is no container engine or cluster here, so nothing below runs docker,
docker compose or kubectl. What does run:

- conf/Dockerfile: the build context is a copy of the tree filtered by
  .dockerignore (docker's pattern rules), and the build stage's RUN steps
  (autoreconf, configure, make, make install, the listen edits and akosha -t)
  run in it as written, with /out redirected to a scratch directory and with
  Criterion hidden from pkg-config (the stage does not install it). The
  runtime stage's COPY --from=build sources must exist; the installed binary is
  started as the image would start it (ENTRYPOINT + CMD, USER 65534 when the
  tests run as root) with only the ports moved to free ones, and the
  HEALTHCHECK command itself is run against it.
- conf/docker-compose.yml: the image's binary and config run with the akosha
  service's environment; the fallback answers and the scrape path serves.
- conf/kubernetes/sidecar.yaml: the ConfigMap's akosha.conf is checked with -t
  and run with the container's env, args and mount path; the liveness and
  readiness probe paths must answer 200 on the port the config listens on.
- conf/kubernetes/hpa.yaml: the HPA scales sidecar.yaml's Deployment on the
  metric the Prometheus adapter rule exposes; the rule's series is a counter
  the running binary serves, and its query, templates filled in as the
  adapter fills them, parses with promtool.

Only parsed, never executed: the apt-get steps and the debian:12 base images;
FROM, EXPOSE, STOPSIGNAL and USER as a container runtime applies them;
compose's networking (network_mode: service:akosha), port publishing and
depends_on, and the Prometheus and Jaeger images; Kubernetes scheduling,
the kubelet's probes, securityContext and the ConfigMap volume itself.

Defaults come from conf/akosha.conf, which tests/unit/test_docs.c ties to the
key table in src/config.c.
"""
import fnmatch
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import yaml

from conftest import AKOSHA_BIN, free_port

SRCDIR = os.environ.get("AKOSHA_SRCDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
CONF = os.path.join(SRCDIR, "conf")


def read(path):
    with open(path) as f:
        return f.read()


def sample_defaults():
    """{(section, key): default} from the '# key = value' lines of the sample file."""
    out = {}
    section = None
    for line in read(os.path.join(CONF, "akosha.conf")).splitlines():
        s = line.lstrip("#").strip()
        m = re.match(r"\[(\w+)", s)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"([a-z_0-9]+) =(?: (.*))?$", s)
        if m and section:
            out[(section, m.group(1))] = m.group(2) or ""
    return out


def settings(text):
    """{(section, key): value} of the lines a config file really sets."""
    out = {}
    section = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        m = re.match(r"\[(\w+)", s)
        if m:
            section = m.group(1)
            continue
        key, _, value = s.partition("=")
        out[(section, key.strip())] = value.strip()
    return out


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


DEFAULTS = sample_defaults()
PROXY_PORT = port_of(DEFAULTS[("proxy", "listen")])
ADMIN_PORT = port_of(DEFAULTS[("admin", "listen")])


def check_config(text, env=None):
    """Run akosha -t on text; return its settings."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "akosha.conf")
        with open(path, "w") as f:
            f.write(text)
        full_env = dict(os.environ)
        full_env.update(env or {})
        r = subprocess.run([AKOSHA_BIN, "-t", "-c", path], capture_output=True, text=True,
                           env=full_env, timeout=10)
    assert r.returncode == 0, r.stderr
    return settings(text)


def test_defaults_are_what_the_examples_assume():
    # The examples below publish these ports; a changed default must be noticed here.
    assert (PROXY_PORT, ADMIN_PORT) == (8080, 3002)
    assert DEFAULTS[("admin", "listen")].startswith("127.0.0.1:")


# ---- conf/Dockerfile ---------------------------------------------------------

def dockerfile_instructions():
    text = read(os.path.join(CONF, "Dockerfile")).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_on_debian_12_and_runs_the_installed_binary():
    ins = dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all(re.match(r"debian:12(\b|-)", f) for f in froms), froms
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "./configure --prefix=/usr --sysconfdir=/etc" in runs
    assert "make install DESTDIR=/out" in runs
    entry = dict(ins)["ENTRYPOINT"]
    cmd = dict(ins)["CMD"]
    assert yaml.safe_load(entry) == ["/usr/sbin/akosha"]
    assert yaml.safe_load(cmd) == ["-c", "/etc/akosha/akosha.conf"]
    exposed = {int(p) for p in dict(ins)["EXPOSE"].split()}
    assert exposed == {PROXY_PORT, ADMIN_PORT}
    health = dict(ins)["HEALTHCHECK"]
    assert "/dev/tcp/127.0.0.1/%d" % ADMIN_PORT in health and "GET /healthz " in health


def test_dockerfile_config_listens_on_every_address_and_passes_the_check():
    runs = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    edits = re.findall(r"-e 's\|\^(.*?)\$\|(.*?)\|'", runs)
    assert len(edits) == 3, runs
    text = read(os.path.join(CONF, "akosha.conf"))
    for old, new in edits:
        # The sed must match a line of the sample, or the image keeps loopback.
        assert re.search("^" + re.escape(old) + "$", text, re.M), old
        text = re.sub("^" + re.escape(old) + "$", new, text, flags=re.M)
    s = check_config(text, env={"AKOSHA_ADMIN_TOKEN": "t"})
    assert s[("proxy", "listen")] == "0.0.0.0:%d" % PROXY_PORT
    assert s[("admin", "listen")] == "0.0.0.0:%d" % ADMIN_PORT
    # The admin listener is on every address: the breaker controls need a
    # token, and the image holds only a reference to it.
    assert s[("admin", "token")] == "${AKOSHA_ADMIN_TOKEN}"
    assert "AKOSHA_ADMIN_TOKEN=" not in " ".join(
        rest for word, rest in dockerfile_instructions() if word in ("ENV", "ARG"))


# ---- conf/Dockerfile, run: the build stage's steps and the runtime stage ------

def dockerignore_patterns():
    """[(regex, is_exception)] from .dockerignore, in order (docker's rules: paths
    from the context root, * and ? stay within a directory, ** spans directories)."""
    out = []
    for line in read(os.path.join(SRCDIR, ".dockerignore")).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx, i = "", 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        out.append((re.compile(rx + r"\Z"), exception))
    return out


def docker_excludes(patterns, rel):
    """True when .dockerignore keeps rel (or a directory above it) out of the context."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for rx, exception in patterns:
        if any(rx.match(c) for c in candidates):
            excluded = not exception
    return excluded


def copy_build_context(dest):
    """Copy SRCDIR to dest as docker build would send it; return the relative paths."""
    patterns = dockerignore_patterns()
    reopened = [rx for rx, exception in patterns if exception]
    sent = set()
    for root, dirs, files in os.walk(SRCDIR):
        rel_root = os.path.relpath(root, SRCDIR)
        rel_root = "" if rel_root == "." else rel_root + "/"
        # Skip an excluded directory unless an exception could reopen something in it.
        dirs[:] = [d for d in dirs if not docker_excludes(patterns, rel_root + d)
                   or any(rx.pattern.startswith(re.escape(rel_root + d + "/")) for rx in reopened)]
        for name in files:
            rel = rel_root + name
            if docker_excludes(patterns, rel) or not os.path.isfile(os.path.join(root, name)):
                continue
            os.makedirs(os.path.join(dest, rel_root), exist_ok=True)
            shutil.copy2(os.path.join(root, name), os.path.join(dest, rel))
            sent.add(rel)
    return sent


def git_paths(*args):
    """Paths git lists for SRCDIR, or None when SRCDIR is not a checkout's top (a
    tarball, or the sanitizer copy inside a checkout, which git sees as ignored)."""
    top = subprocess.run(["git", "-C", SRCDIR, "rev-parse", "--show-toplevel"],
                         capture_output=True, text=True)
    if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(SRCDIR):
        return None
    r = subprocess.run(["git", "-C", SRCDIR, "ls-files", "-z"] + list(args),
                       capture_output=True, text=True)
    return None if r.returncode != 0 else set(p for p in r.stdout.split("\0") if p)


def pkg_config_without(package, dest):
    """A pkg-config search directory holding every .pc file but package's."""
    r = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    hidden = {os.path.basename(f) for f in r.stdout.split() if f.endswith(".pc")}
    assert hidden, "%s ships no .pc file: is it installed?" % package
    path = subprocess.run(["pkg-config", "--variable", "pc_path", "pkg-config"],
                          capture_output=True, text=True).stdout.strip()
    os.makedirs(dest)
    for d in path.split(":"):
        for pc in (os.listdir(d) if os.path.isdir(d) else []):
            if pc.endswith(".pc") and pc not in hidden and not os.path.exists(
                    os.path.join(dest, pc)):
                os.symlink(os.path.join(d, pc), os.path.join(dest, pc))
    return dest


def build_env(**extra):
    env = dict(os.environ)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(k, None)  # make check's jobserver is not ours
    env.update(extra)
    return env


def stages():
    """[(FROM line, [(instruction, rest)])] of the Dockerfile."""
    out = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            out.append((rest, []))
        else:
            out[-1][1].append((word, rest))
    return out


@pytest.fixture(scope="module")
def image():
    """The Dockerfile's build stage run on this machine; the runtime stage's files
    laid out under a root directory. Returns (root, runtime instructions)."""
    tmp = tempfile.mkdtemp(prefix="akosha-image-")
    os.chmod(tmp, 0o755)  # the image's USER 65534 must reach the files
    try:
        (build_from, build), (run_from, runtime) = stages()
        assert " AS build" in build_from
        assert dict(build)["WORKDIR"] == "/src" and ("COPY", ". .") in build
        ctx, out, root = (os.path.join(tmp, d) for d in ("src", "out", "root"))
        sent = copy_build_context(ctx)
        tracked = git_paths()
        if tracked is not None:
            ignored = git_paths("--others", "--ignored", "--exclude-standard")
            # Build outputs and backups git ignores must not reach the image build...
            assert sorted(sent & ignored) == []
            # ...and every tracked file must, but for CI plumbing.
            assert sorted(p for p in tracked - sent if not p.startswith(".ci/")) == []
        assert ".git" not in sent and "Makefile" not in sent and "m4/.keep" in sent
        steps = [rest for word, rest in build if word == "RUN"]
        assert "apt-get install" in steps[0] and "libcriterion-dev" not in steps[0]
        env = build_env(PKG_CONFIG_LIBDIR=pkg_config_without("libcriterion-dev",
                                                             os.path.join(tmp, "pc")))
        for step in steps[1:]:
            assert "apt-get" not in step
            cmd = re.sub(r"(?<![\w/])/out\b", out, step)
            r = subprocess.run(["/bin/sh", "-c", cmd], cwd=ctx, env=env, capture_output=True,
                               text=True, timeout=900)
            assert r.returncode == 0, step + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
        for word, rest in runtime:
            if word == "COPY":
                m = re.match(r"--from=build (\S+) (\S+)$", rest)
                assert m, rest
                # The build stage's /out and /src are out and ctx here.
                src = re.sub(r"^/(out|src)(?=/)", lambda d: {"out": out, "src": ctx}[d.group(1)],
                             m.group(1))
                dst = root + m.group(2)
                assert os.path.isfile(src), m.group(1)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst)
        for d, _, files in os.walk(root):
            os.chmod(d, 0o755)
        yield root, runtime
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def admin_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


class Container:
    """The image's binary run as its entrypoint would run it, on free ports."""

    def __init__(self, root, argv, config_text, config_path, env, listens, admin=ADMIN_PORT):
        self.ports = {}
        for old, addr in listens.items():
            self.ports[old] = free_port()
            listen = "%s:%d" % (addr, old)
            assert listen in config_text, listen
            config_text = config_text.replace(listen, "%s:%d" % (addr, self.ports[old]))
        # The config as mounted at config_path (a volume: the image's own file stays).
        self.mount = tempfile.mkdtemp(prefix="akosha-mount-")
        os.chmod(self.mount, 0o755)
        host_config = os.path.join(self.mount, os.path.basename(config_path))
        with open(host_config, "w") as f:
            f.write(config_text)
        os.chmod(host_config, 0o644)
        argv = [root + argv[0]] + [host_config if a == config_path else a for a in argv[1:]]
        user = {}
        if os.geteuid() == 0:
            user = {"user": 65534, "group": 65534, "extra_groups": []}
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        full_env.update(env)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT, **user)
        started = time.time()
        last = None
        while True:
            assert self.proc.poll() is None, "exited:\n" + self.logs()
            try:
                last = admin_get(self.port(admin), "/readyz")
                if last == 200:
                    break
            except OSError as e:
                last = e
            if time.time() > started + 30:
                self.stop_quietly()  # never leave a daemon behind
                raise AssertionError("not ready after 30s (%r):\n%s" % (last, self.logs()))
            time.sleep(0.05)

    def stop_quietly(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def port(self, old):
        return self.ports[old]

    def logs(self):
        # pread: the daemon shares this file's offset, which a seek would move.
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.mount, ignore_errors=True)
        return self.proc.returncode


def image_command(runtime):
    ins = dict(runtime)
    return json.loads(ins["ENTRYPOINT"]) + json.loads(ins["CMD"])


def apt_installed(instructions):
    """Packages the stage's RUN apt-get install lines name."""
    out = set()
    for word, rest in instructions:
        if word == "RUN":
            for m in re.finditer(r"apt-get install ([^&;]*)", rest):
                out |= {w for w in m.group(1).split() if not w.startswith("-")}
    return out


def library_package(soname):
    """The Debian package that ships the library the dynamic linker finds for soname."""
    r = subprocess.run([shutil.which("ldconfig") or "/sbin/ldconfig", "-p"], capture_output=True,
                       text=True)
    paths = [line.rsplit("=> ", 1)[1].strip() for line in r.stdout.splitlines()
             if line.strip().startswith(soname + " ") and "=> " in line]
    assert paths, "%s is not installed here" % soname
    for path in (paths[0], os.path.realpath(paths[0])):
        r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].strip()
    raise AssertionError("no package ships %s" % paths[0])


# What debian:12-slim has without an install: libc6 (libc, libm).
SLIM_BASE = {"libc6"}
# Loaded with dlopen(), so absent from the binary's NEEDED entries.
DLOPENED = ["libcurl.so.4", "libopenblas.so.0"]


def test_dockerfile_installs_what_the_build_and_the_binary_need(image):
    """The image build runs here on a machine that has every package, so this
    checks the Dockerfile's own lists: the build stage installs what tools/dev
    builds with, the runtime stage every library the binary links or loads."""
    root, runtime = image
    (_, build), _ = stages()
    with open(os.path.join(SRCDIR, "tools", "dev")) as f:
        m = re.search(r'^PACKAGES="([^"]*)"', f.read(), re.M)
    assert m, "tools/dev has no PACKAGES list"
    missing = set(m.group(1).replace("\\\n", " ").split()) - apt_installed(build)
    assert not missing, "the build stage does not install %s" % sorted(missing)
    r = subprocess.run(["readelf", "-d", root + "/usr/sbin/akosha"], capture_output=True,
                       text=True)
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", r.stdout)
    assert "libc.so.6" in needed, r.stdout
    runtime_packages = apt_installed(runtime)
    for soname in needed + DLOPENED:
        package = library_package(soname)
        assert package in SLIM_BASE or package in runtime_packages, \
            "the runtime stage lacks %s (for %s)" % (package, soname)


def test_dockerfile_image_runs_as_its_user_and_passes_its_healthcheck(image):
    root, runtime = image
    ins = dict(runtime)
    assert ins["USER"] == "65534:65534" and ins["STOPSIGNAL"] == "SIGTERM"
    argv = image_command(runtime)
    config_path = argv[argv.index("-c") + 1]
    with open(root + config_path) as f:
        config = f.read()
    # As the Dockerfile's usage says: docker run -e AKOSHA_ADMIN_TOKEN=...
    c = Container(root, argv, config, config_path, {"AKOSHA_ADMIN_TOKEN": "image-test-token"},
                  {PROXY_PORT: "0.0.0.0", ADMIN_PORT: "0.0.0.0"})
    try:
        health = json.loads(ins["HEALTHCHECK"][ins["HEALTHCHECK"].index("CMD ") + 4:])
        probe = [a.replace("/dev/tcp/127.0.0.1/%d" % ADMIN_PORT,
                           "/dev/tcp/127.0.0.1/%d" % c.port(ADMIN_PORT)) for a in health]
        assert probe != health, "the HEALTHCHECK does not name the admin port"
        r = subprocess.run(probe, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stdout + r.stderr + c.logs()
        conn = http.client.HTTPConnection("127.0.0.1", c.port(PROXY_PORT), timeout=10)
        conn.request("POST", "/v1/embeddings", json.dumps({"input": "hello"}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200 and resp.getheader("X-Akosha-Mode") == "fallback"
    finally:
        assert c.stop() == 0, c.logs()


def test_compose_environment_runs_the_image(image, compose):
    root, runtime = image
    argv = image_command(runtime)
    config_path = argv[argv.index("-c") + 1]
    with open(root + config_path) as f:
        config = f.read()
    env = {k: str(v) for k, v in compose["services"]["akosha"]["environment"].items()}
    # Not the example's: jaeger does not resolve here, and SIGTERM would wait the
    # default export timeout for the request's spans.
    env["OTEL_BSP_EXPORT_TIMEOUT"] = "1000"
    c = Container(root, argv, config, config_path, env,
                  {PROXY_PORT: "0.0.0.0", ADMIN_PORT: "0.0.0.0"})
    try:
        # prometheus.yml's job scrapes /metrics on the admin port it shares.
        assert admin_get(c.port(ADMIN_PORT), "/metrics") == 200
        assert "export to http://jaeger:4318/v1/traces" in c.logs()
        conn = http.client.HTTPConnection("127.0.0.1", c.port(PROXY_PORT), timeout=10)
        conn.request("POST", "/v1/embeddings", json.dumps({"input": "hello"}))
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        assert c.stop() == 0, c.logs()


# ---- conf/docker-compose.yml -------------------------------------------------

@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(read(os.path.join(CONF, "docker-compose.yml")))


def test_compose_builds_akosha_and_publishes_its_ports(compose):
    akosha = compose["services"]["akosha"]
    build = akosha["build"]
    assert os.path.isfile(os.path.join(CONF, build["context"], build["dockerfile"]))
    published = {int(p.split(":")[1]) for p in akosha["ports"]}
    assert {PROXY_PORT, ADMIN_PORT} <= published
    for p in akosha["ports"]:
        host, container = p.split(":")
        assert host == container, p
    # akosha(8), STOPPING: drain_timeout + shutdown_timeout + 5s at least.
    grace = akosha["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) >= (int(DEFAULTS[("proxy", "drain_timeout")][:-1]) +
                               int(DEFAULTS[("telemetry", "shutdown_timeout")][:-1]) + 5)


def test_compose_passes_the_admin_token_from_the_host_never_a_literal(compose):
    env = compose["services"]["akosha"]["environment"]
    # ${VAR:?message}: compose interpolates from the shell or .env, or refuses to start.
    assert re.fullmatch(r"\$\{AKOSHA_ADMIN_TOKEN:\?[^}]*\}", env["AKOSHA_ADMIN_TOKEN"])


def test_compose_sends_spans_to_jaeger_over_otlp_http(compose):
    akosha = compose["services"]["akosha"]
    jaeger = compose["services"]["jaeger"]
    assert akosha["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert "jaeger" in akosha["depends_on"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one")
    assert str(jaeger["environment"]["COLLECTOR_OTLP_ENABLED"]).lower() == "true"
    assert any(p.split(":")[-1] == "4318" for p in jaeger["ports"])


def test_compose_prometheus_scrapes_the_admin_listener_with_the_shipped_rules(compose):
    prom = compose["services"]["prometheus"]
    # Sharing akosha's network is what makes prometheus.yml's localhost target right.
    assert prom["network_mode"] == "service:akosha"
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in prom["volumes"])
    config_in = "--config.file=/etc/prometheus/prometheus.yml"
    assert config_in in prom["command"]
    # without it Prometheus drops the exemplars the latency panel links through
    assert "--enable-feature=exemplar-storage" in prom["command"]
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    for host in mounts:
        assert os.path.isfile(os.path.join(CONF, host)), host
    scrape = yaml.safe_load(read(os.path.join(CONF, "prometheus.yml")))
    for rule_file in scrape["rule_files"]:
        assert "/etc/prometheus/" + rule_file in mounts.values(), rule_file
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "akosha")
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "localhost:%d" % ADMIN_PORT in targets


# ---- conf/kubernetes/sidecar.yaml --------------------------------------------

@pytest.fixture(scope="module")
def k8s():
    docs = list(yaml.safe_load_all(read(os.path.join(CONF, "kubernetes", "sidecar.yaml"))))
    return {d["kind"]: d for d in docs if d}


def akosha_container(k8s):
    containers = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) >= 2, "akosha runs beside the application"
    return next(c for c in containers if c["name"] == "akosha"), containers


def test_sidecar_config_map_passes_the_check_and_opens_admin_to_the_pod(k8s):
    text = k8s["ConfigMap"]["data"]["akosha.conf"]
    with tempfile.TemporaryDirectory() as cred:
        with open(os.path.join(cred, "admin_token"), "w") as f:
            f.write("t\n")
        s = check_config(text, env={"CREDENTIALS_DIRECTORY": cred})
    proxy = s.get(("proxy", "listen"), DEFAULTS[("proxy", "listen")])
    # The application shares the pod's loopback; nothing else needs the proxy.
    assert proxy == "127.0.0.1:%d" % PROXY_PORT
    assert s[("admin", "listen")] == "0.0.0.0:%d" % ADMIN_PORT


def test_sidecar_reads_the_admin_token_from_a_mounted_secret(k8s):
    text = k8s["ConfigMap"]["data"]["akosha.conf"]
    token = settings(text)[("admin", "token")]
    m = re.fullmatch(r"\$\{file:([\w.-]+)\}", token)
    assert m, token
    akosha, _ = akosha_container(k8s)
    env = {e["name"]: e.get("value") for e in akosha["env"]}
    cred_dir = env["CREDENTIALS_DIRECTORY"]
    mount = next(v for v in akosha["volumeMounts"] if v["mountPath"] == cred_dir)
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secretName" in volume["secret"]
    assert "Secret" not in k8s, "the token must not be a literal in this file"
    # akosha runs as 65534; the secret's files must be readable by it.
    uid = akosha["securityContext"]["runAsUser"]
    assert pod["securityContext"]["fsGroup"] == uid
    assert volume["secret"]["defaultMode"] & 0o040


def test_sidecar_mounts_the_config_where_akosha_reads_it(k8s):
    akosha, _ = akosha_container(k8s)
    args = akosha["args"]
    config_path = args[args.index("-c") + 1]
    mount = next(m for m in akosha["volumeMounts"]
                 if config_path.startswith(m["mountPath"].rstrip("/") + "/"))
    volumes = k8s["Deployment"]["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    assert os.path.basename(config_path) in k8s["ConfigMap"]["data"]


def test_sidecar_runs_with_its_env_and_answers_its_probes(image, k8s):
    root, _ = image
    akosha, containers = akosha_container(k8s)
    env = {e["name"]: e["value"] for e in akosha.get("env", [])}
    text = k8s["ConfigMap"]["data"]["akosha.conf"]
    # The kubelet mounts the Secret at CREDENTIALS_DIRECTORY; here, a directory
    # the container's user (65534) can read stands in for it.
    cred = tempfile.mkdtemp(prefix="akosha-secret-")
    os.chmod(cred, 0o755)
    with open(os.path.join(cred, "admin_token"), "w") as f:
        f.write("k8s-test-token\n")
    os.chmod(os.path.join(cred, "admin_token"), 0o644)
    env["CREDENTIALS_DIRECTORY"] = cred
    check_config(text, env)
    s = settings(text)
    admin_port = port_of(s[("admin", "listen")])
    proxy_addr, proxy_port = s.get(("proxy", "listen"),
                                   DEFAULTS[("proxy", "listen")]).rsplit(":", 1)
    # The image's ENTRYPOINT with the container's args; the ConfigMap mounted at mountPath.
    argv = ["/usr/sbin/akosha"] + akosha["args"]
    config_path = akosha["args"][akosha["args"].index("-c") + 1]
    c = Container(root, argv, text, config_path, env,
                  {int(proxy_port): proxy_addr, admin_port: "0.0.0.0"}, admin=admin_port)
    try:
        for probe in ("livenessProbe", "readinessProbe"):
            get = akosha[probe]["httpGet"]
            assert get["port"] == admin_port, probe
            assert admin_get(c.port(admin_port), get["path"]) == 200, probe
        # The application's base URL reaches the proxy; the upstream does not
        # resolve here, so the fallback answers.
        app = next(x for x in containers if x["name"] != "akosha")
        base = next(e["value"] for e in app["env"] if e["name"] == "EMBEDDINGS_BASE_URL")
        m = re.match(r"http://127\.0\.0\.1:(\d+)(/.*)$", base)
        assert m and int(m.group(1)) == int(proxy_port), base
        conn = http.client.HTTPConnection("127.0.0.1", c.port(int(proxy_port)), timeout=15)
        conn.request("POST", m.group(2) + "/embeddings", json.dumps({"input": "x"}))
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200 and resp.getheader("X-Akosha-Mode") == "fallback"
        assert "export to %s/v1/traces" % env["OTEL_EXPORTER_OTLP_ENDPOINT"] in c.logs()
    finally:
        assert c.stop() == 0, c.logs()
        shutil.rmtree(cred, ignore_errors=True)


def test_sidecar_probes_and_scrape_annotations_use_the_admin_port(k8s):
    akosha, containers = akosha_container(k8s)
    live = akosha["livenessProbe"]["httpGet"]
    ready = akosha["readinessProbe"]["httpGet"]
    assert (live["path"], live["port"]) == ("/healthz", ADMIN_PORT)
    assert (ready["path"], ready["port"]) == ("/readyz", ADMIN_PORT)
    assert ADMIN_PORT in [p["containerPort"] for p in akosha["ports"]]
    notes = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(ADMIN_PORT)
    assert notes["prometheus.io/path"] == "/metrics"
    drain = DEFAULTS[("proxy", "drain_timeout")]
    flush = DEFAULTS[("telemetry", "shutdown_timeout")]
    assert drain.endswith("s") and flush.endswith("s")
    grace = k8s["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # akosha(8), STOPPING: drain_timeout + shutdown_timeout + 5s at least.
    assert grace >= int(drain[:-1]) + int(flush[:-1]) + 5
    app = next(c for c in containers if c["name"] != "akosha")
    urls = [e["value"] for e in app.get("env", []) if "value" in e]
    assert any(u.startswith("http://127.0.0.1:%d/" % PROXY_PORT) for u in urls), urls


# ---- conf/kubernetes/hpa.yaml ------------------------------------------------

@pytest.fixture(scope="module")
def hpa():
    docs = list(yaml.safe_load_all(read(os.path.join(CONF, "kubernetes", "hpa.yaml"))))
    return {d["kind"]: d for d in docs if d}


def adapter_rules(hpa):
    return yaml.safe_load(hpa["ConfigMap"]["data"]["config.yaml"])["rules"]


def test_hpa_scales_the_sidecar_deployment_on_the_adapter_metric(hpa, k8s):
    spec = hpa["HorizontalPodAutoscaler"]["spec"]
    assert hpa["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment",
                                                k8s["Deployment"]["metadata"]["name"])
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    exposed = {r["name"]["as"] for r in adapter_rules(hpa)}
    for m in spec["metrics"]:
        assert m["type"] == "Pods"
        assert m["pods"]["metric"]["name"] in exposed
        assert m["pods"]["target"]["type"] == "AverageValue"
        assert float(m["pods"]["target"]["averageValue"]) > 0


def test_hpa_adapter_rule_reads_a_served_counter_with_a_valid_query(hpa, start_akosha):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    a = start_akosha("")
    a.post_json("/v1/embeddings", {"input": "x"})
    page = a.admin("GET", "/metrics")[2].decode()
    for rule in adapter_rules(hpa):
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series)
        assert "# TYPE %s counter" % series in page
        assert re.search(r"^%s\{[^}]*route=" % series, page, re.M), "no route label"
        assert {o["resource"] for o in rule["resources"]["overrides"].values()} == \
            {"namespace", "pod"}
        # The adapter's templates, filled in as it fills them for one pod.
        query = (rule["metricsQuery"].replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"search-api-.*"')
                 .replace("<<.GroupBy>>", "pod"))
        assert "<<" not in query, query
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "rules.yml")
            with open(path, "w") as f:
                yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
                    {"record": "adapter:query", "expr": query}]}]}, f)
            p = subprocess.run([promtool, "check", "rules", path], capture_output=True)
        assert p.returncode == 0, (query, p.stdout, p.stderr)


# ---- the man page's example ---------------------------------------------------

def test_man_page_example_config_passes_the_check():
    page = read(os.path.join(SRCDIR, "man", "akosha.conf.5"))
    section = page[page.index(".Sh EXAMPLES"):]
    block = re.search(r"^\.Bd -literal.*?\n(.*?)^\.Ed", section, re.M | re.S).group(1)
    with tempfile.TemporaryDirectory() as cred:
        with open(os.path.join(cred, "openai_key"), "w") as f:
            f.write("sk-test\n")
        s = check_config(block, env={"CREDENTIALS_DIRECTORY": cred})
    assert ("upstream", "header") in s
    assert "${file:openai_key}" in s[("upstream", "header")]
    # The unit's drop-in shown next to it names the same credential.
    assert re.search(r"^LoadCredential=openai_key:\S+$", section, re.M)

