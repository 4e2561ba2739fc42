/*
 * test_util.c - the decimal writer the JSON encoders share, against printf,
 * and the growable buffer around it; peer classification and URL redaction.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "util.h"

static void
check_i64(int64_t v)
{
    char want[32], got[32];
    char *end = util_put_i64(got, v);

    *end = '\0';
    snprintf(want, sizeof(want), "%" PRId64, v);
    cr_assert_str_eq(got, want);
}

Test(put_i64, every_length_and_both_limits)
{
    static const int64_t edges[] = {0, INT64_MAX, INT64_MIN, INT64_MIN + 1, 1700000000123456789};

    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
        check_i64(edges[i]);
    }
    /* every power of ten and its neighbours: each digit count, both signs */
    for (int64_t p = 1; p <= INT64_MAX / 10; p *= 10) {
        check_i64(p - 1);
        check_i64(p);
        check_i64(p + 1);
        check_i64(-p);
        check_i64(-p + 1);
    }
}

Test(put_i64, matches_printf_on_pseudo_random_values)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;

    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* every magnitude: shift the random word down by 0..63 bits */
        check_i64((int64_t)(x >> (i % 64)) * ((i & 1) ? -1 : 1));
    }
}

Test(buf, put_i64_appends_and_terminates)
{
    struct buf b;

    buf_init(&b);
    buf_puts(&b, "n=");
    buf_put_i64(&b, -42);
    buf_put_i64(&b, INT64_MIN);
    cr_assert_eq(b.len, strlen("n=-42-9223372036854775808"));
    cr_assert_str_eq(b.data, "n=-42-9223372036854775808");
    buf_free(&b);
}

/* The plain run stops exactly at the first special byte, in the blocks and in the tail. */
Test(json_plain_run, stops_at_the_first_special_byte)
{
    static const char specials[] = {'"', '\\', '\n', 0x01, 0x1f, (char)0x80, (char)0xff};
    char s[64];

    for (size_t k = 0; k < sizeof(specials); k++) {
        for (size_t n = 0; n <= sizeof(s); n++) {
            for (size_t pos = 0; pos <= n; pos++) {
                memset(s, 'a', sizeof(s));
                if (pos < n) {
                    s[pos] = specials[k];
                }
                /* pos == n: nothing special, the whole input is plain */
                cr_assert_eq(util_json_plain_run(s, n), pos, "special %zu at %zu of %zu", k, pos,
                             n);
            }
        }
    }
    /* space, DEL and '~' are plain */
    memset(s, ' ', 16);
    s[3] = 0x7f;
    s[9] = '~';
    cr_assert_eq(util_json_plain_run(s, 16), 16);
    cr_assert_eq(util_json_plain_run(s, 10), 10);
}

static bool
v4_local(const char *addr)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};

    cr_assert_eq(inet_pton(AF_INET, addr, &sin.sin_addr), 1);
    return util_peer_is_local((struct sockaddr *)&sin, sizeof(sin));
}

static bool
v6_local(const char *addr)
{
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};

    cr_assert_eq(inet_pton(AF_INET6, addr, &sin6.sin6_addr), 1);
    return util_peer_is_local((struct sockaddr *)&sin6, sizeof(sin6));
}

Test(peer, loopback_and_unix_peers_are_local_others_are_not)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};

    cr_expect(v4_local("127.0.0.1"));
    cr_expect(v4_local("127.255.0.9"));
    cr_expect(v6_local("::1"));
    cr_expect(v6_local("::ffff:127.0.0.1"));
    cr_expect_not(v4_local("10.0.0.1"));
    cr_expect_not(v4_local("192.0.2.2"));
    cr_expect_not(v4_local("0.0.0.0"));
    cr_expect_not(v4_local("128.0.0.1"));
    cr_expect_not(v6_local("fd00::2"));
    cr_expect_not(v6_local("::ffff:10.0.0.1"));
    cr_expect_not(v6_local("::"));
    /* an unnamed unix peer comes with just the family */
    cr_expect(util_peer_is_local((struct sockaddr *)&sun, sizeof(sa_family_t)));
    cr_expect_not(util_peer_is_local(NULL, 0));
}

Test(url_redact, userinfo_is_replaced_the_rest_kept)
{
    static const char *cases[][2] = {
        {"https://user:pass@host/p", "https://***@host/p"},
        {"http://u@h:80", "http://***@h:80"},
        {"https://a:b@c@host:1/x@y", "https://***@host:1/x@y"},
        {"https://host/x@y", "https://host/x@y"},
        {"http://127.0.0.1:4318", "http://127.0.0.1:4318"},
        {"", ""},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = util_url_redact(cases[i][0]);
        cr_expect_str_eq(got, cases[i][1], "%s", cases[i][0]);
        free(got);
    }
}
