#!/usr/bin/python3
"""bert_model.py - write a tiny random-weight BERT model in the
sentence-transformers layout, and a float64 reference of what it computes.

    tests/bert_model.py --out DIR [--dtype F32|F16|BF16] [--pooling mean|cls|max]
        [--no-normalize] [--prefix] [--vocab-txt] [--set KEY=JSON ...] [--drop NAME ...]

DIR gets config.json, model.safetensors (written by hand: header + data),
tokenizer.json (or vocab.txt), modules.json, 1_Pooling/config.json,
sentence_bert_config.json, and reference.json: the test texts, their token
ids, the hidden states after the embeddings and after each layer, and the
pooled (and normalised) embeddings, all computed in float64 with numpy from
the weights as stored (so F16/BF16 rounding is part of the model, not an
error). The batch is padded and masked as in Hugging Face's BertModel.

The tokenizer here is a minimal WordPiece for ASCII text (the test texts are
ASCII); src/wordpiece.c is checked against an independent implementation
separately (tests/unit/test_wordpiece.c).

--set KEY=JSON changes config.json after the weights are made (for the
tests of refusals: a wrong shape, an unsupported activation); --drop NAME
leaves a tensor out. Needs python3-numpy. Used by tests/unit/test_bert.c.
"""
import argparse
import json
import math
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = os.path.join(HERE, "data", "bert-base-uncased-vocab.txt")

TEXTS = [
    "hello",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings, vectors & retrieval: unaffable tokenization!",
    # Longer than max_seq_length: truncated to its first tokens.
    "a circuit breaker opens when the upstream fails and the fallback answers with the "
    "same model running locally so that the vectors stay in the same space as before",
    "x",
    "state-of-the-art (SOTA) models don't need 100 GPUs",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
]


def load_vocab():
    with open(VOCAB, encoding="utf-8") as f:
        tokens = f.read().split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return tokens, {t: i for i, t in enumerate(tokens)}


def tokenize(text, vocab, max_len):
    """bert-base-uncased's pipeline for ASCII text: lowercase, split on
    whitespace and punctuation, greedy longest-match WordPiece."""
    words, cur = [], ""
    for ch in text.lower():
        if ch.isspace():
            if cur:
                words.append(cur)
            cur = ""
        elif 33 <= ord(ch) <= 47 or 58 <= ord(ch) <= 64 or 91 <= ord(ch) <= 96 or 123 <= ord(ch) <= 126:
            if cur:
                words.append(cur)
            words.append(ch)
            cur = ""
        else:
            cur += ch
    if cur:
        words.append(cur)
    ids = []
    for w in words:
        pieces, start = [], 0
        while start < len(w):
            end = len(w)
            while end > start:
                sub = w[start:end] if start == 0 else "##" + w[start:end]
                if sub in vocab:
                    pieces.append(vocab[sub])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids.extend(pieces)
    return [vocab["[CLS]"]] + ids[: max_len - 2] + [vocab["[SEP]"]]


def to_bf16_bits(a):
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def store(a, dtype):
    """(bytes as stored, float64 values the file holds)"""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.astype("<f4").tobytes(), a.astype(np.float64)
    if dtype == "F16":
        h = a.astype("<f2")
        return h.tobytes(), h.astype(np.float64)
    b = to_bf16_bits(a).astype("<u2")
    back = (b.astype(np.uint32) << 16).view(np.float32)
    return b.tobytes(), back.astype(np.float64)


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype string, shape, raw bytes)."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


