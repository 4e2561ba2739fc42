/*
 * test_http.c - request/response head parsing, body length rules, the chunked
 * decoder and hop-by-hop detection.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static struct http_request_head req;
static struct http_response_head resp;

static int
parse_req_n(const char *raw, size_t len, const char **cause)
{
    return http_parse_request_head(raw, len, &req, cause);
}

static int
parse_req(const char *raw, const char **cause)
{
    return parse_req_n(raw, strlen(raw), cause);
}

static int
parse_resp(const char *raw, const char **cause)
{
    return http_parse_response_head(raw, strlen(raw), &resp, cause);
}

static bool
span_is(const char *p, size_t n, const char *want)
{
    return p != NULL && n == strlen(want) && memcmp(p, want, n) == 0;
}

static void
expect_req_error_n(const char *raw, size_t len, int status, const char *cause_part)
{
    const char *cause = NULL;
    int rc = parse_req_n(raw, len, &cause);

    cr_expect_eq(rc, -status, "request %.*s: want %d, got %d (%s)", (int)(len < 200 ? len : 200),
                 raw, -status, rc, cause ? cause : "no cause");
    cr_expect_not_null(cause, "an error carries a cause");
    if (cause != NULL && cause_part != NULL) {
        cr_expect(strstr(cause, cause_part) != NULL, "cause '%s' should mention '%s'", cause,
                  cause_part);
    }
}

static void
expect_req_error(const char *raw, int status, const char *cause_part)
{
    expect_req_error_n(raw, strlen(raw), status, cause_part);
}

static void
expect_resp_error(const char *raw, const char *cause_part)
{
    const char *cause = NULL;
    int rc = parse_resp(raw, &cause);

    cr_expect_eq(rc, -502, "response %s: want -502, got %d", raw, rc);
    cr_expect_not_null(cause);
    if (cause != NULL && cause_part != NULL) {
        cr_expect(strstr(cause, cause_part) != NULL, "cause '%s' should mention '%s'", cause,
                  cause_part);
    }
}

/* ---- valid requests ---- */

Test(http_request, get_parses_method_target_version_and_headers)
{
    const char *raw = "GET /health HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\n\r\n";
    const char *cause = "unset";
    int rc = parse_req(raw, &cause);

    cr_assert_eq(rc, (int)strlen(raw));
    cr_expect_null(cause);
    cr_expect_eq(req.method, HTTP_GET);
    cr_expect(span_is(req.method_str, req.method_len, "GET"));
    cr_expect(span_is(req.target, req.target_len, "/health"));
    cr_expect(span_is(req.path, req.path_len, "/health"));
    cr_expect_null(req.query);
    cr_expect_eq(req.version_minor, 1);
    cr_expect_eq(req.nheaders, 2);
    cr_expect(span_is(req.headers[0].name, req.headers[0].name_len, "Host"));
    cr_expect(span_is(req.headers[0].value, req.headers[0].value_len, "localhost:8080"));
    cr_expect(span_is(req.headers[1].name, req.headers[1].name_len, "Accept"));
    cr_expect(span_is(req.headers[1].value, req.headers[1].value_len, "*/*"));
    cr_expect_eq(req.host_index, 0);
    cr_expect_eq(req.content_length, -1);
    cr_expect_not(req.chunked);
    cr_expect_not(req.has_transfer_encoding);
    cr_expect(req.keep_alive);
    cr_expect_not(req.expect_continue);
    cr_expect_eq(req.head_len, strlen(raw));
}

Test(http_request, header_spans_point_into_the_callers_buffer)
{
    char raw[] = "GET / HTTP/1.1\r\nHost: a\r\nX-Id: 42\r\n\r\n";
    int rc = parse_req(raw, NULL);

    cr_assert_gt(rc, 0);
    for (int i = 0; i < req.nheaders; i++) {
        cr_expect(req.headers[i].name >= raw && req.headers[i].name < raw + sizeof(raw));
        cr_expect(req.headers[i].value >= raw && req.headers[i].value < raw + sizeof(raw));
    }
    cr_expect_eq(req.target, raw + 4);
}

Test(http_request, post_with_content_length_returns_head_length_before_body)
{
    const char *head = "POST /v1/embeddings HTTP/1.1\r\nHost: a\r\nContent-Type: "
                       "application/json\r\n"
                       "Content-Length: 17\r\n\r\n";
    char raw[512];
    snprintf(raw, sizeof(raw), "%s{\"input\":\"hello\"}", head);

    int rc = parse_req(raw, NULL);

    cr_assert_eq(rc, (int)strlen(head));
    cr_expect_eq(req.method, HTTP_POST);
    cr_expect_eq(req.content_length, 17);
    cr_expect_not(req.chunked);
}

Test(http_request, content_length_zero_and_eighteen_digits_are_accepted)
{
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", NULL), 0);
    cr_expect_eq(req.content_length, 0);
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                           "999999999999999999\r\n\r\n",
                           NULL),
                 0);
    cr_expect_eq(req.content_length, INT64_C(999999999999999999));
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", NULL), 0);
    cr_expect_eq(req.content_length, 7);
}

Test(http_request, chunked_transfer_encoding_sets_chunked)
{
    int rc = parse_req("POST /v1/embeddings HTTP/1.1\r\nHost: "
                       "a\r\nTransfer-Encoding: chunked\r\n\r\n",
                       NULL);

    cr_assert_gt(rc, 0);
    cr_expect(req.chunked);
    cr_expect(req.has_transfer_encoding);
    cr_expect_eq(req.content_length, -1);
}

Test(http_request, transfer_coding_names_are_case_insensitive)
{
    cr_assert_gt(
        parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n", NULL), 0);
    cr_expect(req.chunked);
}

Test(http_request, codings_other_than_chunked_are_501)
{
    /* Forwarded de-chunked, a gzip body would arrive as gzip bytes labelled JSON. */
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                     501, "other than chunked");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: deflate, chunked\r\n\r\n",
                     501, "other than chunked");
}

Test(http_request, transfer_encoding_lines_combine_into_one_list)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n",
                     400, "chunked applied twice");
}

Test(http_request, http11_defaults_to_keep_alive_and_close_token_ends_it)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_expect(req.keep_alive);
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", NULL), 0);
    cr_expect_not(req.keep_alive);
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", NULL), 0);
    cr_expect_not(req.keep_alive);
}

Test(http_request, http10_defaults_to_close_unless_keep_alive_token)
{
    cr_assert_gt(parse_req("GET / HTTP/1.0\r\n\r\n", NULL), 0);
    cr_expect_eq(req.version_minor, 0);
    cr_expect_not(req.keep_alive);
    cr_expect_eq(req.host_index, -1);
    cr_assert_gt(parse_req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", NULL), 0);
    cr_expect(req.keep_alive);
    cr_assert_gt(parse_req("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", NULL), 0);
    cr_expect_not(req.keep_alive, "close wins over keep-alive");
}

Test(http_request, connection_header_is_a_comma_list)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, , close\r\n"
                           "Upgrade: websocket\r\n\r\n",
                           NULL),
                 0);
    cr_expect(req.connection_upgrade);
    cr_expect_not(req.keep_alive);
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: x-trace\r\n"
                           "Connection: close\r\n\r\n",
                           NULL),
                 0);
    cr_expect_not(req.keep_alive, "close in a second Connection line counts");
    cr_expect_not(req.connection_upgrade);
}

