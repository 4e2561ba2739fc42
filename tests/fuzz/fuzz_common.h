/*
 * fuzz_common.h - helpers shared by the libFuzzer harnesses in tests/fuzz/
 * (fuzz_common.c; the chunked check is in fuzz_http_common.c).
 *
 * A harness that finds a broken invariant calls fuzz_fail(), which aborts so
 * libFuzzer records the input as a crash, the same as a sanitizer report.
 */
#ifndef AKOSHA_FUZZ_COMMON_H
#define AKOSHA_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embed_api.h"

/* Print "invariant broken: <what>" and abort(). */
void fuzz_fail(const char *what, ...) __attribute__((noreturn, format(printf, 1, 2)));

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fuzz_fail(__VA_ARGS__);                                                                \
        }                                                                                          \
    } while (0)

/*
 * A malloc'd copy of data[0..len) in a block of exactly len bytes, so
 * AddressSanitizer reports any read past len even when the harness hands a
 * parser a prefix of a larger input. Caller frees; len 0 gives a 1-byte block.
 */
char *fuzz_copy(const uint8_t *data, size_t len);

/*
 * Run the chunked decoder over data[0..len) twice: in pieces as large as the
 * decoder accepts, and one byte per call. Both must agree on the outcome, the
 * bytes consumed and the payload, and every step must keep the documented
 * contract (payload is all or nothing of consumed, progress until a final
 * result, sticky final results). Returns the outcome (1, 0 or -1).
 */
int fuzz_chunked_check(const uint8_t *data, size_t len);

/* True when buf[0..len) is one well-formed JSON value (jansson, any type at the top). */
bool fuzz_is_json(const char *buf, size_t len);

/*
 * The four embedding request harnesses (fuzz_embed_common.c): parse data as a
 * request body for api, answer it or render the error, check the result.
 */
int fuzz_embed_one(enum embed_api api, const uint8_t *data, size_t size);

#endif