ERF = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="F32", choices=["F32", "F16", "BF16"])
    ap.add_argument("--pooling", default="mean", choices=["mean", "cls", "max"])
    ap.add_argument("--no-normalize", action="store_true")
    ap.add_argument("--prefix", action="store_true", help='name tensors "bert.*"')
    ap.add_argument("--vocab-txt", action="store_true", help="vocab.txt instead of tokenizer.json")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=64)
    ap.add_argument("--max-seq", type=int, default=24)
    ap.add_argument("--positions", type=int, default=40)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--drop", action="append", default=[])
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    H, L, NH, I, P = args.hidden, args.layers, args.heads, args.intermediate, args.positions
    eps = 1e-12
    tokens, vocab = load_vocab()
    V = len(tokens)
    os.makedirs(os.path.join(args.out, "1_Pooling"), exist_ok=True)

    w = {}  # name -> float64 values as stored
    tensors = []
    prefix = "bert." if args.prefix else ""

    def add(name, shape, scale, base=0.0):
        a = base + scale * rng.standard_normal(shape)
        raw, vals = store(a, args.dtype)
        w[name] = vals
        if name not in args.drop:
            tensors.append((prefix + name, args.dtype, shape, raw))

    add("embeddings.word_embeddings.weight", (V, H), 0.5)
    add("embeddings.position_embeddings.weight", (P, H), 0.5)
    add("embeddings.token_type_embeddings.weight", (2, H), 0.5)
    add("embeddings.LayerNorm.weight", (H,), 0.1, 1.0)
    add("embeddings.LayerNorm.bias", (H,), 0.1)
    for i in range(L):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            add(p + f"attention.self.{part}.weight", (H, H), 0.3)
            add(p + f"attention.self.{part}.bias", (H,), 0.1)
        add(p + "attention.output.dense.weight", (H, H), 0.2)
        add(p + "attention.output.dense.bias", (H,), 0.1)
        add(p + "attention.output.LayerNorm.weight", (H,), 0.1, 1.0)
        add(p + "attention.output.LayerNorm.bias", (H,), 0.1)
        add(p + "intermediate.dense.weight", (I, H), 0.2)
        add(p + "intermediate.dense.bias", (I,), 0.1)
        add(p + "output.dense.weight", (H, I), 0.15)
        add(p + "output.dense.bias", (H,), 0.1)
        add(p + "output.LayerNorm.weight", (H,), 0.1, 1.0)
        add(p + "output.LayerNorm.bias", (H,), 0.1)
    # Buffers and heads a real checkpoint carries, which the model must ignore.
    tensors.append((prefix + "embeddings.position_ids", "I64", (1, P),
                    np.arange(P, dtype="<i8").tobytes()))
    pooler, _ = store(0.1 * rng.standard_normal((H, H)), args.dtype)
    tensors.append((prefix + "pooler.dense.weight", args.dtype, (H, H), pooler))
    write_safetensors(os.path.join(args.out, "model.safetensors"), tensors)

    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": NH,
        "intermediate_size": I, "vocab_size": V, "max_position_embeddings": P,
        "type_vocab_size": 2, "layer_norm_eps": eps, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    }
    for kv in args.set:
        key, _, value = kv.partition("=")
        if value == "":
            config.pop(key, None)
        else:
            config[key] = json.loads(value)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)

    if args.vocab_txt:
        with open(os.path.join(args.out, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(tokens) + "\n")
    else:
        special = lambda c: {"id": vocab[c], "content": c, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}
        tok = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [special(c) for c in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")],
            "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                           "strip_accents": None, "lowercase": True},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [],
                "special_tokens": {c: {"id": c, "ids": [vocab[c]], "tokens": [c]}
                                   for c in ("[CLS]", "[SEP]")},
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab},
        }
        with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False)

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if not args.no_normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    with open(os.path.join(args.out, "modules.json"), "w") as f:
        json.dump(modules, f, indent=1)
    with open(os.path.join(args.out, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": H,
                   "pooling_mode_cls_token": args.pooling == "cls",
                   "pooling_mode_mean_tokens": args.pooling == "mean",
                   "pooling_mode_max_tokens": args.pooling == "max",
                   "pooling_mode_mean_sqrt_len_tokens": False}, f, indent=1)
    with open(os.path.join(args.out, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": args.max_seq, "do_lower_case": False}, f)
    if args.no_reference:
        return

    # ---- float64 reference: padded batch with an attention mask ------------
    ids = [tokenize(t, vocab, min(args.max_seq, P)) for t in TEXTS]
    B, T = len(ids), max(len(x) for x in ids)
    padded = np.zeros((B, T), dtype=np.int64)
    mask = np.zeros((B, T))
    for b, x in enumerate(ids):
        padded[b, : len(x)] = x
        mask[b, : len(x)] = 1
    x = (w["embeddings.word_embeddings.weight"][padded]
         + w["embeddings.position_embeddings.weight"][np.arange(T)][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    states = [x]
    d = H // NH
    bias = (1.0 - mask)[:, None, None, :] * -1e300  # masked keys get no weight
    for i in range(L):
        p = f"encoder.layer.{i}."
        lin = lambda v, n: v @ w[p + n + ".weight"].T + w[p + n + ".bias"]
        heads = lambda v: v.reshape(B, T, NH, d).transpose(0, 2, 1, 3)
        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        inter = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(inter, "output.dense") + x,
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        states.append(x)
    if args.pooling == "mean":
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    elif args.pooling == "cls":
        pooled = x[:, 0]
    else:
        pooled = np.where(mask[..., None] > 0, x, -np.inf).max(1)
    if not args.no_normalize:
        pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    ref = {
        "texts": TEXTS,
        "ids": ids,
        "states": [[st[b, : len(ids[b])].tolist() for b in range(B)] for st in states],
        "embeddings": pooled.tolist(),
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(ref, f)


if __name__ == "__main__":
    main()
