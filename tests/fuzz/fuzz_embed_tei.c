/*
 * fuzz_embed_tei.c - libFuzzer harness for TEI POST /embed request bodies
 * (checks in fuzz_embed_common.c).
 */
#include <stddef.h>
#include <stdint.h>

#include "embed_api.h"

int fuzz_embed_one(enum embed_api api, const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_embed_one(EMBED_API_TEI, data, size);
}
