"""Issue 7: the deployment examples cannot run here (no docker, no cluster), so
this parses each one and checks the ports, paths and configs it names against
akosha's own defaults and the daemon's config check.

Defaults come from conf/akosha.conf, which tests/unit/test_docs.c ties to the
key table in src/config.c.
"""
import os
import re
import subprocess
import tempfile

import pytest
import yaml

from conftest import AKOSHA_BIN

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

