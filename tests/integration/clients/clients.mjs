// clients.mjs PORT MODEL INPUT... [--only openai|ollama]
//
// Runs the official OpenAI and Ollama JavaScript clients against akosha on
// 127.0.0.1:PORT and prints one JSON object: what each client call returned,
// or the error it threw. The pytest side (test_official_clients.py) decides
// what is right; this script only reports.
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';
import { Ollama } from 'ollama';

const args = process.argv.slice(2);
let only = null;
const at = args.indexOf('--only');
if (at >= 0) {
  only = args[at + 1];
  args.splice(at, 2);
}
const [port, model, ...input] = args;
if (!port || !model || input.length === 0) {
  console.error('usage: node clients.mjs PORT MODEL INPUT... [--only openai|ollama]');
  process.exit(2);
}

function version(pkg) {
  const url = new URL(`./node_modules/${pkg}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, 'utf8')).version;
}

// One client call: its result, or the error it threw (message, HTTP status if any).
async function call(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, error: String(e && e.message ? e.message : e), status: e && e.status };
  }
}

// Every vector as a plain array of numbers, and what the client handed back.
function vectors(list) {
  return list.map((v) => ({
    type: Array.isArray(v) ? 'array' : typeof v,
    values: Array.from(v),
  }));
}

async function openai() {
  // No retries: a failure shows at once, as it is.
  const client = new OpenAI({
    baseURL: `http://127.0.0.1:${port}/v1`,
    apiKey: 'x',
    maxRetries: 0,
    timeout: 15000,
  });
  const models = await call(async () => {
    const ids = [];
    for await (const m of client.models.list()) {
      ids.push(m.id);
    }
    return ids;
  });
  // No encoding_format: the SDK asks for base64 and decodes it itself.
  const embeddings = await call(async () => {
    const r = await client.embeddings.create({ model, input });
    return { model: r.model, index: r.data.map((d) => d.index), vectors: vectors(r.data.map((d) => d.embedding)) };
  });
  return { version: version('openai'), models, embeddings };
}

async function ollama() {
  const client = new Ollama({ host: `http://127.0.0.1:${port}` });
  const models = await call(async () => (await client.list()).models.map((m) => m.name));
  const embed = await call(async () => {
    const r = await client.embed({ model, input });
    return { model: r.model, vectors: vectors(r.embeddings) };
  });
  return { version: version('ollama'), models, embed };
}

const out = { node: process.version };
if (only === null || only === 'openai') {
  out.openai = await openai();
}
if (only === null || only === 'ollama') {
  out.ollama = await ollama();
}
process.stdout.write(JSON.stringify(out) + '\n');
