/*
 * http_parse_bench.c - parses a typical 400-byte embeddings POST head in a loop
 * and prints the cost per parse. make check builds it (so it keeps compiling
 * against http.h) but does not run it; run it by hand:
 *   make tests/bench/http_parse_bench && tests/bench/http_parse_bench
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http.h"

#define ITERATIONS 1000000

static const char head[] =
    "POST /v1/embeddings HTTP/1.1\r\n"
    "Host: akosha.internal:8080\r\n"
    "User-Agent: python-httpx/0.27.0\r\n"
    "Accept: application/json\r\n"
    "Accept-Encoding: gzip, deflate\r\n"
    "Connection: keep-alive\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 1834\r\n"
    "Authorization: Bearer sk-0123456789abcdefghijklmnopqrstuv\r\n"
    "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    "X-Request-Id: 9f1c2d3e-4b5a-6789-abcd-ef0123456789\r\n"
    "\r\n";

static double
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int
main(void)
{
    static struct http_request_head out;
    size_t len = strlen(head);
    const char *cause;
    long total = 0;

    if (http_parse_request_head(head, len, &out, &cause) != (int)len) {
        fprintf(stderr, "bench head does not parse: %s\n", cause ? cause : "incomplete");
        return 1;
    }
    double start = now_ns();
    for (int i = 0; i < ITERATIONS; i++) {
        /* The volatile-free sum keeps the call from being optimised away. */
        total += http_parse_request_head(head, len, &out, &cause);
    }
    double elapsed = now_ns() - start;

    printf("%zu-byte head, %d parses: %.1f ns/parse (%.2f GB/s), checksum %ld\n", len, ITERATIONS,
           elapsed / ITERATIONS, (double)len * ITERATIONS / elapsed, total);
    return 0;
}
