// A real OTLP/gRPC trace receiver for the gRPC tests of tests/integration/test_telemetry.py.
//
// grpc-js serves opentelemetry.proto.collector.trace.v1.TraceService/Export,
// decoding requests with the official OpenTelemetry proto files (shipped by
// @opentelemetry/otlp-grpc-exporter-base, see package.json). Each call is one
// JSON line on stdout: {"call": n, "metadata": {...}, "code": answered,
// "spans": [...]} with ids in lower-case hex and attributes as a plain object.
// The first line is {"port": N} once the server listens on 127.0.0.1.
//
// usage: node receiver.mjs [--unavailable N]   answer the first N calls UNAVAILABLE
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const args = process.argv.slice(2);
const unavailableIdx = args.indexOf("--unavailable");
let unavailable = unavailableIdx >= 0 ? Number(args[unavailableIdx + 1]) : 0;

const protoRoot = path.join(
  path.dirname(require.resolve("@opentelemetry/otlp-grpc-exporter-base/package.json")),
  "build", "protos");
const definition = protoLoader.loadSync(
  "opentelemetry/proto/collector/trace/v1/trace_service.proto",
  { includeDirs: [protoRoot], keepCase: true, longs: String, enums: String, defaults: true,
    oneofs: true });
const proto = grpc.loadPackageDefinition(definition);
const TraceService = proto.opentelemetry.proto.collector.trace.v1.TraceService;

function anyValue(v) {
  if (v == null || v.value == null) {
    return null;
  }
  const x = v[v.value];
  switch (v.value) {
    case "int_value":
      return Number(x);
    case "array_value":
      return x.values.map(anyValue);
    case "kvlist_value":
      return attributes(x.values);
    case "bytes_value":
      return Buffer.from(x).toString("hex");
    default:
      return x;
  }
}

function attributes(list) {
  const out = {};
  for (const kv of list || []) {
    out[kv.key] = anyValue(kv.value);
  }
  return out;
}

const hex = (b) => Buffer.from(b || []).toString("hex");

let calls = 0;
function exportCall(call, callback) {
  calls += 1;
  const metadata = {};
  for (const [k, v] of Object.entries(call.metadata.getMap())) {
    metadata[k] = String(v);
  }
  const spans = [];
  for (const rs of call.request.resource_spans) {
    const resource = attributes(rs.resource ? rs.resource.attributes : []);
    for (const ss of rs.scope_spans || []) {
      for (const s of ss.spans) {
        spans.push({
          name: s.name,
          trace_id: hex(s.trace_id),
          span_id: hex(s.span_id),
          parent_span_id: hex(s.parent_span_id),
          kind: s.kind,
          start: s.start_time_unix_nano,
          end: s.end_time_unix_nano,
          attributes: attributes(s.attributes),
          events: (s.events || []).map((e) => ({ name: e.name, time: e.time_unix_nano,
                                                 attributes: attributes(e.attributes) })),
          status: s.status ? { code: s.status.code, message: s.status.message } : null,
          scope: ss.scope ? ss.scope.name : null,
          service: resource["service.name"],
        });
      }
    }
  }
  let code = grpc.status.OK;
  if (unavailable > 0) {
    unavailable -= 1;
    code = grpc.status.UNAVAILABLE;
  }
  process.stdout.write(JSON.stringify({ call: calls, metadata, code, spans }) + "\n");
  if (code !== grpc.status.OK) {
    callback({ code, details: "the test receiver is warming up" });
  } else {
    callback(null, {});
  }
}

const server = new grpc.Server();
server.addService(TraceService.service, { Export: exportCall });
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    process.stderr.write(`bind failed: ${err}\n`);
    process.exit(1);
  }
  process.stdout.write(JSON.stringify({ port }) + "\n");
});
process.on("SIGTERM", () => server.tryShutdown(() => process.exit(0)));
