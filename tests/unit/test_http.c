/*
 * test_http.c - the strict HTTP/1.1 parser: valid heads, every refusal rule, incremental
 * feeding, response framing and the chunked decoder.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static struct http_request_head req;

static int
parse_req(const char *s, const char **cause)
{
    return http_parse_request_head(s, strlen(s), &req, cause);
}

static bool
span_is(const char *p, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(p, want, len) == 0;
}

/* Assert that s is refused with status and a cause containing want_cause. */
static void
expect_req_error(const char *s, int status, const char *want_cause)
{
    const char *cause = NULL;
    int rc = parse_req(s, &cause);

    cr_assert_eq(rc, status, "input %s: got %d (%s), want %d", s, rc, cause ? cause : "-",
                 status);
    cr_assert_not_null(cause, "input %s: no cause", s);
    if (want_cause != NULL) {
        cr_assert(strstr(cause, want_cause) != NULL, "input %s: cause '%s' lacks '%s'", s, cause,
                  want_cause);
    }
}

/* ---- valid requests ---- */

Test(http_request, get_parses_method_target_version_and_headers)
{
    const char *s = "GET /v1/models HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\n\r\n";

    cr_assert_eq(parse_req(s, NULL), (int)strlen(s));
    cr_assert_eq(req.method, HTTP_GET);
    cr_assert(span_is(req.method_str, req.method_len, "GET"));
    cr_assert(span_is(req.target, req.target_len, "/v1/models"));
    cr_assert(span_is(req.path, req.path_len, "/v1/models"));
    cr_assert_null(req.query);
    cr_assert_eq(req.version_minor, 1);
    cr_assert_eq(req.nheaders, 2);
    cr_assert(span_is(req.headers[0].name, req.headers[0].name_len, "Host"));
    cr_assert(span_is(req.headers[0].value, req.headers[0].value_len, "localhost:8080"));
    cr_assert(span_is(req.headers[1].name, req.headers[1].name_len, "Accept"));
    cr_assert(span_is(req.headers[1].value, req.headers[1].value_len, "*/*"));
    cr_assert_eq(req.host_index, 0);
    cr_assert_eq(req.content_length, -1);
    cr_assert_not(req.chunked);
    cr_assert_not(req.has_transfer_encoding);
    cr_assert(req.keep_alive);
    cr_assert_not(req.expect_continue);
    cr_assert_eq(req.head_len, strlen(s));
}

Test(http_request, pointers_point_into_the_callers_buffer)
{
    const char *s = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";

    cr_assert_eq(parse_req(s, NULL), (int)strlen(s));
    cr_assert_eq(req.method_str, s);
    cr_assert_eq(req.target, s + 4);
    cr_assert_eq(req.headers[0].name, s + 17);
    cr_assert_eq(req.headers[0].value, s + 23);
}

Test(http_request, post_with_content_length_reports_length_and_head_len_excludes_body)
{
    const char *s = "POST /v1/embeddings HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                    "Content-Length: 17\r\n\r\n{\"input\":\"hello\"}";
    size_t head = strstr(s, "\r\n\r\n") + 4 - s;

    cr_assert_eq(parse_req(s, NULL), (int)head);
    cr_assert_eq(req.method, HTTP_POST);
    cr_assert_eq(req.content_length, 17);
    cr_assert_eq(req.head_len, head);
}

Test(http_request, content_length_name_is_case_insensitive)
{
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nhost: a\r\ncOnTeNt-LeNgTh: 42\r\n\r\n", NULL), 0);
    cr_assert_eq(req.content_length, 42);
}

Test(http_request, content_length_of_eighteen_digits_is_accepted)
{
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999999\r\n\r\n",
                           NULL),
                 0);
    cr_assert_eq(req.content_length, INT64_C(999999999999999999));
}

Test(http_request, content_length_zero_is_a_length)
{
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", NULL), 0);
    cr_assert_eq(req.content_length, 0);
}

Test(http_request, chunked_request_sets_chunked)
{
    cr_assert_gt(
        parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", NULL), 0);
    cr_assert(req.chunked);
    cr_assert(req.has_transfer_encoding);
    cr_assert_eq(req.content_length, -1);
}

Test(http_request, chunked_coding_name_is_case_insensitive)
{
    cr_assert_gt(
        parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n", NULL), 0);
    cr_assert(req.chunked);
}

Test(http_request, gzip_then_chunked_is_accepted_with_chunked_final)
{
    cr_assert_gt(
        parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip , chunked\r\n\r\n", NULL),
        0);
    cr_assert(req.chunked);
}

Test(http_request, transfer_encoding_split_over_two_fields_combines)
{
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n",
                           NULL),
                 0);
    cr_assert(req.chunked);
}

