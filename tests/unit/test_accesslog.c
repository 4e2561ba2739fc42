/*
 * test_accesslog.c - access log lines on their own: JSON that parses
 * whatever the request held, invalid UTF-8 as U+FFFD, text quoting, the
 * cuts that keep a line within ACCESSLOG_LINE_MAX; and the ring end to end
 * through a file.
 */
#define _GNU_SOURCE /* memmem */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "accesslog.h"

static struct accesslog_entry
sample(void)
{
    return (struct accesslog_entry){
        .time_ms = 1700000000123,
        .request_id = "abc123",
        .trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
        .client = "127.0.0.1",
        .method = "POST",
        .method_len = 4,
        .path = "/v1/embeddings",
        .path_len = 14,
        .status = 200,
        .bytes_in = 321,
        .bytes_out = 4567,
        .duration_us = 12345,
        .model = "text-embedding-3-small",
        .inputs = 3,
        .upstream = "primary",
        .attempts = 2,
        .mode = "real",
    };
}

static json_t *
parse_line(const char *line, size_t n)
{
    json_error_t err;
    json_t *j;

    cr_assert(n > 0 && line[n - 1] == '\n', "a line ends in a newline");
    cr_assert_null(memchr(line, '\n', n - 1), "and holds no other");
    j = json_loadb(line, n - 1, JSON_ALLOW_NUL, &err);
    cr_assert_not_null(j, "not JSON (%s): %.*s", err.text, (int)n, line);
    return j;
}

Test(accesslog_json, every_field_of_a_real_answer)
{
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n = accesslog_format_line(ACCESSLOG_JSON, &e, line);
    json_t *j = parse_line(line, n);

    cr_assert_str_eq(json_string_value(json_object_get(j, "time")), "2023-11-14T22:13:20.123Z");
    cr_assert_str_eq(json_string_value(json_object_get(j, "request_id")), "abc123");
    cr_assert_str_eq(json_string_value(json_object_get(j, "trace_id")),
                     "4bf92f3577b34da6a3ce929d0e0e4736");
    cr_assert_str_eq(json_string_value(json_object_get(j, "client")), "127.0.0.1");
    cr_assert_str_eq(json_string_value(json_object_get(j, "method")), "POST");
    cr_assert_str_eq(json_string_value(json_object_get(j, "path")), "/v1/embeddings");
    cr_assert_eq(json_integer_value(json_object_get(j, "status")), 200);
    cr_assert_eq(json_integer_value(json_object_get(j, "bytes_in")), 321);
    cr_assert_eq(json_integer_value(json_object_get(j, "bytes_out")), 4567);
    cr_assert_float_eq(json_real_value(json_object_get(j, "duration_ms")), 12.345, 1e-9);
    cr_assert_str_eq(json_string_value(json_object_get(j, "model")), "text-embedding-3-small");
    cr_assert_eq(json_integer_value(json_object_get(j, "inputs")), 3);
    cr_assert_str_eq(json_string_value(json_object_get(j, "upstream")), "primary");
    cr_assert_eq(json_integer_value(json_object_get(j, "attempts")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(j, "mode")), "real");
    cr_assert_null(json_object_get(j, "reason"), "no reason on a plain answer");
    cr_assert_null(json_object_get(j, "cache"), "no cache yet");
    json_decref(j);
}

Test(accesslog_json, absent_fields_are_left_out_and_no_answer_is_499)
{
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n;
    json_t *j;

    e.trace_id = NULL;
    e.model = NULL;
    e.upstream = NULL;
    e.mode = NULL;
    e.status = 0;
    e.reason = "client_gone";
    e.duration_us = 7;
    n = accesslog_format_line(ACCESSLOG_JSON, &e, line);
    j = parse_line(line, n);
    cr_assert_null(json_object_get(j, "trace_id"));
    cr_assert_null(json_object_get(j, "model"));
    cr_assert_null(json_object_get(j, "upstream"));
    cr_assert_null(json_object_get(j, "mode"));
    cr_assert_eq(json_integer_value(json_object_get(j, "status")), 499);
    cr_assert_str_eq(json_string_value(json_object_get(j, "reason")), "client_gone");
    cr_assert_float_eq(json_real_value(json_object_get(j, "duration_ms")), 0.007, 1e-9);
    json_decref(j);
}

