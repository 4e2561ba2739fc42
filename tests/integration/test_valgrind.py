"""One scenario under valgrind: no invalid access, 0 bytes definitely lost at exit."""
import os
import re
import shutil
import signal

import pytest


@pytest.mark.skipif(os.environ.get("AKOSHA_SANITIZERS", "") != "",
                    reason="an ASan build cannot run under valgrind; the plain pass runs this")
def test_mixed_scenario_is_clean_under_valgrind(backend, start_akosha, tmp_path):
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed (apt-get install valgrind)")
    log = tmp_path / "valgrind.log"
    backend.script({"status": 500}, {"status": 200})
    a = start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nbackoff_base = 1ms\n"
                     "failure_threshold = 3\n" % backend.port,
                     wrapper=["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite",
                              "--error-exitcode=99", "--log-file=%s" % log])
    assert a.request("GET", "/retried")[0] == 200           # a retry
    assert a.post_json("/v1/embeddings", {"input": "real"})[0] == 200
    a.admin("POST", "/upstreams/b/open")
    assert a.post_json("/v1/embeddings", {"input": ["fallback", "batch"]})[0] == 200
    assert a.post_json("/embed", {"inputs": ""})[0] == 400
    assert a.raw(b"BAD\r\n\r\n").startswith(b"HTTP/1.1 400")
    a.admin("GET", "/metrics")
    a.admin("GET", "/stats")
    a.signal(signal.SIGHUP)
    a.signal(signal.SIGTERM)
    rc = a.proc.wait(60)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "ERROR SUMMARY: 0 errors" in text, text[-3000:]
    m = re.search(r"definitely lost: ([\d,]+) bytes", text)
    assert m is None or m.group(1) == "0", text[-3000:]