Test(http_request, http11_defaults_to_keep_alive)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_assert(req.keep_alive);
}

Test(http_request, http11_connection_close_disables_keep_alive)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", NULL), 0);
    cr_assert_not(req.keep_alive);
}

Test(http_request, http11_close_found_among_connection_tokens_in_any_case)
{
    cr_assert_gt(
        parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Foo, CLOSE ,bar\r\n\r\n", NULL), 0);
    cr_assert_not(req.keep_alive);
}

Test(http_request, http10_defaults_to_close)
{
    cr_assert_gt(parse_req("GET / HTTP/1.0\r\n\r\n", NULL), 0);
    cr_assert_eq(req.version_minor, 0);
    cr_assert_not(req.keep_alive);
}

Test(http_request, http10_keep_alive_token_enables_keep_alive)
{
    cr_assert_gt(parse_req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", NULL), 0);
    cr_assert(req.keep_alive);
}

Test(http_request, http10_keep_alive_and_close_means_close)
{
    cr_assert_gt(parse_req("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", NULL), 0);
    cr_assert_not(req.keep_alive);
}

Test(http_request, connection_upgrade_token_is_reported)
{
    cr_assert_gt(
        parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                  NULL),
        0);
    cr_assert(req.connection_upgrade);
    cr_assert(req.keep_alive);
}

Test(http_request, http10_without_host_is_accepted)
{
    cr_assert_gt(parse_req("GET / HTTP/1.0\r\n\r\n", NULL), 0);
    cr_assert_eq(req.host_index, -1);
    cr_assert_eq(req.nheaders, 0);
}

Test(http_request, empty_host_value_is_accepted)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nX: 1\r\nHost:\r\n\r\n", NULL), 0);
    cr_assert_eq(req.host_index, 1);
    cr_assert_eq(req.headers[1].value_len, 0);
}

Test(http_request, header_values_are_trimmed_of_spaces_and_tabs)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: \t  inner  value \t \r\n"
                           "X-B:tight\r\nX-C:   \r\n\r\n",
                           NULL),
                 0);
    cr_assert_eq(req.nheaders, 4);
    cr_assert(span_is(req.headers[1].value, req.headers[1].value_len, "inner  value"));
    cr_assert(span_is(req.headers[2].value, req.headers[2].value_len, "tight"));
    cr_assert_eq(req.headers[3].value_len, 0);
}

Test(http_request, obs_text_and_tab_inside_values_are_accepted)
{
    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\tbar\r\n\r\n", NULL),
                 0);
    cr_assert(span_is(req.headers[1].value, req.headers[1].value_len, "caf\xc3\xa9\tbar"));
}