Test(http_request, header_values_are_trimmed_of_ows_only_at_the_ends)
{
    int rc = parse_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: \t  spaced  value \t \r\nX-B:\r\n"
                       "X-C:   \r\nX-D:tight\r\n\r\n",
                       NULL);

    cr_assert_gt(rc, 0);
    cr_assert_eq(req.nheaders, 5);
    cr_expect(span_is(req.headers[1].value, req.headers[1].value_len, "spaced  value"));
    cr_expect_eq(req.headers[2].value_len, 0);
    cr_expect_eq(req.headers[3].value_len, 0);
    cr_expect(span_is(req.headers[4].value, req.headers[4].value_len, "tight"));
}

Test(http_request, obs_text_and_htab_are_allowed_in_values)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\tbar\r\n\r\n", NULL),
                 0);
    cr_expect(span_is(req.headers[1].value, req.headers[1].value_len, "caf\xc3\xa9\tbar"));
}

Test(http_request, query_is_split_from_path)
{
    cr_assert_gt(parse_req("GET /v1/models?limit=5&x=%20y HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_expect(span_is(req.target, req.target_len, "/v1/models?limit=5&x=%20y"));
    cr_expect(span_is(req.path, req.path_len, "/v1/models"));
    cr_expect(span_is(req.query, req.query_len, "limit=5&x=%20y"));

    cr_assert_gt(parse_req("GET /? HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_expect(span_is(req.path, req.path_len, "/"));
    cr_expect_not_null(req.query);
    cr_expect_eq(req.query_len, 0);

    cr_assert_gt(parse_req("GET /a?b?c HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_expect(span_is(req.path, req.path_len, "/a"));
    cr_expect(span_is(req.query, req.query_len, "b?c"));
}

Test(http_request, leading_empty_lines_are_skipped_and_counted_in_head_length)
{
    const char *raw = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";

    cr_assert_eq(parse_req(raw, NULL), (int)strlen(raw));
    cr_expect_eq(req.method, HTTP_GET);
    cr_expect_eq(req.method_str, raw + 4);
}

Test(http_request, too_many_leading_empty_lines_are_refused)
{
    char raw[256] = "";
    for (int i = 0; i <= HTTP_MAX_LEADING_EMPTY_LINES; i++) {
        strcat(raw, "\r\n");
    }
    strcat(raw, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    expect_req_error(raw, 400, "empty lines");
}

Test(http_request, expect_100_continue_is_detected_case_insensitively_for_http11)
{
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                           "Expect: 100-Continue\r\n\r\n",
                           NULL),
                 0);
    cr_expect(req.expect_continue);
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n", NULL),
                 0);
    cr_expect_not(req.expect_continue);
    cr_assert_gt(parse_req("POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: "
                           "100-continue\r\n\r\n",
                           NULL),
                 0);
    cr_expect_not(req.expect_continue, "RFC 9110 10.1.1: ignore 100-continue from HTTP/1.0");
}

Test(http_request, methods_are_classified_case_sensitively)
{
    static const struct {
        const char *name;
        enum http_method method;
    } cases[] = {
        {"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},      {"POST", HTTP_POST},
        {"PUT", HTTP_PUT},         {"DELETE", HTTP_DELETE},  {"PATCH", HTTP_PATCH},
        {"OPTIONS", HTTP_OPTIONS}, {"TRACE", HTTP_TRACE},    {"get", HTTP_OTHER},
        {"PURGE", HTTP_OTHER},     {"M-SEARCH", HTTP_OTHER},
    };
    char raw[128];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(raw, sizeof(raw), "%s / HTTP/1.1\r\nHost: a\r\n\r\n", cases[i].name);
        cr_assert_gt(parse_req(raw, NULL), 0, "%s", cases[i].name);
        cr_expect_eq(req.method, cases[i].method, "%s", cases[i].name);
        cr_expect(span_is(req.method_str, req.method_len, cases[i].name));
    }
}

Test(http_request, asterisk_form_is_accepted_with_options)
{
    cr_assert_gt(parse_req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_expect(span_is(req.target, req.target_len, "*"));
}

Test(http_request, exactly_max_headers_are_accepted)
{
    char raw[8192] = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 1; i < HTTP_MAX_HEADERS; i++) {
        char line[32];
        snprintf(line, sizeof(line), "X-%d: v\r\n", i);
        strcat(raw, line);
    }
    strcat(raw, "\r\n");
    cr_assert_eq(parse_req(raw, NULL), (int)strlen(raw));
    cr_expect_eq(req.nheaders, HTTP_MAX_HEADERS);
}

Test(http_request, request_line_of_exactly_the_limit_is_accepted)
{
    size_t line_len = HTTP_MAX_REQUEST_LINE;
    char *raw = malloc(line_len + 64);
    cr_assert_not_null(raw);
    memcpy(raw, "GET /", 5);
    size_t target_end = line_len - strlen(" HTTP/1.1");
    memset(raw + 5, 'a', target_end - 5);
    strcpy(raw + target_end, " HTTP/1.1\r\nHost: a\r\n\r\n");

    cr_expect_eq(parse_req(raw, NULL), (int)strlen(raw));
    cr_expect_eq(req.target_len, target_end - 4);
    free(raw);
}

Test(http_request, empty_host_is_allowed_and_ipv6_literal_host_is_valid)
{
    cr_expect_gt(parse_req("GET / HTTP/1.1\r\nHost:\r\n\r\n", NULL), 0);
    cr_expect_gt(parse_req("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", NULL), 0);
}

/* ---- incremental feeding ---- */

static void
feed_one_byte_at_a_time(const char *raw)
{
    size_t len = strlen(raw);

    /* Each prefix lives in an allocation of exactly its size, so ASan catches a read past len. */
    for (size_t n = 0; n < len; n++) {
        char *copy = malloc(n);
        cr_assert(n == 0 || copy != NULL);
        memcpy(copy, raw, n);
        const char *cause = "unset";
        int rc = http_parse_request_head(copy, n, &req, &cause);
        free(copy);
        cr_assert_eq(rc, 0, "prefix of %zu bytes of %zu: got %d (%s)", n, len, rc,
                     cause ? cause : "");
        cr_expect_null(cause);
    }
    char *copy = malloc(len);
    cr_assert_not_null(copy);
    memcpy(copy, raw, len);
    cr_assert_eq(http_parse_request_head(copy, len, &req, NULL), (int)len);
    free(copy);
}

Test(http_incremental, get_fed_byte_by_byte_needs_more_until_complete)
{
    feed_one_byte_at_a_time("GET /health?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n");
}

Test(http_incremental, post_fed_byte_by_byte_needs_more_until_complete)
{
    feed_one_byte_at_a_time("\r\nPOST /v1/embeddings HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
                            "Transfer-Encoding-X: y\r\nX-E:\r\n\r\n");
}

Test(http_incremental, chunked_http10_and_options_fed_byte_by_byte)
{
    feed_one_byte_at_a_time(
        "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    cr_expect(req.chunked);
    feed_one_byte_at_a_time("GET / HTTP/1.0\r\n\r\n");
    feed_one_byte_at_a_time("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
}

/* Every prefix that ends before the bad byte is valid so far; every prefix with it fails. */
static void
error_appears_with_offending_byte(const char *raw, size_t bad_index, int status)
{
    size_t len = strlen(raw);

    for (size_t n = 0; n <= len; n++) {
        int rc = parse_req_n(raw, n, NULL);
        if (n <= bad_index) {
            cr_expect_eq(rc, 0, "%zu bytes: before the bad byte, got %d", n, rc);
        } else {
            cr_expect_eq(rc, -status, "%zu bytes: with the bad byte, got %d", n, rc);
        }
    }
}

Test(http_incremental, bare_lf_is_reported_as_soon_as_it_arrives)
{
    const char *raw = "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
    error_appears_with_offending_byte(raw, strchr(raw, 'a') - raw + 1, 400);
}

Test(http_incremental, client_sending_only_newlines_is_refused_at_once)
{
    expect_req_error("\n\n", 400, "bare LF");
    expect_req_error("\n", 400, "bare LF");
    expect_req_error("\r\n\n", 400, "bare LF");
}

Test(http_incremental, bad_header_name_is_reported_before_the_head_completes)
{
    const char *raw = "GET / HTTP/1.1\r\nHo st: a\r\n\r\n";
    error_appears_with_offending_byte(raw, strstr(raw, "Ho st") - raw + 2, 400);
}

Test(http_incremental, absolute_form_is_reported_when_the_target_ends)
{
    const char *raw = "GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n";
    error_appears_with_offending_byte(raw, strlen("GET http://evil/"), 400);
}

Test(http_incremental, over_long_request_line_is_reported_without_a_crlf)
{
    size_t len = HTTP_MAX_REQUEST_LINE + 1;
    char *raw = malloc(len);
    cr_assert_not_null(raw);
    memcpy(raw, "GET /", 5);
    memset(raw + 5, 'a', len - 5);

    const char *cause = NULL;
    cr_expect_eq(parse_req_n(raw, len - 1, NULL), 0, "8192 bytes could still be a valid line");
    cr_expect_eq(parse_req_n(raw, len, &cause), -414);
    cr_expect_not_null(cause);
    free(raw);
}

Test(http_incremental, request_line_one_over_the_limit_is_refused)
{
    size_t line_len = HTTP_MAX_REQUEST_LINE + 1;
    char *raw = malloc(line_len + 64);
    cr_assert_not_null(raw);
    memcpy(raw, "GET /", 5);
    size_t target_end = line_len - strlen(" HTTP/1.1");
    memset(raw + 5, 'a', target_end - 5);
    strcpy(raw + target_end, " HTTP/1.1\r\nHost: a\r\n\r\n");

    expect_req_error(raw, 414, "too long");
    free(raw);
}

Test(http_incremental, too_many_headers_reported_when_the_extra_header_starts)
{
    char raw[8192] = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 1; i < HTTP_MAX_HEADERS; i++) {
        char line[32];
        snprintf(line, sizeof(line), "X-%d: v\r\n", i);
        strcat(raw, line);
    }
    cr_expect_eq(parse_req(raw, NULL), 0);
    strcat(raw, "X");
    expect_req_error(raw, 431, "too many headers");
}

Test(http_incremental, head_larger_than_the_limit_is_refused)
{
    char *raw = malloc(HTTP_MAX_HEAD_SIZE + 4096);
    cr_assert_not_null(raw);
    size_t pos = (size_t)sprintf(raw, "GET / HTTP/1.1\r\nHost: a\r\n");
    while (pos <= HTTP_MAX_HEAD_SIZE) {
        pos += (size_t)sprintf(raw + pos, "X-Big: ");
        memset(raw + pos, 'v', 3000);
        pos += 3000;
        pos += (size_t)sprintf(raw + pos, "\r\n");
    }

    expect_req_error_n(raw, pos, 431, "too large");
    free(raw);
}

/* ---- request errors ---- */

Test(http_request_error, bare_lf_anywhere_is_refused)
{
    expect_req_error("GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "bare LF");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "bare LF");
    expect_req_error("GET /\n HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare LF");
    expect_req_error("GET\n/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare LF");
    expect_req_error("GET / HTTP/1.1\r\nHost\n: a\r\n\r\n", 400, "bare LF");
}

Test(http_request_error, bare_cr_anywhere_is_refused)
{
    expect_req_error("GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "bare CR");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "bare CR");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\n\rX", 400, "bare CR");
    expect_req_error("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare CR");
    expect_req_error("GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n", 400, "bare CR");
}

Test(http_request_error, method_must_be_a_token)
{
    expect_req_error("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method");
    expect_req_error(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method");
    expect_req_error("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method");
}

Test(http_request_error, absolute_form_target_is_refused)
{
    expect_req_error("GET http://example.com/v1/embeddings HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                     "absolute-form target refused");
    expect_req_error("GET http://example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                     "absolute-form target refused");
}

Test(http_request_error, connect_and_authority_form_are_refused_with_405)
{
    expect_req_error("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405,
                     "CONNECT refused");
    expect_req_error("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 405, "CONNECT refused");
    expect_req_error("GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405, "CONNECT refused");
    expect_req_error("GET [::1]:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405, "CONNECT refused");
}

Test(http_request_error, asterisk_form_only_with_options)
{
    expect_req_error("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk");
    expect_req_error("OPTIONS ** HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request-target");
}

Test(http_request_error, target_must_be_origin_form_of_visible_ascii)
{
    expect_req_error("GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request-target");
    expect_req_error("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request-target");
    expect_req_error("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request-target");
    expect_req_error("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request-target");
    expect_req_error("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request-target");
    expect_req_error_n("GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", 31, 400, "request-target");
}

Test(http_request_error, version_must_be_http10_or_http11)
{
    expect_req_error("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "version");
    expect_req_error("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, "version");
    expect_req_error("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "version");
    expect_req_error("GET / HTTPS/1.1\r\nHost: a\r\n\r\n", 400, "version");
    expect_req_error("GET / http/1.1\r\nHost: a\r\n\r\n", 400, "version");
    expect_req_error("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "version");
    expect_req_error("GET / HTTP/11\r\nHost: a\r\n\r\n", 400, "version");
    expect_req_error("GET / HTTP/1\r\nHost: a\r\n\r\n", 400, "version");
    expect_req_error("GET /\r\n\r\n", 400, "version");
}

Test(http_request_error, exactly_one_space_between_request_line_parts)
{
    expect_req_error("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "whitespace");
    expect_req_error("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400, "version");
    expect_req_error("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "whitespace");
}

Test(http_request_error, header_name_must_be_a_token_followed_directly_by_colon)
{
    expect_req_error("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "whitespace before colon");
    expect_req_error("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "whitespace before colon");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", 400, "header name");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400, "empty header name");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "colon");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n", 400, "header name");
}

Test(http_request_error, obsolete_line_folding_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, "folding");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400, "folding");
    expect_req_error("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "folding");
}

Test(http_request_error, control_characters_in_values_are_refused)
{
    static const char head[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: b";
    static const char tail[] = "c\r\n\r\n";
    static const unsigned char bad[] = {0x00, 0x01, 0x08, 0x0b, 0x0c, 0x1b, 0x1f, 0x7f};

    for (size_t i = 0; i < sizeof(bad); i++) {
        char raw[128];
        size_t n = sizeof(head) - 1;
        memcpy(raw, head, n);
        raw[n++] = (char)bad[i];
        memcpy(raw + n, tail, sizeof(tail) - 1);
        n += sizeof(tail) - 1;
        expect_req_error_n(raw, n, 400, bad[i] == 0 ? "NUL" : "control character");
    }
}

Test(http_request_error, content_length_must_be_plain_digits)
{
    static const char *const bad[] = {"+5", "-1", "5a", "0x10", " ", "5 5", "1.0", "\xc2\xb5"};
    char raw[128];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(raw, sizeof(raw), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n",
                 bad[i]);
        expect_req_error(raw, 400, "Content-Length");
    }
}

Test(http_request_error, content_length_over_eighteen_digits_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                     "1000000000000000000\r\n\r\n",
                     400, "Content-Length");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                     "99999999999999999999999\r\n\r\n",
                     400, "Content-Length");
}

Test(http_request_error, content_length_list_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400,
                     "Content-Length list");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n", 400,
                     "Content-Length list");
}

Test(http_request_error, duplicate_content_length_is_refused_even_if_equal)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                     "5\r\ncontent-length: 5\r\n\r\n",
                     400, "duplicate Content-Length");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                     "5\r\nContent-Length: 6\r\n\r\n",
                     400, "duplicate Content-Length");
}

Test(http_request_error, transfer_encoding_with_content_length_is_refused_in_either_order)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n",
                     400, "Transfer-Encoding with Content-Length");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Length: 5\r\n\r\n",
                     400, "Transfer-Encoding with Content-Length");
}

Test(http_request_error, chunked_must_be_the_final_coding)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501,
                     "other than chunked");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
                     "other than chunked");
}

Test(http_request_error, unknown_transfer_coding_is_501)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", 501, "coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n", 501,
                     "coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501,
                     "coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 501,
                     "coding");
}

Test(http_request_error, malformed_or_empty_transfer_encoding_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400,
                     "Transfer-Encoding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked "
                     "chunked\r\n\r\n",
                     400, "Transfer-Encoding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400,
                     "Transfer-Encoding");
}

Test(http_request_error, chunked_applied_twice_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, "
                     "chunked\r\n\r\n",
                     400, "twice");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n",
                     400, "twice");
}

