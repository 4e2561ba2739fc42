/*
 * fuzz_common.c - helpers shared by the libFuzzer harnesses (see fuzz_common.h).
 */
#include "fuzz_common.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void
fuzz_fail(const char *what, ...)
{
    va_list ap;

    fputs("invariant broken: ", stderr);
    va_start(ap, what);
    vfprintf(stderr, what, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

char *
fuzz_copy(const uint8_t *data, size_t len)
{
    char *p = xmalloc(len > 0 ? len : 1);

    if (len > 0) {
        memcpy(p, data, len);
    }
    return p;
}

bool
fuzz_is_json(const char *buf, size_t len)
{
    json_error_t error;
    json_t *v;

    v = json_loadb(buf, len, JSON_DECODE_ANY, &error);

    if (v == NULL) {
        return false;
    }
    json_decref(v);
    return true;
}