Test(http_request, query_is_split_from_path)
{
    cr_assert_gt(parse_req("GET /search?q=a%20b&x=/y?z HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_assert(span_is(req.target, req.target_len, "/search?q=a%20b&x=/y?z"));
    cr_assert(span_is(req.path, req.path_len, "/search"));
    cr_assert(span_is(req.query, req.query_len, "q=a%20b&x=/y?z"));
}

Test(http_request, empty_query_is_present_but_empty)
{
    cr_assert_gt(parse_req("GET /p? HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_assert(span_is(req.path, req.path_len, "/p"));
    cr_assert_not_null(req.query);
    cr_assert_eq(req.query_len, 0);
}

Test(http_request, leading_empty_lines_are_skipped_and_counted_in_head_len)
{
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";

    cr_assert_eq(parse_req(s, NULL), (int)strlen(s));
    cr_assert_eq(req.method_str, s + 4);
    cr_assert_eq(req.method, HTTP_GET);
}

Test(http_request, every_known_method_is_recognised)
{
    static const struct {
        const char *name;
        enum http_method m;
    } cases[] = {
        {"GET", HTTP_GET},       {"HEAD", HTTP_HEAD},   {"POST", HTTP_POST},
        {"PUT", HTTP_PUT},       {"DELETE", HTTP_DELETE}, {"PATCH", HTTP_PATCH},
        {"OPTIONS", HTTP_OPTIONS}, {"TRACE", HTTP_TRACE},
    };
    char buf[128];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(buf, sizeof(buf), "%s /x HTTP/1.1\r\nHost: a\r\n\r\n", cases[i].name);
        cr_assert_gt(parse_req(buf, NULL), 0, "%s", cases[i].name);
        cr_assert_eq(req.method, cases[i].m, "%s", cases[i].name);
        cr_assert_str_eq(http_method_name(req.method), cases[i].name);
    }
}

Test(http_request, unknown_token_method_is_other_with_its_spelling)
{
    cr_assert_gt(parse_req("PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_assert_eq(req.method, HTTP_OTHER);
    cr_assert(span_is(req.method_str, req.method_len, "PROPFIND"));
}

Test(http_request, methods_are_case_sensitive)
{
    cr_assert_gt(parse_req("get /x HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_assert_eq(req.method, HTTP_OTHER);
}

Test(http_request, asterisk_form_is_accepted_for_options)
{
    cr_assert_gt(parse_req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", NULL), 0);
    cr_assert(span_is(req.target, req.target_len, "*"));
}

Test(http_request, expect_100_continue_is_reported_for_http11)
{
    cr_assert_gt(parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                           "Expect: 100-Continue\r\n\r\n",
                           NULL),
                 0);
    cr_assert(req.expect_continue);
}

Test(http_request, expect_100_continue_is_ignored_for_http10)
{
    cr_assert_gt(parse_req("POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
                           NULL),
                 0);
    cr_assert_not(req.expect_continue);
}

Test(http_request, exactly_max_headers_are_accepted)
{
    char buf[8192];
    size_t off = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");

    for (int i = 1; i < HTTP_MAX_HEADERS; i++) {
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "X-%d: %d\r\n", i, i);
    }
    snprintf(buf + off, sizeof(buf) - off, "\r\n");
    cr_assert_eq(parse_req(buf, NULL), (int)strlen(buf));
    cr_assert_eq(req.nheaders, HTTP_MAX_HEADERS);
    cr_assert(span_is(req.headers[99].name, req.headers[99].name_len, "X-99"));
}

Test(http_request, request_line_of_exactly_the_limit_is_accepted)
{
    static char buf[HTTP_MAX_REQUEST_LINE + 64];
    /* "GET " + target + " HTTP/1.1" == HTTP_MAX_REQUEST_LINE */
    size_t target_len = HTTP_MAX_REQUEST_LINE - 4 - 9;

    memcpy(buf, "GET ", 4);
    memset(buf + 4, 'a', target_len);
    buf[4] = '/';
    strcpy(buf + 4 + target_len, " HTTP/1.1\r\nHost: a\r\n\r\n");
    cr_assert_eq(parse_req(buf, NULL), (int)strlen(buf));
    cr_assert_eq(req.target_len, target_len);
}

Test(http_request, cause_is_null_on_success_and_null_cause_pointer_is_allowed)
{
    const char *cause = "stale";

    cr_assert_gt(parse_req("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &cause), 0);
    cr_assert_null(cause);
    cr_assert_eq(parse_req("GET / HTTP/1.1\n", NULL), -400);
}

/* ---- line endings ---- */

Test(http_request_errors, bare_lf_ending_request_line_is_refused)
{
    expect_req_error("GET / HTTP/1.1\nHost: a\n\n", -400, "bare LF");
}

Test(http_request_errors, bare_lf_ending_header_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\n\r\n", -400, "bare LF");
}

Test(http_request_errors, bare_lf_as_final_empty_line_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\n\n", -400, "bare LF");
}

Test(http_request_errors, lone_lf_lines_are_refused_immediately)
{
    expect_req_error("\n", -400, "bare LF");
    expect_req_error("\n\n", -400, "bare LF");
    expect_req_error("\r\n\n", -400, "bare LF");
}

Test(http_request_errors, bare_lf_is_reported_before_the_head_is_complete)
{
    expect_req_error("GET / HTTP/1.1\n", -400, "bare LF");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\n", -400, "bare LF");
    expect_req_error("GET /\n", -400, "bare LF");
    expect_req_error("GET\n", -400, "bare LF");
}

Test(http_request_errors, bare_cr_is_refused_anywhere)
{
    expect_req_error("GET / HTTP/1.1\rHost: a\r\n\r\n", -400, "bare CR");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", -400, "bare CR");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\n\rX", -400, "bare CR");
    expect_req_error("\rGET / HTTP/1.1\r\n", -400, "bare CR");
    expect_req_error("GET /\r HTTP/1.1\r\n", -400, NULL);
}

Test(http_request_errors, too_many_leading_empty_lines_are_refused)
{
    char buf[256] = "";

    for (int i = 0; i <= HTTP_MAX_LEADING_EMPTY_LINES; i++) {
        strcat(buf, "\r\n");
    }
    strcat(buf, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    expect_req_error(buf, -400, "empty lines");
}

/* ---- request line ---- */

Test(http_request_errors, absolute_form_target_is_refused)
{
    expect_req_error("GET http://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", -400,
                     "absolute-form target refused");
    expect_req_error("GET https://example.com:443/x?y HTTP/1.1\r\nHost: a\r\n\r\n", -400,
                     "absolute-form target refused");
}

Test(http_request_errors, connect_method_is_refused_with_405)
{
    expect_req_error("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", -405,
                     "CONNECT refused");
    /* Refused as soon as the method is known. */
    expect_req_error("CONNECT ", -405, "CONNECT refused");
}

Test(http_request_errors, authority_form_with_other_method_is_refused_with_405)
{
    expect_req_error("GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", -405, "authority-form");
}

Test(http_request_errors, target_that_is_neither_form_is_refused)
{
    expect_req_error("GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", -400, "request-target");
}

Test(http_request_errors, asterisk_form_is_refused_except_for_options)
{
    expect_req_error("GET * HTTP/1.1\r\nHost: a\r\n\r\n", -400, "asterisk-form");
    expect_req_error("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", -400, "asterisk-form");
}

Test(http_request_errors, invalid_bytes_in_target_are_refused)
{
    expect_req_error("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", -400, "request-target");
    expect_req_error("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", -400, "request-target");
    expect_req_error("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", -400, "request-target");
    expect_req_error("GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n", -400, "request-target");
    expect_req_error("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", -400, "request-target");
}

Test(http_request_errors, method_must_be_a_token)
{
    expect_req_error("G(ET / HTTP/1.1\r\nHost: a\r\n\r\n", -400, "method");
    expect_req_error(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", -400, "method");
    expect_req_error("\tGET / HTTP/1.1\r\nHost: a\r\n\r\n", -400, "method");
}

Test(http_request_errors, more_than_one_space_between_parts_is_refused)
{
    expect_req_error("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", -400, "SP");
    expect_req_error("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", -400, "SP");
    expect_req_error("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", -400, NULL);
}

Test(http_request_errors, missing_version_is_refused)
{
    expect_req_error("GET /\r\nHost: a\r\n\r\n", -400, "version");
    expect_req_error("GET / \r\nHost: a\r\n\r\n", -400, "version");
}

Test(http_request_errors, other_http_versions_get_505)
{
    expect_req_error("GET / HTTP/2.0\r\nHost: a\r\n\r\n", -505, "version");
    expect_req_error("GET / HTTP/1.2\r\nHost: a\r\n\r\n", -505, "version");
    expect_req_error("GET / HTTP/0.9\r\nHost: a\r\n\r\n", -505, "version");
}

Test(http_request_errors, malformed_versions_get_400)
{
    expect_req_error("GET / http/1.1\r\nHost: a\r\n\r\n", -400, "version");
    expect_req_error("GET / HTTP/1\r\nHost: a\r\n\r\n", -400, "version");
    expect_req_error("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", -400, NULL);
    expect_req_error("GET / HTTP/1.10\r\nHost: a\r\n\r\n", -400, NULL);
    expect_req_error("GET / HTTP/11\r\nHost: a\r\n\r\n", -400, "version");
    expect_req_error("GET / FTP/1.1\r\nHost: a\r\n\r\n", -400, "version");
}

Test(http_request_errors, request_line_over_limit_gets_414)
{
    static char buf[HTTP_MAX_REQUEST_LINE + 64];
    size_t target_len = HTTP_MAX_REQUEST_LINE - 4 - 9 + 1;

    memcpy(buf, "GET ", 4);
    memset(buf + 4, 'a', target_len);
    buf[4] = '/';
    strcpy(buf + 4 + target_len, " HTTP/1.1\r\nHost: a\r\n\r\n");
    expect_req_error(buf, -414, "too long");
}

Test(http_request_errors, request_line_over_limit_is_reported_before_its_end_arrives)
{
    static char buf[HTTP_MAX_REQUEST_LINE + 64];
    const char *cause = NULL;

    memcpy(buf, "GET /", 5);
    memset(buf + 5, 'a', sizeof(buf) - 5);
    /* Exactly at the limit nothing is wrong yet: the CR may still come. */
    cr_assert_eq(http_parse_request_head(buf, HTTP_MAX_REQUEST_LINE, &req, &cause), 0);
    cr_assert_eq(http_parse_request_head(buf, HTTP_MAX_REQUEST_LINE + 1, &req, &cause), -414);
    cr_assert_not_null(cause);
}

Test(http_request_errors, overlong_method_gets_414)
{
    static char buf[HTTP_MAX_REQUEST_LINE + 2];

    memset(buf, 'A', sizeof(buf) - 1);
    expect_req_error(buf, -414, "too long");
}

/* ---- header fields ---- */

Test(http_request_errors, whitespace_between_name_and_colon_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost : a\r\n\r\n", -400, "whitespace before colon");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n", -400,
                     "whitespace before colon");
}

Test(http_request_errors, header_name_must_be_a_token)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", -400, "header name");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: 1\r\n\r\n", -400, "header name");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", -400, "empty header name");
}

Test(http_request_errors, header_line_without_colon_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", -400, "without colon");
}

Test(http_request_errors, obsolete_line_folding_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", -400, "folding");
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n\r\n", -400, "folding");
}

Test(http_request_errors, whitespace_before_first_header_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\n Host: a\r\n\r\n", -400, NULL);
}

Test(http_request_errors, control_characters_in_values_are_refused)
{
    static const char ctl[] = {0x01, 0x08, 0x0b, 0x0c, 0x1f, 0x7f};
    char buf[128];

    for (size_t i = 0; i < sizeof(ctl); i++) {
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX: a%cb\r\n\r\n", ctl[i]);
        expect_req_error(buf, -400, "control character");
    }
}

Test(http_request_errors, nul_in_value_is_refused)
{
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    const char *cause = NULL;

    cr_assert_eq(http_parse_request_head(s, sizeof(s) - 1, &req, &cause), -400);
    cr_assert(strstr(cause, "control character") != NULL);
}

Test(http_request_errors, control_character_is_reported_before_the_line_ends)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nX: \x01", -400, "control character");
}

Test(http_request_errors, more_than_max_headers_gets_431)
{
    char buf[8192];
    size_t off = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");

    for (int i = 1; i <= HTTP_MAX_HEADERS; i++) {
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "X-%d: %d\r\n", i, i);
    }
    snprintf(buf + off, sizeof(buf) - off, "\r\n");
    expect_req_error(buf, -431, "too many headers");
}

Test(http_request_errors, head_over_max_size_gets_431)
{
    size_t len = HTTP_MAX_HEAD_SIZE + 100;
    char *buf = malloc(len + 1);
    size_t off = (size_t)snprintf(buf, len + 1, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");

    memset(buf + off, 'v', len - off);
    buf[len] = '\0';
    expect_req_error(buf, -431, "too large");
    free(buf);
}

/* ---- framing ---- */

Test(http_request_errors, content_length_must_be_digits_only)
{
    static const char *bad[] = {"+5", "-1", "5a", "0x10", "5 5", "1.0", ""};
    char buf[128];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n",
                 bad[i]);
        expect_req_error(buf, -400, "invalid Content-Length");
    }
}

Test(http_request_errors, content_length_over_eighteen_digits_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000000\r\n\r\n",
                     -400, "invalid Content-Length");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000005\r\n\r\n",
                     -400, "invalid Content-Length");
}

Test(http_request_errors, duplicate_content_length_is_refused_even_when_equal)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                     -400, "duplicate Content-Length");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                     -400, "duplicate Content-Length");
}

