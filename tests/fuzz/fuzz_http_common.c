/*
 * fuzz_http_common.c - the chunked decoder check shared by the two HTTP
 * harnesses (see fuzz_common.h).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "http.h"
#include "util.h"

struct chunked_run {
    int rc;
    size_t consumed;
    struct buf payload;
};

/* One step with the contract checks; step is how many bytes to offer (at most what is left). */
static bool
chunked_step_checked(struct http_chunked *c, const char *p, size_t offered, struct chunked_run *r)
{
    size_t consumed = (size_t)-1, payload = (size_t)-1;
    int rc = http_chunked_step(c, p, offered, &consumed, &payload);

    FUZZ_CHECK(rc >= -1 && rc <= 1, "chunked step returned %d", rc);
    FUZZ_CHECK(consumed <= offered, "chunked consumed %zu of %zu", consumed, offered);
    FUZZ_CHECK(payload == 0 || payload == consumed, "payload %zu with consumed %zu", payload,
               consumed);
    if (rc != 0) {
        size_t again_consumed = 1, again_payload = 1;
        /* Final results are sticky and consume nothing more. */
        int again = http_chunked_step(c, p, offered, &again_consumed, &again_payload);
        FUZZ_CHECK(again == rc, "final chunked result %d became %d", rc, again);
        FUZZ_CHECK(again_consumed == 0, "sticky result consumed %zu", again_consumed);
        FUZZ_CHECK(again_payload == 0, "sticky result reported payload %zu", again_payload);
    } else {
        FUZZ_CHECK(consumed > 0, "chunked step made no progress on %zu bytes", offered);
    }
    buf_append(&r->payload, p, payload);
    r->consumed += consumed;
    r->rc = rc;
    return rc == 0;
}

static void
chunked_run(const char *p, size_t len, size_t piece, struct chunked_run *r)
{
    struct http_chunked c;

    memset(r, 0, sizeof(*r));
    buf_init(&r->payload);
    http_chunked_init(&c);
    while (r->consumed < len) {
        size_t left = len - r->consumed;
        if (!chunked_step_checked(&c, p + r->consumed, piece < left ? piece : left, r)) {
            break;
        }
    }
}

int
fuzz_chunked_check(const uint8_t *data, size_t len)
{
    char *p = fuzz_copy(data, len);
    struct chunked_run whole, bytewise;

    chunked_run(p, len, len, &whole);
    chunked_run(p, len, 1, &bytewise);
    FUZZ_CHECK(whole.rc == bytewise.rc, "chunked outcome %d whole, %d byte by byte", whole.rc,
               bytewise.rc);
    /* After an error the split point may differ in how far framing got; only success is exact. */
    if (whole.rc >= 0) {
        FUZZ_CHECK(whole.consumed == bytewise.consumed, "chunked consumed %zu whole, %zu bytewise",
                   whole.consumed, bytewise.consumed);
        FUZZ_CHECK(whole.payload.len == bytewise.payload.len &&
                       (whole.payload.len == 0 ||
                        memcmp(whole.payload.data, bytewise.payload.data, whole.payload.len) == 0),
                   "chunked payload differs between whole and bytewise feeding");
    }
    buf_free(&whole.payload);
    buf_free(&bytewise.payload);
    free(p);
    return whole.rc;
}