Test(accesslog_json, hostile_path_and_model_stay_valid_json)
{
    static const char path[] = "/v1/\"embed\\dings\"\x01\x1f\x7f\n\r\t\xff\xc3(\xed\xa0\x80zé";
    static const char model[] = "m\"}\n{\"status\":1\x80\xf4\x90\x80\x80";
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n;
    json_t *j;

    e.path = path;
    e.path_len = sizeof(path) - 1;
    e.model = model;
    n = accesslog_format_line(ACCESSLOG_JSON, &e, line);
    j = parse_line(line, n);
    cr_assert_str_eq(json_string_value(json_object_get(j, "path")),
                     "/v1/\"embed\\dings\"\x01\x1f\x7f\n\r\t\xEF\xBF\xBD\xEF\xBF\xBD("
                     "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz\xC3\xA9");
    cr_assert_str_eq(json_string_value(json_object_get(j, "model")),
                     "m\"}\n{\"status\":1\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
                     "\xEF\xBF\xBD");
    cr_assert_eq(json_integer_value(json_object_get(j, "status")), 200);
    json_decref(j);
}

Test(accesslog_json, a_nul_byte_in_the_path_is_escaped)
{
    static const char path[] = "/a\0b";
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n;

    e.path = path;
    e.path_len = 4;
    n = accesslog_format_line(ACCESSLOG_JSON, &e, line);
    cr_assert_not_null(memmem(line, n, "\"/a\\u0000b\"", 11));
    json_decref(parse_line(line, n));
}

Test(accesslog_json, a_huge_path_is_cut_to_fit_a_line_on_a_character_boundary)
{
    size_t len = 100000;
    char *path = malloc(len);
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n;
    json_t *j;
    const char *got;

    for (size_t i = 0; i < len; i += 2) { /* "é" repeated, then control bytes */
        path[i] = (char)0xC3;
        path[i + 1] = (char)0xA9;
    }
    memset(path + len / 2, 0x01, len / 2);
    e.path = path;
    e.path_len = len;
    n = accesslog_format_line(ACCESSLOG_JSON, &e, line);
    cr_assert_leq(n, ACCESSLOG_LINE_MAX);
    j = parse_line(line, n);
    got = json_string_value(json_object_get(j, "path"));
    cr_assert_not_null(got);
    cr_assert_gt(strlen(got), 1000);
    cr_assert_eq(strlen(got) % 2, 0, "cut between the two bytes of a character");
    json_decref(j);
    free(path);
}

Test(accesslog_text, plain_values_bare_and_one_key_each)
{
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n = accesslog_format_line(ACCESSLOG_TEXT, &e, line);

    line[n] = '\0';
    cr_assert_str_eq(line, "time=2023-11-14T22:13:20.123Z request_id=abc123 "
                           "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 client=127.0.0.1 "
                           "method=POST path=/v1/embeddings status=200 bytes_in=321 "
                           "bytes_out=4567 duration_ms=12.345 model=text-embedding-3-small "
                           "inputs=3 upstream=primary attempts=2 mode=real\n");
}

Test(accesslog_text, values_that_could_split_the_line_are_quoted_and_escaped)
{
    static const char path[] = "/a b=\"c\"\\\n\x01\xff";
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n;

    e.path = path;
    e.path_len = sizeof(path) - 1;
    e.model = "";
    e.reason = "attempts_exhausted";
    n = accesslog_format_line(ACCESSLOG_TEXT, &e, line);
    line[n] = '\0';
    cr_assert_not_null(strstr(line, " path=\"/a b=\\\"c\\\"\\\\\\n\\x01\xEF\xBF\xBD\" "), "%s",
                       line);
    cr_assert_not_null(strstr(line, " model=\"\" "), "%s", line);
    cr_assert_not_null(strstr(line, " reason=attempts_exhausted\n"), "%s", line);
    cr_assert_null(memchr(line, '\n', n - 1));
}