Test(http_request_errors, content_length_list_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", -400,
                     "Content-Length");
}

Test(http_request_errors, transfer_encoding_with_content_length_is_refused_in_either_order)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n",
                     -400, "Transfer-Encoding with Content-Length");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Length: 5\r\n\r\n",
                     -400, "Transfer-Encoding with Content-Length");
}

Test(http_request_errors, transfer_encoding_without_chunked_final_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", -400,
                     "chunked must be final");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                     -400, "chunked must be final");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Transfer-Encoding: gzip\r\n\r\n",
                     -400, "chunked must be final");
}

Test(http_request_errors, chunked_twice_is_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                     -400, "chunked applied twice");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n",
                     -400, "chunked applied twice");
}

Test(http_request_errors, unknown_transfer_coding_gets_501)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br, chunked\r\n\r\n", -501,
                     "unsupported transfer coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", -501,
                     "unsupported transfer coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", -501,
                     "unsupported transfer coding");
}

Test(http_request_errors, empty_or_parameterised_transfer_codings_are_refused)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", -400,
                     "empty transfer coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", -400,
                     "empty transfer coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", -400,
                     "empty transfer coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", -400,
                     "invalid transfer coding");
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", -400,
                     "empty transfer coding");
}

Test(http_request_errors, transfer_encoding_in_http10_is_refused)
{
    expect_req_error("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -400, "HTTP/1.0");
}

Test(http_request_errors, http11_without_host_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", -400, "missing Host");
}

Test(http_request_errors, duplicate_host_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", -400, "duplicate Host");
    expect_req_error("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", -400, "duplicate Host");
}

Test(http_request_errors, invalid_connection_token_is_refused)
{
    expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nConnection: clo se\r\n\r\n", -400,
                     "Connection");
}

