/*
 * util.h - small helpers shared by every subsystem: allocation that aborts on
 * out-of-memory, monotonic and wall clocks, and a growable byte buffer.
 */
#ifndef AKOSHA_UTIL_H
#define AKOSHA_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Allocation: on failure these print a message and abort; they never return NULL. */
void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *ptr, size_t size);
/* size bytes aligned to align (a power of two, at least sizeof(void *)); free() frees it. */
void *xaligned_alloc(size_t align, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Returns a malloc'd string the caller owns. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Milliseconds / microseconds from CLOCK_MONOTONIC. */
uint64_t util_mono_ms(void);
uint64_t util_mono_us(void);
/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t util_wall_ms(void);
/* A duration in milliseconds as the timeval libevent takes. */
struct timeval util_ms_to_tv(uint64_t ms);
/* A base64 character's value (0-63), -1 when it is none; url_safe also takes '-' and '_'. */
int util_base64_digit(char c, bool url_safe);

/*
 * Bytes at the start of s[0..n) that a JSON string holds as they are (no
 * quote, backslash, control character or UTF-8): the offset of the first
 * special byte, or n. Sixteen bytes at a time, the tail one by one (short
 * strings, keys and values like "float", are most of what a body holds).
 */
size_t util_json_plain_run(const char *s, size_t n);

/* Characters (UTF-8 lead bytes) in s[0..len). */
size_t util_utf8_chars(const char *s, size_t len);

/* Format wall-clock milliseconds as ISO 8601 UTC, "2026-01-02T03:04:05.678Z". */
void util_iso8601(int64_t wall_ms, char *out, size_t outlen);

/*
 * A copy of url fit to print: any userinfo ("user:pass@" before the host) is
 * replaced by "***@". Caller owns the result.
 */
char *util_url_redact(const char *url);

/*
 * Whether a connected peer is on this host by construction: a unix-socket
 * peer, or a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104).
 * Pure: looks at the address only.
 */
bool util_peer_is_local(const struct sockaddr *sa, socklen_t len);

/*
 * A growable byte buffer. buf_* functions abort on out-of-memory.
 * The buffer owns data; buf_free releases it.
 */
struct buf {
    char *data;
    size_t len;
    size_t cap;
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
/* Append v in decimal (no printf on hot paths). */
void buf_put_i64(struct buf *b, int64_t v);
/* Write v in decimal at dst (at most 20 bytes, no NUL); returns the end. */
char *util_put_i64(char *dst, int64_t v);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Append s as a JSON string literal, quotes included. */
void buf_json_string(struct buf *b, const char *s, size_t len);

#endif