Test(accesslog_text, non_ascii_utf8_is_quoted_but_kept)
{
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    size_t n;

    e.model = "modèle";
    n = accesslog_format_line(ACCESSLOG_TEXT, &e, line);
    line[n] = '\0';
    cr_assert_not_null(strstr(line, " model=\"modèle\" "), "%s", line);
}

Test(accesslog_ring, every_queued_line_reaches_the_file_by_shutdown)
{
    char path[] = "/tmp/test_accesslog.XXXXXX";
    int fd = mkstemp(path);
    char *cause = NULL;
    struct accesslog *al;
    struct accesslog_entry e = sample();
    uint64_t lines, dropped;
    char buf[65536];
    ssize_t n;
    int count = 0;

    cr_assert_geq(fd, 0);
    al = accesslog_new(path, ACCESSLOG_JSON, 1 << 20, &cause);
    cr_assert_not_null(al, "%s", cause ? cause : "");
    cr_assert(accesslog_enabled(al));
    for (int i = 0; i < 100; i++) {
        accesslog_write(al, &e);
    }
    accesslog_counters(al, &lines, &dropped);
    cr_assert_eq(lines, 100);
    cr_assert_eq(dropped, 0);
    accesslog_free(al, 2000);
    n = read(fd, buf, sizeof(buf));
    for (ssize_t i = 0; i < n; i++) {
        count += buf[i] == '\n';
    }
    cr_assert_eq(count, 100, "every queued line is written by shutdown");
    close(fd);
    unlink(path);
}

Test(accesslog_ring, off_takes_no_line)
{
    char *cause = NULL;
    struct accesslog *al = accesslog_new("off", ACCESSLOG_JSON, 4096, &cause);

    cr_assert_not_null(al);
    cr_assert_not(accesslog_enabled(al));
    accesslog_free(al, 100);
}

Test(accesslog_ring, a_path_that_cannot_be_opened_fails_with_a_cause)
{
    char *cause = NULL;
    struct accesslog *al =
        accesslog_new("/nonexistent-dir/access.log", ACCESSLOG_JSON, 4096, &cause);

    cr_assert_null(al);
    cr_assert_not_null(cause);
    cr_assert_not_null(strstr(cause, "/nonexistent-dir/access.log"));
    free(cause);
}

Test(accesslog_ring, a_full_ring_drops_and_counts_without_waiting)
{
    char dir[] = "/tmp/test_accesslog.XXXXXX";
    char fifo[64];
    char *cause = NULL;
    struct accesslog *al;
    struct accesslog_entry e = sample();
    uint64_t lines, dropped;

    cr_assert_not_null(mkdtemp(dir));
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    /* Nobody reads the FIFO: the writer cannot open it, the ring fills. */
    al = accesslog_new(fifo, ACCESSLOG_JSON, 4096, &cause);
    cr_assert_not_null(al, "%s", cause ? cause : "");
    for (int i = 0; i < 100; i++) {
        accesslog_write(al, &e);
    }
    accesslog_counters(al, &lines, &dropped);
    cr_assert_eq(lines + dropped, 100);
    cr_assert_gt(dropped, 80, "a 4 KiB ring holds about ten lines, dropped %llu",
                 (unsigned long long)dropped);
    cr_assert_gt(lines, 0);
    accesslog_free(al, 50);
    unlink(fifo);
    rmdir(dir);
}

Test(accesslog_json, the_time_is_right_within_a_second_and_across_one)
{
    char line[ACCESSLOG_LINE_MAX];
    struct accesslog_entry e = sample();
    static const struct {
        int64_t ms;
        const char *want;
    } cases[] = {
        {1700000000123, "\"2023-11-14T22:13:20.123Z\""},
        {1700000000999, "\"2023-11-14T22:13:20.999Z\""},
        {1700000001000, "\"2023-11-14T22:13:21.000Z\""},
        {1700000000005, "\"2023-11-14T22:13:20.005Z\""},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n;
        e.time_ms = cases[i].ms;
        n = accesslog_format_line(ACCESSLOG_JSON, &e, line);
        line[n] = '\0';
        cr_assert_not_null(strstr(line, cases[i].want), "%s", line);
    }
}
