/*
 * accesslog.h - one line per answered request, written off the event loop.
 *
 * The loop thread formats each line (accesslog_format_line, pure: no clock,
 * no I/O) into a bounded single-producer/single-consumer byte ring; one
 * writer thread drains the ring to the file with write(2). A line that does
 * not fit in the ring is dropped and counted, never waited for: a slow disk
 * costs lines, not latency. Opening the file (at a reopen or a new path) is
 * the writer thread's job too.
 *
 * Threads: accesslog_new, _configure, _reopen, _write, _counters and _free
 * are for the loop thread (one producer). Nothing here knows what a request
 * or a connection is: the caller fills a struct accesslog_entry of values.
 */
#ifndef AKOSHA_ACCESSLOG_H
#define AKOSHA_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum accesslog_format { ACCESSLOG_JSON, ACCESSLOG_TEXT };

/* The longest line accesslog_format_line writes, newline included; fields are cut to fit. */
#define ACCESSLOG_LINE_MAX 4096

/*
 * One request's line. Strings are borrowed for the call only; NULL (or, for
 * the counted ones, length 0 with a NULL pointer) leaves an optional field
 * out. Strings may hold any bytes: they are escaped, invalid UTF-8 becomes
 * U+FFFD.
 */
struct accesslog_entry {
    int64_t time_ms;        /* wall clock, Unix milliseconds: when the answer completed */
    const char *request_id; /* X-Request-Id as answered */
    const char *trace_id;   /* 32 hex digits, or NULL */
    const char *client;     /* the peer's address */
    const char *method;
    size_t method_len;
    const char *path; /* without the query: a query may carry a secret */
    size_t path_len;
    int status;          /* answered status; 0: no answer (the client left first) */
    uint64_t bytes_in;   /* request head and body payload */
    uint64_t bytes_out;  /* bytes the client's socket took */
    uint64_t duration_us;
    const char *model;    /* the model as the body named it, or NULL */
    uint32_t inputs;      /* texts in the body, 0 when not an embedding request */
    const char *upstream; /* the upstream that answered or failed last, "local", or NULL */
    unsigned attempts;    /* upstream attempts started */
    const char *mode;     /* "real", "local", "fallback", or NULL */
    const char *reason;   /* why a fallback or an error answered, or NULL */
    const char *cache;    /* what the cache did (X-Akosha-Cache), or NULL where none applies */
};

/*
 * Format e as one line ending in '\n' into out (ACCESSLOG_LINE_MAX bytes);
 * returns its length. JSON: one object per line, valid whatever the strings
 * hold. Text: space-separated key=value pairs, a value quoted with "" (and
 * \" \\ \xHH escapes) when it is empty or holds a space, quote, '=' or a
 * control byte.
 */
size_t accesslog_format_line(enum accesslog_format fmt, const struct accesslog_entry *e,
                             char *out);

struct accesslog;

/*
 * The access log for target ("stderr", a file path, or "off"/NULL: no line
 * is taken, and no thread runs until a reload names a target), with a ring
 * of ring_size bytes (at least ACCESSLOG_LINE_MAX).
 * The file is opened here, so a path that cannot be opened fails start-up
 * (a FIFO without a reader yet is not a failure: the writer keeps trying).
 * Returns NULL and sets *cause (allocated; the caller frees it) on failure.
 * Owner of the result: the caller, released with accesslog_free.
 */
struct accesslog *accesslog_new(const char *target, enum accesslog_format fmt, size_t ring_size,
                                char **cause) __attribute__((warn_unused_result));
/*
 * A reload: the format applies from the next line; a changed target is
 * opened by the writer thread after the lines already queued are written
 * to the old one ("off": the file is closed and lines are no longer queued).
 */
void accesslog_configure(struct accesslog *al, const char *target, enum accesslog_format fmt);
/* SIGUSR1: the writer closes and reopens the file by its path (after logrotate moved it). */
void accesslog_reopen(struct accesslog *al);
/* Whether lines are being taken (the target is not "off"). */
bool accesslog_enabled(const struct accesslog *al);
/* Format and queue one line; dropped and counted when the ring lacks room. Loop thread. */
void accesslog_write(struct accesslog *al, const struct accesslog_entry *e);
/* Lines queued and lines dropped since start. Any thread. */
void accesslog_counters(const struct accesslog *al, uint64_t *lines, uint64_t *dropped);
/*
 * Write what is queued, waiting at most timeout_ms, then stop the writer and
 * free. A writer stuck past the timeout (a blocking stderr) is abandoned,
 * with al, to the process exit.
 */
void accesslog_free(struct accesslog *al, unsigned long timeout_ms);

#endif
