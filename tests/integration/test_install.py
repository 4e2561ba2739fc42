"""Issue 7: make install into a DESTDIR gives the expected tree and keeps an
edited akosha.conf.

make check exports AKOSHA_BUILDDIR (the configured build tree); run by hand,
the build tree is the one holding AKOSHA_BIN.
"""
import os
import subprocess
import tempfile

import pytest

from conftest import AKOSHA_BIN

SRCDIR = os.environ.get("AKOSHA_SRCDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILDDIR = os.environ.get("AKOSHA_BUILDDIR") or os.path.dirname(
    os.path.dirname(os.path.abspath(AKOSHA_BIN)))


def make_env():
    # Under make check the parent's jobserver descriptors are not ours to use.
    env = dict(os.environ)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(k, None)
    return env


def make(*args):
    r = subprocess.run(["make", "-C", BUILDDIR, "--no-print-directory"] + list(args),
                       env=make_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def configured(*names):
    """Directory variables as the build tree's Makefile expands them."""
    with tempfile.NamedTemporaryFile("w", suffix=".mk") as mk:
        mk.write("print-%:\n\t@echo '$($*)'\n")
        mk.flush()
        out = make("-s", "-f", "Makefile", "-f", mk.name, *["print-" + n for n in names])
    return dict(zip(names, out.splitlines()))


@pytest.fixture(scope="module")
def dirs():
    if not os.path.exists(os.path.join(BUILDDIR, "Makefile")):
        pytest.fail("no configured build tree at %s (set AKOSHA_BUILDDIR)" % BUILDDIR)
    return configured("prefix", "sbindir", "sysconfdir", "mandir", "systemdsystemunitdir")


@pytest.fixture
def destdir():
    d = tempfile.TemporaryDirectory()
    yield d.name
    d.cleanup()


def under(destdir, path):
    return destdir + path


def test_install_tree_has_binary_config_man_pages_and_unit(dirs, destdir):
    make("install", "DESTDIR=" + destdir)
    binary = under(destdir, dirs["sbindir"] + "/akosha")
    conf = under(destdir, dirs["sysconfdir"] + "/akosha/akosha.conf")
    unit = under(destdir, dirs["systemdsystemunitdir"] + "/akosha.service")
    assert os.access(binary, os.X_OK)
    with open(conf) as f, open(os.path.join(SRCDIR, "conf", "akosha.conf")) as sample:
        assert f.read() == sample.read()
    for page in ("man8/akosha.8", "man5/akosha.conf.5"):
        assert os.path.isfile(under(destdir, dirs["mandir"] + "/" + page)), page
    assert dirs["sbindir"].startswith(dirs["prefix"])

    # The unit and the binary agree on where things are.
    with open(unit) as f:
        text = f.read()
    installed_conf = dirs["sysconfdir"] + "/akosha/akosha.conf"
    assert "ExecStart=%s/akosha -c %s\n" % (dirs["sbindir"], installed_conf) in text
    assert "ExecStartPre=%s/akosha -t -c %s\n" % (dirs["sbindir"], installed_conf) in text
    assert "@sbindir@" not in text and "@sysconfdir@" not in text
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    assert installed_conf in r.stdout

    # Nothing is installed outside the directories asked for.
    for root, _, files in os.walk(destdir):
        for name in files:
            path = os.path.join(root, name)[len(destdir):]
            assert any(path.startswith(dirs[k] + "/") for k in
                       ("sbindir", "sysconfdir", "mandir", "systemdsystemunitdir")), path


def test_second_install_keeps_an_edited_config(dirs, destdir):
    make("install", "DESTDIR=" + destdir)
    conf = under(destdir, dirs["sysconfdir"] + "/akosha/akosha.conf")
    with open(conf, "a") as f:
        f.write("\n[upstream mine]\nurl = http://127.0.0.1:9\n")
    with open(conf) as f:
        edited = f.read()
    out = make("install", "DESTDIR=" + destdir)
    assert "keeping existing" in out
    with open(conf) as f:
        assert f.read() == edited

    # Uninstall removes what it installed, but never an admin's edited file.
    make("uninstall", "DESTDIR=" + destdir)
    assert not os.path.exists(under(destdir, dirs["sbindir"] + "/akosha"))
    assert not os.path.exists(under(destdir, dirs["systemdsystemunitdir"] + "/akosha.service"))
    with open(conf) as f:
        assert f.read() == edited


def test_uninstall_removes_an_unedited_config(dirs, destdir):
    make("install", "DESTDIR=" + destdir)
    make("uninstall", "DESTDIR=" + destdir)
    leftovers = [os.path.join(r, n) for r, _, files in os.walk(destdir) for n in files]
    assert leftovers == []


# ---- the dist tarball ----------------------------------------------------------

def git_files():
    """Files git tracks in SRCDIR, or None when it is not a git checkout (a tarball)."""
    r = subprocess.run(["git", "-C", SRCDIR, "ls-files"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return set(r.stdout.split())


def test_dist_ships_every_tracked_file_and_no_build_output():
    with tempfile.TemporaryDirectory() as tmp:
        dist = os.path.join(tmp, "akosha-dist")
        make("distdir", "distdir=" + dist)
        shipped = set()
        for root, dirs, files in os.walk(dist):
            for name in dirs + files:
                shipped.add(os.path.relpath(os.path.join(root, name), dist))
    for needed in ("doc/HARDENING.md", "doc/BENCHMARK.md", ".dockerignore", "m4/.keep",
                   "configure", "tests/bench/http_parse_bench.c"):
        assert needed in shipped, needed
    junk = [f for f in shipped
            if f.endswith((".o", ".a", ".log", ".trs", ".pyc", "~"))
            or os.path.basename(f) in ("__pycache__", ".pytest_cache", "config.status")]
    assert junk == []
    tracked = git_files()
    if tracked is not None:
        # Repository plumbing only; everything else belongs in the tarball.
        not_shipped = {".gitignore", ".ci/run"}
        assert sorted(tracked - shipped - not_shipped) == []
