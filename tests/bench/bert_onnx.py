#!/usr/bin/python3
"""bert_onnx.py DIR - write DIR/model.onnx: the BERT model of a
sentence-transformers directory (config.json, model.safetensors in F32) as
an ONNX graph, for running the same weights under ONNX Runtime
(tests/bench/bert_vs_ort). Needs python3-numpy and python3-onnx (Debian).

The graph is the one Hugging Face's BertModel exports: Gather embeddings,
LayerNormalization, per layer MatMul/Add projections, Reshape/Transpose into
heads, scaled QK^T plus the additive mask, Softmax, the erf GELU, residual
LayerNormalization; then mean pooling over the mask and L2 normalisation.
Inputs: input_ids and attention_mask, int64 [batch, sequence].
"""
import json
import math
import os
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        b, e = t["data_offsets"]
        out[name.removeprefix("bert.")] = np.frombuffer(data[base + b : base + e], dtype="<f4").reshape(t["shape"])
    return out


def main():
    d = sys.argv[1]
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = read_safetensors(os.path.join(d, "model.safetensors"))
    H, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    eps = cfg.get("layer_norm_eps", 1e-12)
    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(value, dtype=np.float32):
        n = name("c")
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), n))
        return n

    def init(arr, n):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), n))
        return n

    def op(kind, inputs, **attrs):
        out = name(kind)
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x, prefix):
        wt = init(w[prefix + ".weight"].T, prefix + ".weight_t")
        b = init(w[prefix + ".bias"], prefix + ".bias")
        return op("Add", [op("MatMul", [x, wt]), b])

    def layer_norm(x, prefix):
        g = init(w[prefix + ".weight"], prefix + ".weight")
        b = init(w[prefix + ".bias"], prefix + ".bias")
        return op("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    word = init(w["embeddings.word_embeddings.weight"], "word_embeddings")
    pos = init(w["embeddings.position_embeddings.weight"], "position_embeddings")
    tt = init(w["embeddings.token_type_embeddings.weight"][0], "token_type_row0")
    seq_len = op("Gather", [op("Shape", ["input_ids"]), const(1, np.int64)], axis=0)
    positions = op("Range", [const(0, np.int64), seq_len, const(1, np.int64)])
    x = op("Add", [op("Add", [op("Gather", [word, "input_ids"]), op("Gather", [pos, positions])]), tt])
    x = layer_norm(x, "embeddings.LayerNorm")

    maskf = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    ext = op("Unsqueeze", [maskf, const([1, 2], np.int64)])
    ext = op("Mul", [op("Sub", [const(1.0), ext]), const(-10000.0)])
    heads_shape = const([0, 0, NH, H // NH], np.int64)
    merge_shape = const([0, 0, H], np.int64)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = op("Transpose", [op("Reshape", [linear(x, p + "attention.self.query"), heads_shape])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [linear(x, p + "attention.self.key"), heads_shape])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [linear(x, p + "attention.self.value"), heads_shape])], perm=[0, 2, 1, 3])
        s = op("Add", [op("Div", [op("MatMul", [q, k]), const(math.sqrt(H // NH))]), ext])
        ctx = op("MatMul", [op("Softmax", [s], axis=-1), v])
        ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(op("Add", [linear(ctx, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        g = op("Mul", [op("Mul", [h, op("Add", [op("Erf", [op("Div", [h, const(math.sqrt(2.0))])]), const(1.0)])]),
                       const(0.5)])
        x = layer_norm(op("Add", [linear(g, p + "output.dense"), x]), p + "output.LayerNorm")

    m3 = op("Unsqueeze", [maskf, const([2], np.int64)])
    summed = op("ReduceSum", [op("Mul", [x, m3]), const([1], np.int64)], keepdims=0)
    count = op("ReduceSum", [m3, const([1], np.int64)], keepdims=0)
    pooled = op("Div", [summed, count])
    nodes.append(helper.make_node("LpNormalization", [pooled], ["sentence_embedding"], axis=-1, p=2))

    graph = helper.make_graph(
        nodes, "bert",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", H])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(d, "model.onnx"))


if __name__ == "__main__":
    main()