Test(http_request_error, transfer_encoding_in_http10_request_is_refused)
{
    expect_req_error("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0");
}

Test(http_request_error, more_than_max_headers_is_431)
{
    char raw[8192] = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 0; i < HTTP_MAX_HEADERS; i++) {
        char line[32];
        snprintf(line, sizeof(line), "X-%d: v\r\n", i);
        strcat(raw, line);
    }
    strcat(raw, "\r\n");
    expect_req_error(raw, 431, "too many headers");
}

Test(http_request_error, http11_needs_exactly_one_host)
{
    expect_req_error("GET / HTTP/1.1\r\n\r\n", 400, "missing Host");
    expect_req_error("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "missing Host");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n", 400, "duplicate Host");
    expect_req_error("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, "duplicate Host");
}

Test(http_request_error, host_value_must_look_like_host_and_port)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "Host");
    expect_req_error("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400, "Host");
    expect_req_error("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "Host");
}

Test(http_request_error, connection_tokens_must_be_tokens)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nConnection: close;x\r\n\r\n", 400, "Connection");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nConnection: \"close\"\r\n\r\n", 400,
                     "Connection");
}

Test(http_request_error, cause_is_cleared_on_success)
{
    const char *cause = "stale";

    cr_assert_eq(parse_req("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &cause), 27);
    cr_expect_null(cause);
    cause = "stale";
    cr_assert_eq(parse_req("GET / HTTP/1.1\r\nHost: a\r\n", &cause), 0);
    cr_expect_null(cause);
}

/* ---- responses ---- */

Test(http_response, status_reason_and_content_length)
{
    const char *head = "HTTP/1.1 200 OK\r\nContent-Type: "
                       "application/json\r\nContent-Length: 5\r\n\r\n";
    char raw[256];
    snprintf(raw, sizeof(raw), "%shello", head);

    cr_assert_eq(parse_resp(raw, NULL), (int)strlen(head));
    cr_expect_eq(resp.status, 200);
    cr_expect_eq(resp.version_minor, 1);
    cr_expect(span_is(resp.reason, resp.reason_len, "OK"));
    cr_expect_eq(resp.nheaders, 2);
    cr_expect_eq(resp.content_length, 5);
    cr_expect_not(resp.chunked);
    cr_expect(resp.keep_alive);
    cr_expect_eq(resp.head_len, strlen(head));
    cr_expect_eq(http_response_body_kind(&resp, false), HTTP_BODY_LENGTH);
}

Test(http_response, reason_may_contain_spaces_or_be_empty)
{
    cr_assert_gt(parse_resp("HTTP/1.1 404 Not Found Here\r\n\r\n", NULL), 0);
    cr_expect(span_is(resp.reason, resp.reason_len, "Not Found Here"));
    cr_assert_gt(parse_resp("HTTP/1.1 204 \r\n\r\n", NULL), 0);
    cr_expect_eq(resp.status, 204);
    cr_expect_eq(resp.reason_len, 0);
    cr_assert_gt(parse_resp("HTTP/1.1 204\r\n\r\n", NULL), 0);
    cr_expect_eq(resp.reason_len, 0);
}

Test(http_response, http10_defaults_to_close_unless_keep_alive)
{
    cr_assert_gt(parse_resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", NULL), 0);
    cr_expect_eq(resp.version_minor, 0);
    cr_expect_not(resp.keep_alive);
    cr_assert_gt(parse_resp("HTTP/1.0 200 OK\r\nConnection: "
                            "keep-alive\r\nContent-Length: 0\r\n\r\n",
                            NULL),
                 0);
    cr_expect(resp.keep_alive);
    cr_assert_gt(parse_resp("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", NULL), 0);
    cr_expect_not(resp.keep_alive);
}

Test(http_response, chunked_response_is_chunked_body)
{
    cr_assert_gt(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", NULL), 0);
    cr_expect(resp.chunked);
    cr_expect(resp.keep_alive);
    cr_expect_eq(http_response_body_kind(&resp, false), HTTP_BODY_CHUNKED);
}

Test(http_response, codings_other_than_chunked_are_malformed)
{
    const char *cause = NULL;

    /* Relayed, gzip bytes would reach the caller labelled JSON and count as a real 200. */
    cr_expect_eq(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &cause), -502);
    cr_expect_eq(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", &cause),
                 -502);
    cr_expect(cause != NULL && strstr(cause, "other than chunked") != NULL);
}

Test(http_response, body_kind_follows_rfc9112_section_6_3)
{
    cr_assert_gt(parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", NULL), 0);
    cr_expect_eq(http_response_body_kind(&resp, true), HTTP_BODY_NONE, "response to HEAD");

    cr_assert_gt(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", NULL), 0);
    cr_expect_eq(http_response_body_kind(&resp, true), HTTP_BODY_NONE, "chunked answer to HEAD");

    static const int no_body[] = {100, 101, 103, 199, 204, 304};
    for (size_t i = 0; i < sizeof(no_body) / sizeof(no_body[0]); i++) {
        char raw[64];
        snprintf(raw, sizeof(raw), "HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n", no_body[i]);
        cr_assert_gt(parse_resp(raw, NULL), 0);
        cr_expect_eq(http_response_body_kind(&resp, false), HTTP_BODY_NONE, "%d", no_body[i]);
    }

    cr_assert_gt(parse_resp("HTTP/1.1 500 Oops\r\n\r\n", NULL), 0);
    cr_expect_eq(http_response_body_kind(&resp, false), HTTP_BODY_UNTIL_CLOSE);

    cr_assert_gt(parse_resp("HTTP/1.1 205 Reset\r\nContent-Length: 0\r\n\r\n", NULL), 0);
    cr_expect_eq(http_response_body_kind(&resp, false), HTTP_BODY_LENGTH);
}

Test(http_response, fed_byte_by_byte_needs_more_until_complete)
{
    const char *raw = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
                      "2\r\nContent-Length: 0\r\n\r\n";
    size_t len = strlen(raw);
    char *copy = malloc(len);
    cr_assert_not_null(copy);

    for (size_t n = 0; n < len; n++) {
        char *prefix = malloc(n);
        cr_assert(n == 0 || prefix != NULL);
        memcpy(prefix, raw, n);
        int rc = http_parse_response_head(prefix, n, &resp, NULL);
        free(prefix);
        cr_assert_eq(rc, 0, "%zu bytes", n);
    }
    memcpy(copy, raw, len);
    cr_expect_eq(http_parse_response_head(copy, len, &resp, NULL), (int)len);
    cr_expect_eq(resp.status, 503);
    free(copy);
}

Test(http_response_error, status_must_be_three_digits_between_100_and_599)
{
    expect_resp_error("HTTP/1.1 20 OK\r\n\r\n", "status");
    expect_resp_error("HTTP/1.1 2000 OK\r\n\r\n", "status");
    expect_resp_error("HTTP/1.1 099 Low\r\n\r\n", "status");
    expect_resp_error("HTTP/1.1 600 High\r\n\r\n", "status");
    expect_resp_error("HTTP/1.1 abc OK\r\n\r\n", "status");
    expect_resp_error("HTTP/1.1 -20 OK\r\n\r\n", "status");
    expect_resp_error("HTTP/1.1  200 OK\r\n\r\n", "status");
}

Test(http_response_error, version_must_be_http10_or_http11)
{
    expect_resp_error("HTTP/2 200 OK\r\n\r\n", "version");
    expect_resp_error("HTTP/2.0 200 OK\r\n\r\n", "version");
    expect_resp_error("ICY 200 OK\r\n\r\n", "version");
}

Test(http_response_error, line_and_header_rules_match_requests)
{
    expect_resp_error("HTTP/1.1 200 OK\n\r\n", "bare LF");
    expect_resp_error("HTTP/1.1 200 OK\r\nX: a\n\r\n", "bare LF");
    expect_resp_error("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "bare CR");
    expect_resp_error("HTTP/1.1 200 O\x01K\r\n\r\n", "reason");
    expect_resp_error("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "whitespace before colon");
    expect_resp_error("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "folding");
    expect_resp_error("HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n", "control character");
}

Test(http_response_error, framing_conflicts_are_502)
{
    expect_resp_error("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                      "duplicate Content-Length");
    expect_resp_error("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", "Content-Length list");
    expect_resp_error("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "Content-Length");
    expect_resp_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                      "chunked\r\nContent-Length: 5\r\n\r\n",
                      "Transfer-Encoding with Content-Length");
    expect_resp_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: foo\r\n\r\n", "coding");
    expect_resp_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "twice");
    expect_resp_error("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0");
}

Test(http_response_error, too_many_headers_is_502)
{
    char raw[8192] = "HTTP/1.1 200 OK\r\n";
    for (int i = 0; i <= HTTP_MAX_HEADERS; i++) {
        char line[32];
        snprintf(line, sizeof(line), "X-%d: v\r\n", i);
        strcat(raw, line);
    }
    strcat(raw, "\r\n");
    expect_resp_error(raw, "too many headers");
}

/* ---- chunked decoding ---- */

struct decoded {
    char payload[8192];
    size_t payload_len;
    size_t consumed;
    int rc;
};

/*
 * Feeds data to a decoder in two pieces split at split, looping until each
 * piece is used up or the decoder stops, and checks the step contract along the
 * way.
 */
static void
decode_split(const char *data, size_t len, size_t split, struct decoded *d)
{
    struct http_chunked c;
    size_t bounds[2] = {split, len};
    size_t pos = 0;

    http_chunked_init(&c);
    memset(d, 0, sizeof(*d));
    for (int piece = 0; piece < 2; piece++) {
        while (pos < bounds[piece]) {
            size_t consumed = 999, payload = 999;
            d->rc = http_chunked_step(&c, data + pos, bounds[piece] - pos, &consumed, &payload);
            if (d->rc < 0) {
                return;
            }
            cr_assert(payload == 0 || payload == consumed, "payload %zu consumed %zu", payload,
                      consumed);
            cr_assert_leq(consumed, bounds[piece] - pos);
            memcpy(d->payload + d->payload_len, data + pos, payload);
            d->payload_len += payload;
            pos += consumed;
            d->consumed = pos;
            if (d->rc == 1) {
                return;
            }
            cr_assert_gt(consumed, 0, "progress while input remains");
        }
    }
}

static void
decode_bytewise(const char *data, size_t len, struct decoded *d)
{
    struct http_chunked c;

    http_chunked_init(&c);
    memset(d, 0, sizeof(*d));
    for (size_t pos = 0; pos < len; pos++) {
        size_t consumed, payload;
        d->rc = http_chunked_step(&c, data + pos, 1, &consumed, &payload);
        if (d->rc < 0) {
            return;
        }
        cr_assert_eq(consumed, 1);
        if (payload == 1) {
            d->payload[d->payload_len++] = data[pos];
        }
        d->consumed = pos + 1;
        if (d->rc == 1) {
            return;
        }
    }
}

static void
expect_decodes_to(const char *data, const char *payload)
{
    size_t len = strlen(data);
    struct decoded d;

    for (size_t split = 0; split <= len; split++) {
        decode_split(data, len, split, &d);
        cr_assert_eq(d.rc, 1, "split at %zu: rc %d", split, d.rc);
        cr_expect_eq(d.consumed, len, "split at %zu", split);
        cr_expect(span_is(d.payload, d.payload_len, payload), "split at %zu: payload %.*s", split,
                  (int)d.payload_len, d.payload);
    }
    decode_bytewise(data, len, &d);
    cr_assert_eq(d.rc, 1);
    cr_expect_eq(d.consumed, len);
    cr_expect(span_is(d.payload, d.payload_len, payload));
}

static void
expect_chunked_error(const char *data, size_t len)
{
    struct decoded d;

    decode_split(data, len, len, &d);
    cr_expect_eq(d.rc, -1, "%.*s: want -1, got %d", (int)len, data, d.rc);
    decode_bytewise(data, len, &d);
    cr_expect_eq(d.rc, -1, "bytewise %.*s: want -1, got %d", (int)len, data, d.rc);
}

#define EXPECT_CHUNKED_ERROR(lit) expect_chunked_error((lit), sizeof(lit) - 1)

Test(http_chunked, payload_is_identical_for_every_split_point)
{
    expect_decodes_to("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
    expect_decodes_to("1\r\na\r\n1\r\nb\r\n0\r\n\r\n", "ab");
    expect_decodes_to("0\r\n\r\n", "");
}

Test(http_chunked, hex_sizes_are_case_insensitive_and_may_have_leading_zeros)
{
    expect_decodes_to("A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0000\r\n\r\n",
                      "0123456789abcdefghijk");
    expect_decodes_to("0005\r\nhello\r\n0\r\n\r\n", "hello");
}

Test(http_chunked, payload_may_contain_crlf_and_binary)
{
    static const char data[] = "6\r\n\r\n\0\xff\n\r\r\n0\r\n\r\n";
    struct decoded d;

    decode_split(data, sizeof(data) - 1, 4, &d);
    cr_assert_eq(d.rc, 1);
    cr_expect_eq(d.payload_len, 6);
    cr_expect(memcmp(d.payload, "\r\n\0\xff\n\r", 6) == 0);
}

Test(http_chunked, extensions_are_accepted_and_skipped)
{
    expect_decodes_to("5;name=value\r\nhello\r\n0;last\r\n\r\n", "hello");
    expect_decodes_to("5 ; a = b ; c=\"q;\\\"x\" ;d\r\nhello\r\n0\r\n\r\n", "hello");
    expect_decodes_to("5;a;b;c=1\r\nhello\r\n0\r\n\r\n", "hello");
    expect_decodes_to("5 \t\r\nhello\r\n0\r\n\r\n", "hello");
}

Test(http_chunked, trailers_are_accepted_and_skipped)
{
    expect_decodes_to("3\r\nabc\r\n0\r\nX-Checksum: 1234\r\nX-Empty:\r\nY:  "
                      "spaced value \r\n\r\n",
                      "abc");
}

Test(http_chunked, bytes_after_the_message_are_not_consumed)
{
    static const char data[] = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    struct decoded d;

    decode_split(data, sizeof(data) - 1, sizeof(data) - 1, &d);
    cr_assert_eq(d.rc, 1);
    cr_expect_eq(d.consumed, strlen("3\r\nabc\r\n0\r\n\r\n"));
    cr_expect(span_is(d.payload, d.payload_len, "abc"));
}

Test(http_chunked, finished_decoder_keeps_returning_done_without_consuming)
{
    struct http_chunked c;
    size_t consumed, payload;

    http_chunked_init(&c);
    cr_assert_eq(http_chunked_step(&c, "0\r\n\r\n", 5, &consumed, &payload), 1);
    cr_expect_eq(consumed, 5);
    cr_expect_eq(http_chunked_step(&c, "more", 4, &consumed, &payload), 1);
    cr_expect_eq(consumed, 0);
    cr_expect_eq(payload, 0);
}

Test(http_chunked, errors_are_sticky)
{
    struct http_chunked c;
    size_t consumed, payload;

    http_chunked_init(&c);
    cr_assert_eq(http_chunked_step(&c, "z\r\n", 3, &consumed, &payload), -1);
    cr_expect_eq(http_chunked_step(&c, "0\r\n\r\n", 5, &consumed, &payload), -1);
    cr_expect_eq(consumed, 0);
}

Test(http_chunked, payload_steps_report_payload_and_framing_steps_report_none)
{
    struct http_chunked c;
    size_t consumed, payload;
    const char *data = "4\r\nwxyz\r\n0\r\n\r\n";

    http_chunked_init(&c);
    cr_assert_eq(http_chunked_step(&c, data, strlen(data), &consumed, &payload), 0);
    cr_expect_eq(consumed, 3);
    cr_expect_eq(payload, 0);
    cr_assert_eq(http_chunked_step(&c, data + 3, strlen(data) - 3, &consumed, &payload), 0);
    cr_expect_eq(consumed, 4);
    cr_expect_eq(payload, 4);
    cr_assert_eq(http_chunked_step(&c, data + 7, strlen(data) - 7, &consumed, &payload), 1);
    cr_expect_eq(consumed, strlen(data) - 7);
    cr_expect_eq(payload, 0);
}

Test(http_chunked, size_up_to_two_to_the_62_is_accepted)
{
    struct http_chunked c;
    size_t consumed, payload;

    http_chunked_init(&c);
    cr_expect_eq(http_chunked_step(&c, "4000000000000000\r\n", 18, &consumed, &payload), 0);
    cr_expect_eq(consumed, 18);
    cr_expect_eq(http_chunked_step(&c, "xy", 2, &consumed, &payload), 0);
    cr_expect_eq(payload, 2, "a huge chunk hands out payload");
}

Test(http_chunked, size_over_two_to_the_62_is_refused)
{
    EXPECT_CHUNKED_ERROR("4000000000000001\r\n");
    EXPECT_CHUNKED_ERROR("ffffffffffffffff\r\n");
    EXPECT_CHUNKED_ERROR("10000000000000000000\r\n");
}

Test(http_chunked, invalid_size_lines_are_refused)
{
    EXPECT_CHUNKED_ERROR("g\r\n");
    EXPECT_CHUNKED_ERROR("\r\n");
    EXPECT_CHUNKED_ERROR("0x5\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR(" 5\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("-5\r\n");
    EXPECT_CHUNKED_ERROR("5 5\r\n");
    EXPECT_CHUNKED_ERROR(";x\r\n");
}

Test(http_chunked, bare_lf_and_bare_cr_are_refused)
{
    EXPECT_CHUNKED_ERROR("5\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5\rhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5\r\nhello\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5\r\nhello\rX0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("0\r\n\n");
    EXPECT_CHUNKED_ERROR("0\r\n\rX");
    EXPECT_CHUNKED_ERROR("0\r\nX: y\n\r\n");
    EXPECT_CHUNKED_ERROR("5;a=b\nhello\r\n0\r\n\r\n");
}

Test(http_chunked, missing_crlf_after_data_is_refused)
{
    EXPECT_CHUNKED_ERROR("5\r\nhelloX\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("3\r\nhello\r\n0\r\n\r\n");
}

Test(http_chunked, malformed_extensions_are_refused)
{
    EXPECT_CHUNKED_ERROR("5;\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5;=x\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5;a=\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5;a=\"x\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5;a=\"x\ny\"\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5;a=b c\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5;a\x01\r\nhello\r\n0\r\n\r\n");
    EXPECT_CHUNKED_ERROR("5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n");
}

Test(http_chunked, malformed_trailers_are_refused)
{
    EXPECT_CHUNKED_ERROR("0\r\n X: y\r\n\r\n");
    EXPECT_CHUNKED_ERROR("0\r\nX: y\r\n\tz\r\n\r\n");
    EXPECT_CHUNKED_ERROR("0\r\nNoColon\r\n\r\n");
    EXPECT_CHUNKED_ERROR("0\r\n: empty\r\n\r\n");
    EXPECT_CHUNKED_ERROR("0\r\nX : y\r\n\r\n");
    EXPECT_CHUNKED_ERROR("0\r\nX: a\x01\r\n\r\n");
}

static char *
line_of(size_t n, const char *prefix, const char *suffix)
{
    char *s = malloc(n + strlen(suffix) + 1);
    cr_assert_not_null(s);
    size_t p = strlen(prefix);
    memcpy(s, prefix, p);
    memset(s + p, 'a', n - p);
    strcpy(s + n, suffix);
    return s;
}

Test(http_chunked, size_line_limit_is_4096_bytes)
{
    struct decoded d;
    char *ok = line_of(HTTP_MAX_CHUNK_LINE, "5;x=", "\r\nhello\r\n0\r\n\r\n");
    char *bad = line_of(HTTP_MAX_CHUNK_LINE + 1, "5;x=", "\r\nhello\r\n0\r\n\r\n");

    decode_split(ok, strlen(ok), 100, &d);
    cr_expect_eq(d.rc, 1);
    cr_expect(span_is(d.payload, d.payload_len, "hello"));
    expect_chunked_error(bad, strlen(bad));
    free(ok);
    free(bad);
}

Test(http_chunked, trailer_line_limit_is_4096_bytes)
{
    struct decoded d;
    char *ok = line_of(HTTP_MAX_CHUNK_LINE + 3, "0\r\nX:", "\r\n\r\n");
    char *bad = line_of(HTTP_MAX_CHUNK_LINE + 4, "0\r\nX:", "\r\n\r\n");

    decode_split(ok, strlen(ok), 7, &d);
    cr_expect_eq(d.rc, 1);
    expect_chunked_error(bad, strlen(bad));
    free(ok);
    free(bad);
}

Test(http_chunked, too_many_trailer_fields_are_refused)
{
    char data[4096] = "0\r\n";
    for (int i = 0; i <= HTTP_MAX_HEADERS; i++) {
        strcat(data, "T: v\r\n");
    }
    strcat(data, "\r\n");
    expect_chunked_error(data, strlen(data));
}

/* ---- randomized properties ---- */

static uint64_t rng_state = UINT64_C(0x9e3779b97f4a7c15);

static uint32_t
rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* Bytes that sit on the parser's decision points, mixed with arbitrary ones. */
static char
interesting_byte(void)
{
    static const char pick[] = {'\r', '\n', ' ', '\t', ':',  ',',    ';',    '"',    '#',    '?',
                                '/',  '0',  'a', 'F',  '\0', '\x7f', '\x80', '\xff', '\x01', '='};

    if (rng_next() % 2 == 0) {
        return pick[rng_next() % sizeof(pick)];
    }
    return (char)(rng_next() & 0xff);
}

static void
mutate(char *buf, size_t len)
{
    int edits = 1 + (int)(rng_next() % 3);
    for (int i = 0; i < edits; i++) {
        buf[rng_next() % len] = interesting_byte();
    }
}

/*
 * Whatever the bytes, a prefix either needs more, or gives the same error the whole buffer
 * gives, or ends the same complete head: reading more never changes a verdict.
 */
Test(http_properties, request_verdicts_are_stable_as_bytes_arrive)
{
    static const char *const seeds[] = {
        "POST /v1/embeddings?x=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 12\r\n"
        "Transfer-Encoding: chunked\r\nConnection: keep-alive, x-a\r\n\r\n{\"input\":1}",
        "\r\nGET /a/b?c HTTP/1.0\r\nExpect: 100-continue\r\nX-A:  v  \r\n\r\n",
    };
    int accepted = 0;

    for (int iter = 0; iter < 3000; iter++) {
        const char *seed = seeds[iter % 2];
        size_t len = strlen(seed);
        char *buf = malloc(len);
        cr_assert_not_null(buf);
        memcpy(buf, seed, len);
        if (iter >= 2) {
            mutate(buf, len);
        }
        int full = parse_req_n(buf, len, NULL);
        cr_assert(full <= (int)len);
        accepted += full > 0;
        for (size_t n = 0; n < len; n++) {
            char *prefix = malloc(n);
            cr_assert(n == 0 || prefix != NULL);
            memcpy(prefix, buf, n);
            int rc = parse_req_n(prefix, n, NULL);
            free(prefix);
            if (rc != 0) {
                cr_assert_eq(rc, full, "iteration %d, %zu of %zu bytes: %d then %d", iter, n, len,
                             rc, full);
            } else {
                cr_assert(full <= 0 || (size_t)full > n,
                          "iteration %d: complete at %d but %zu "
                          "bytes need more",
                          iter, full, n);
            }
        }
        free(buf);
    }
    cr_expect_gt(accepted, 2, "the unmutated seeds parse");
}

Test(http_properties, response_verdicts_are_stable_as_bytes_arrive)
{
    static const char seed[] = "HTTP/1.1 200 OK Fine\r\nContent-Type: application/json\r\n"
                               "Content-Length: 10\r\nConnection: close\r\n\r\n0123456789";
    size_t len = sizeof(seed) - 1;

    for (int iter = 0; iter < 3000; iter++) {
        char buf[sizeof(seed)];
        memcpy(buf, seed, len);
        if (iter > 0) {
            mutate(buf, len);
        }
        int full = http_parse_response_head(buf, len, &resp, NULL);
        cr_assert(full == -502 || full >= 0);
        for (size_t n = 0; n < len; n++) {
            int rc = http_parse_response_head(buf, n, &resp, NULL);
            cr_assert(rc == 0 || rc == full, "iteration %d, %zu bytes: %d then %d", iter, n, rc,
                      full);
        }
    }
}

/* Any mutated body decodes to the same verdict, length and payload whether fed whole or bytewise.
 */
Test(http_properties, chunked_result_does_not_depend_on_how_bytes_are_split)
{
    static const char seed[] = "5;a=\"b\"\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
    size_t len = sizeof(seed) - 1;
    int completed = 0;

    for (int iter = 0; iter < 5000; iter++) {
        char buf[sizeof(seed)];
        struct decoded whole, bytewise, split;
        memcpy(buf, seed, len);
        if (iter > 0) {
            mutate(buf, len);
        }
        decode_split(buf, len, len, &whole);
        decode_bytewise(buf, len, &bytewise);
        decode_split(buf, len, rng_next() % (len + 1), &split);
        cr_assert_eq(whole.rc, bytewise.rc, "iteration %d", iter);
        cr_assert_eq(whole.rc, split.rc, "iteration %d", iter);
        if (whole.rc == 1) {
            completed++;
            cr_assert_eq(whole.consumed, bytewise.consumed);
            cr_assert_eq(whole.consumed, split.consumed);
            cr_assert_eq(whole.payload_len, bytewise.payload_len);
            cr_assert(memcmp(whole.payload, bytewise.payload, whole.payload_len) == 0);
            cr_assert(memcmp(whole.payload, split.payload, whole.payload_len) == 0);
        }
    }
    cr_expect_gt(completed, 0);
}

/* ---- header helpers ---- */

static struct http_header
hdr(const char *name, const char *value)
{
    struct http_header h = {name, strlen(name), value, strlen(value)};
    return h;
}

Test(http_headers, find_header_is_case_insensitive_and_returns_first)
{
    struct http_header hs[] = {hdr("Content-Type", "a"), hdr("X-Id", "1"), hdr("x-id", "2")};

    const struct http_header *h = http_find_header(hs, 3, "X-ID");
    cr_assert_not_null(h);
    cr_expect_eq(h, &hs[1]);
    cr_expect_eq(http_find_header(hs, 3, "content-type"), &hs[0]);
    cr_expect_null(http_find_header(hs, 3, "Content"));
    cr_expect_null(http_find_header(hs, 3, "X-Id-2"));
    cr_expect_null(http_find_header(hs, 0, "X-Id"));
}

Test(http_headers, header_is_compares_whole_name_case_insensitively)
{
    struct http_header h = hdr("Transfer-Encoding", "chunked");

    cr_expect(http_header_is(&h, "transfer-encoding"));
    cr_expect(http_header_is(&h, "TRANSFER-ENCODING"));
    cr_expect_not(http_header_is(&h, "Transfer"));
    cr_expect_not(http_header_is(&h, "Transfer-Encodings"));
}

Test(http_headers, fixed_hop_by_hop_names_are_detected_in_any_case)
{
    static const char *const hop[] = {"Connection",
                                      "keep-alive",
                                      "PROXY-CONNECTION",
                                      "TE",
                                      "Trailer",
                                      "Transfer-Encoding",
                                      "Upgrade",
                                      "Proxy-Authenticate",
                                      "proxy-authorization"};
    static const char *const end_to_end[] = {"Content-Type", "Content-Length", "Authorization",
                                             "Host",         "Trailers",       "X-Connection",
                                             "Tee"};

    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
        struct http_header h = hdr(hop[i], "x");
        cr_expect(http_is_hop_by_hop(&h, NULL, 0), "%s", hop[i]);
    }
    for (size_t i = 0; i < sizeof(end_to_end) / sizeof(end_to_end[0]); i++) {
        struct http_header h = hdr(end_to_end[i], "x");
        cr_expect_not(http_is_hop_by_hop(&h, NULL, 0), "%s", end_to_end[i]);
    }
}

Test(http_headers, headers_named_in_connection_are_hop_by_hop)
{
    struct http_header all[] = {
        hdr("Connection", "X-Session ,  keep-alive"),
        hdr("X-Session", "abc"),
        hdr("connection", "x-trace-hop"),
        hdr("X-Trace-Hop", "1"),
        hdr("X-Session-Id", "2"),
        hdr("Content-Type", "application/json"),
    };
    int n = (int)(sizeof(all) / sizeof(all[0]));

    cr_expect(http_is_hop_by_hop(&all[1], all, n));
    cr_expect(http_is_hop_by_hop(&all[3], all, n), "named by a second Connection line");
    cr_expect_not(http_is_hop_by_hop(&all[4], all, n), "a longer name is not a match");
    cr_expect_not(http_is_hop_by_hop(&all[5], all, n));
}

Test(http_headers, connection_named_headers_work_on_a_parsed_request)
{
    int rc = parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Hop\r\nx-hop: 1\r\n"
                       "X-Keep: 2\r\n\r\n",
                       NULL);

    cr_assert_gt(rc, 0);
    cr_expect(http_is_hop_by_hop(&req.headers[1], req.headers, req.nheaders));
    cr_expect(http_is_hop_by_hop(&req.headers[2], req.headers, req.nheaders));
    cr_expect_not(http_is_hop_by_hop(&req.headers[0], req.headers, req.nheaders));
    cr_expect_not(http_is_hop_by_hop(&req.headers[3], req.headers, req.nheaders));
}

/* ---- names ---- */

Test(http_names, reason_phrases_for_common_codes_and_unknown_otherwise)
{
    cr_expect_str_eq(http_reason(200), "OK");
    cr_expect_str_eq(http_reason(400), "Bad Request");
    cr_expect_str_eq(http_reason(404), "Not Found");
    cr_expect_str_eq(http_reason(431), "Request Header Fields Too Large");
    cr_expect_str_eq(http_reason(502), "Bad Gateway");
    cr_expect_str_eq(http_reason(503), "Service Unavailable");
    cr_expect_str_eq(http_reason(299), "Unknown");
    cr_expect_str_eq(http_reason(-1), "Unknown");
}

Test(http_names, method_names_round_trip_through_the_parser)
{
    static const enum http_method methods[] = {HTTP_GET,    HTTP_HEAD,  HTTP_POST,    HTTP_PUT,
                                               HTTP_DELETE, HTTP_PATCH, HTTP_OPTIONS, HTTP_TRACE};
    char raw[128];

    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        snprintf(raw, sizeof(raw), "%s / HTTP/1.1\r\nHost: a\r\n\r\n",
                 http_method_name(methods[i]));
        cr_assert_gt(parse_req(raw, NULL), 0);
        cr_expect_eq(req.method, methods[i]);
    }
    cr_expect_str_eq(http_method_name(HTTP_CONNECT), "CONNECT");
    cr_expect_str_eq(http_method_name(HTTP_OTHER), "OTHER");
}
