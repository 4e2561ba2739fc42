"""Issues 14 and 19: a model's vector size is learned from real answers of any size.

The first vector is counted as the answer is relayed, so a 1536-float OpenAI
answer at full precision (about 30 KB, far past one read) teaches the size
just as a small one does; an answer cut to the caller's "dimensions" teaches
nothing.
"""
import base64
import json
import random
import socket
import struct

from conftest import RawBackend

EMBED = {"input": "hello", "model": "big"}


def openai_body(dim, model="big", b64=False, n=1):
    rnd = random.Random(dim)
    data = []
    for i in range(n):
        vec = [rnd.uniform(-1, 1) for _ in range(dim)]
        if b64:
            emb = base64.b64encode(struct.pack("<%df" % dim, *vec)).decode()
        else:
            emb = vec  # repr of a double: 17-20 characters each
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return json.dumps({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()


def fallback_dim(a, name, model="big"):
    a.admin("POST", "/upstreams/%s/open" % name)
    status, headers, data = a.post_json("/v1/embeddings", {"input": "x", "model": model})
    a.admin("POST", "/upstreams/%s/close" % name)
    assert status == 200 and headers["X-Akosha-Mode"] == "fallback"
    return len(json.loads(data)["data"][0]["embedding"])


def start(start_akosha, port):
    return start_akosha("[upstream b]\nurl = http://127.0.0.1:%d\nretries = 0\n" % port)


def test_a_1536_float_answer_at_full_precision_teaches_the_dimension(backend, start_akosha):
    body = openai_body(1536)
    assert len(body) > 25000
    backend.default = {"status": 200, "body": body}
    a = start(start_akosha, backend.port)
    status, headers, data = a.post_json("/v1/embeddings", EMBED)
    assert status == 200 and headers["X-Akosha-Mode"] == "real" and data == body
    assert fallback_dim(a, "b") == 1536


def test_a_base64_answer_teaches_the_dimension(backend, start_akosha):
    body = openai_body(3072, b64=True, n=4)
    backend.default = {"status": 200, "body": body}
    a = start(start_akosha, backend.port)
    status, _, data = a.post_json("/v1/embeddings", dict(EMBED, encoding_format="base64"))
    assert status == 200 and data == body
    assert fallback_dim(a, "b") == 3072


def test_an_answer_to_a_request_with_dimensions_teaches_nothing(backend, start_akosha):
    backend.default = {"status": 200, "body": openai_body(64)}
    a = start(start_akosha, backend.port)
    status, headers, _ = a.post_json("/v1/embeddings", dict(EMBED, dimensions=64))
    assert status == 200 and headers["X-Akosha-Mode"] == "real"
    assert fallback_dim(a, "b") == 384, "a cut answer must not become the model's size"
    backend.default = {"status": 200, "body": openai_body(1024)}
    a.post_json("/v1/embeddings", EMBED)
    assert fallback_dim(a, "b") == 1024


class ChunkedBackend(RawBackend):
    """Answers every request with one body sent chunked, in small uneven chunks."""

    def __init__(self, body):
        self.body = body
        super().__init__()

    def handle(self, conn):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(buf) < length:
                buf += conn.recv(65536)
            buf = buf[length:]
            out = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n"]
            i, step = 0, 1
            while i < len(self.body):
                piece = self.body[i:i + step]
                out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
                i += step
                step = step * 3 % 4093 + 1
            out.append(b"0\r\n\r\n")
            conn.sendall(b"".join(out))


def test_a_chunked_answer_teaches_the_dimension(start_akosha):
    body = openai_body(1536)
    b = ChunkedBackend(body)
    try:
        a = start(start_akosha, b.port)
        status, headers, data = a.post_json("/v1/embeddings", EMBED)
        assert status == 200 and headers["X-Akosha-Mode"] == "real" and data == body
        assert fallback_dim(a, "b") == 1536
    finally:
        b.stop()
