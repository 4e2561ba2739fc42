/*
 * otlp.h - the batch span processor and the OTLP/HTTP and OTLP/gRPC exporter.
 *
 * Finished spans are encoded and queued by otlp_submit (a short mutex
 * section, never a wait on the network; the span is freed at once) and
 * exported by one dedicated thread with libcurl:
 * POST {endpoint}/v1/traces, Content-Type application/x-protobuf (or
 * application/json with otlp_protocol = http/json), optionally gzip.
 * A batch leaves when it is full (max_export_batch spans) or when
 * schedule_delay_ms has passed; a full queue drops new spans and counts them.
 *
 * OTLP/gRPC (otlp_protocol = grpc): the same protobuf ExportTraceServiceRequest
 * as one gRPC message (5-byte length prefix; with gzip, compressed flag 1 and
 * grpc-encoding: gzip) POSTed over HTTP/2 (h2c with prior knowledge on
 * http://, ALPN on https://) to TELEMETRY_GRPC_PATH with
 * Content-Type application/grpc and TE: trailers. The call's outcome is
 * grpc-status (and grpc-message) from the trailers. Retried are CANCELLED,
 * DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and
 * RESOURCE_EXHAUSTED only when the status details carry a RetryInfo (then
 * with the exporter's own backoff), plus transport failures.
 *
 * Retries: HTTP 429, 502, 503 and 504 (the OTLP retryable codes) and
 * transport failures (connection refused or reset, DNS, timeouts: the
 * collector may simply be restarting) are retried with full-jitter
 * exponential backoff, or after Retry-After when the collector sends one,
 * until export_timeout_ms from the first attempt. Anything else fails at once.
 * Every attempt goes through the circuit breaker "otlp-exporter"; while it
 * is open, batches fail without a request.
 *
 * Console export: each span is also printed as one JSON line on stderr by
 * the exporter thread.
 *
 * Links with libcurl, zlib (-lz) and pthreads.
 */
#ifndef AKOSHA_OTLP_H
#define AKOSHA_OTLP_H

#include <stdbool.h>
#include <stdint.h>

#include "breaker.h"
#include "trace.h"

struct otlp_exporter;

/*
 * Start the exporter thread for the settings (after telemetry_apply_env).
 * service_version is the resource's service.version and the scope version.
 * Returns an exporter the caller owns (release with otlp_shutdown). Returns
 * NULL with *cause NULL when there is nowhere to export (tracing disabled, or
 * no endpoint and no console export), NULL with *cause (static) on failure.
 * Call from the main thread before other threads use libcurl: this runs
 * curl_global_init.
 */
struct otlp_exporter *otlp_start(const struct telemetry_settings *t, const char *service_version,
                                 const char **cause) __attribute__((warn_unused_result));

/*
 * Queue a finished span for export; takes ownership of span in every case
 * (dropped and counted when the queue is full, freed when e is NULL). Safe
 * from any thread; never waits for the exporter.
 */
void otlp_submit(struct otlp_exporter *e, struct trace_span *span);
/* The same for n spans under one lock (a request's spans, as it ends), in order. */
void otlp_submit_spans(struct otlp_exporter *e, struct trace_span *const *spans, size_t n);

/*
 * Export everything queued now and wait up to timeout_ms for it to finish.
 * Returns true when the flush completed in time (whether or not the
 * collector accepted the spans: see otlp_counters).
 */
bool otlp_flush(struct otlp_exporter *e, uint64_t timeout_ms);

/*
 * Stop: export what is queued within timeout_ms, stop and join the thread,
 * free e. Spans still queued at the deadline are dropped and counted.
 * Returns true when every pending span was accepted by the collector (or
 * printed, with console export only). e NULL returns true.
 */
bool otlp_shutdown(struct otlp_exporter *e, uint64_t timeout_ms);

/*
 * Totals since start, readable from any thread; any out pointer may be NULL.
 * exported: spans the collector accepted (2xx). dropped: spans discarded
 * because the queue was full or shutdown ran out of time. failures: batches
 * whose export finally failed (after retries); their spans are lost too.
 */
void otlp_counters(struct otlp_exporter *e, uint64_t *exported, uint64_t *dropped,
                   uint64_t *failures);

/* A snapshot of the exporter's breaker, from any thread; zeroed and closed when e is NULL. */
void otlp_breaker_stats(struct otlp_exporter *e, struct breaker_stats *out);

/* Wall-clock time for span timestamps, nanoseconds since the Unix epoch. */
uint64_t otlp_now_unix_ns(void);

#endif