Test(http_request_errors, framing_conflict_is_reported_before_the_head_ends)
{
    expect_req_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n",
                     -400, "duplicate Content-Length");
}

/* ---- incremental feeding ---- */

/* Feed every prefix of s: all must need more bytes until the whole head is there. */
static void
feed_request_byte_by_byte(const char *s)
{
    size_t len = strlen(s);
    const char *cause = NULL;

    for (size_t i = 0; i < len; i++) {
        int rc = http_parse_request_head(s, i, &req, &cause);
        cr_assert_eq(rc, 0, "prefix %zu of %zu: got %d (%s)", i, len, rc, cause ? cause : "-");
        cr_assert_null(cause);
    }
    cr_assert_eq(http_parse_request_head(s, len, &req, &cause), (int)len);
}

Test(http_incremental, get_fed_byte_by_byte_completes_only_at_the_end)
{
    feed_request_byte_by_byte("GET /v1/models?x=1 HTTP/1.1\r\nHost: localhost\r\n"
                              "User-Agent: t\r\nX-Empty:\r\n\r\n");
    cr_assert(span_is(req.query, req.query_len, "x=1"));
    cr_assert_eq(req.nheaders, 3);
}

Test(http_incremental, chunked_post_with_leading_crlf_fed_byte_by_byte)
{
    feed_request_byte_by_byte("\r\nPOST /embed HTTP/1.1\r\nHost: a\r\n"
                              "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    cr_assert(req.chunked);
    cr_assert_not(req.keep_alive);
}

Test(http_incremental, http10_request_fed_byte_by_byte)
{
    feed_request_byte_by_byte("OPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    cr_assert(req.keep_alive);
}

Test(http_incremental, body_bytes_after_the_head_do_not_change_the_result)
{
    const char *s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody";
    size_t head = strlen(s) - 4;

    for (size_t i = head; i <= strlen(s); i++) {
        cr_assert_eq(http_parse_request_head(s, i, &req, NULL), (int)head);
    }
}

/* Every prefix without the offending byte needs more; the prefix ending with it is refused. */
static void
expect_error_at(const char *s, size_t bad_index, int status)
{
    for (size_t i = 0; i < bad_index + 1; i++) {
        cr_assert_eq(http_parse_request_head(s, i, &req, NULL), 0, "prefix %zu of %s", i, s);
    }
    cr_assert_eq(http_parse_request_head(s, bad_index + 1, &req, NULL), status,
                 "error not reported when byte %zu of %s arrived", bad_index, s);
}

Test(http_incremental, errors_are_reported_when_the_offending_byte_arrives)
{
    const char *lf = "GET / HTTP/1.1\r\nHost: a\nmore";
    const char *ctl = "GET / HTTP/1.1\r\nHost: a\r\nX: ab\x02";
    const char *cl = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n";
    const char *ver = "GET / HTTP/2.0";
    const char *sp = "GET  ";

    expect_error_at(lf, (size_t)(strstr(lf, "a\n") + 1 - lf), -400);
    expect_error_at(ctl, strlen(ctl) - 1, -400);
    expect_error_at(cl, strlen(cl) - 1, -400);
    expect_error_at(ver, strlen(ver) - 1, -505);
    expect_error_at(sp, strlen(sp) - 1, -400);
}
