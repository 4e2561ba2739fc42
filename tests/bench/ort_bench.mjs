// ort_bench.mjs DIR - ONNX Runtime's CPU provider on DIR/model.onnx (written by
// bert_onnx.py from the weights bert_bench used), one thread, the two shapes
// bert_bench measures: one 12-token text, and a batch of 32 texts of 128 tokens.
// Prints wall and CPU time per call like bert_bench. Needs onnxruntime-node
// (npm; NODE_PATH pointing at its node_modules). Run by tests/bench/bert_vs_ort.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.env.NODE_PATH || "/tmp/ort/node_modules", "x.js"));
const ort = require("onnxruntime-node");
const dir = process.argv[2];
const seconds = Number(process.argv[3] || 3);

const session = await ort.InferenceSession.create(join(dir, "model.onnx"), {
  executionProviders: ["cpu"],
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  executionMode: "sequential",
  graphOptimizationLevel: "all",
});

// Same weights, same answer: bert_bench leaves the short text's ids and vector in check.json.
if (existsSync(join(dir, "check.json"))) {
  const check = JSON.parse(readFileSync(join(dir, "check.json"), "utf8"));
  const n = check.ids.length;
  const out = await session.run({
    input_ids: new ort.Tensor("int64", BigInt64Array.from(check.ids.map(BigInt)), [1, n]),
    attention_mask: new ort.Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]),
  });
  const v = out.sentence_embedding.data;
  let worst = 0;
  for (let i = 0; i < v.length; i++) worst = Math.max(worst, Math.abs(v[i] - check.embedding[i]));
  console.log(`same text in both: largest difference ${worst.toExponential(2)} over ${v.length} values`);
}

function feeds(batch, len) {
  const ids = new BigInt64Array(batch * len);
  const mask = new BigInt64Array(batch * len).fill(1n);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < len; i++) {
      ids[b * len + i] = BigInt(i === 0 ? 101 : i === len - 1 ? 102 : 1000 + ((b * 131 + i * 977) % 29000));
    }
  }
  return {
    input_ids: new ort.Tensor("int64", ids, [batch, len]),
    attention_mask: new ort.Tensor("int64", mask, [batch, len]),
  };
}

async function measure(batch, len) {
  const f = feeds(batch, len);
  await session.run(f); // warm-up
  const start = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  let calls = 0;
  let now;
  do {
    await session.run(f);
    calls++;
    now = process.hrtime.bigint();
  } while (Number(now - start) < seconds * 1e9);
  const cpu = process.cpuUsage(cpu0);
  const wallMs = Number(now - start) / 1e6 / calls;
  const cpuMs = (cpu.user + cpu.system) / 1e3 / calls;
  return { rate: (batch * 1000) / wallMs, wallMs, cpuMs };
}

const one = await measure(1, 12);
console.log(`one text of 12 tokens:            ${one.rate.toFixed(1).padStart(8)} texts/s ` +
            `${one.wallMs.toFixed(3).padStart(9)} ms/text   (CPU ${one.cpuMs.toFixed(3)} ms)`);
const batch = await measure(32, 128);
console.log(`batch of 32 texts, 4096 tokens: ${batch.rate.toFixed(1).padStart(8)} texts/s ` +
            `${batch.wallMs.toFixed(1).padStart(9)} ms/batch  (CPU ${batch.cpuMs.toFixed(1)} ms), ` +
            `${(batch.rate * 128).toFixed(0)} tokens/s`);
