/*
 * fuzz_embed_ollama_legacy.c - libFuzzer harness for Ollama legacy POST /api/embeddings
 * request bodies
 * (checks in fuzz_embed_common.c).
 */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_embed_one(EMBED_API_OLLAMA_LEGACY, data, size);
}
