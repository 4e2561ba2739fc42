/*
 * fuzz_wordpiece.c - libFuzzer harness for wordpiece_encode, the tokenizer
 * every text a local model embeds goes through (request bodies: any bytes
 * JSON lets through, and more), over the real bert-base-uncased vocabulary.
 *
 * The input is the text; its first byte also picks the token budget. Every
 * encoding starts with [CLS] and ends with [SEP], stays within the budget,
 * holds only ids of the vocabulary, and is a prefix-truncation of the
 * unbounded encoding (same first tokens). The text is also loaded as a
 * tokenizer.json and as a vocab.txt, which must fail cleanly or load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "util.h"
#include "wordpiece.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_IDS 4096

static struct wordpiece *wp;
static int32_t full[MAX_IDS], part[MAX_IDS];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = getenv("FUZZ_VOCAB");
    char *cause = NULL, *text;
    FILE *f;
    long len;

    (void)argc;
    (void)argv;
    if (path == NULL) {
        path = FUZZ_SRCDIR "/tests/data/bert-base-uncased-vocab.txt";
    }
    f = fopen(path, "rb");
    FUZZ_CHECK(f != NULL, "cannot open %s (set FUZZ_VOCAB)", path);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = xmalloc((size_t)len);
    FUZZ_CHECK(fread(text, 1, (size_t)len, f) == (size_t)len, "short read of %s", path);
    fclose(f);
    FUZZ_CHECK(wordpiece_from_vocab(text, (size_t)len, &wp, &cause) == 0, "%s", cause);
    free(text);
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_copy(data, size);
    size_t budget = size > 0 ? 2 + data[0] % 64 : 2;
    size_t vocab = wordpiece_vocab_size(wp);
    size_t nfull = wordpiece_encode(wp, text, size, full, MAX_IDS);
    size_t npart = wordpiece_encode(wp, text, size, part, budget);
    struct wordpiece *other = NULL;
    char *cause = NULL;

    FUZZ_CHECK(nfull >= 2 && full[0] == 101 && full[nfull - 1] == 102, "not [CLS] ... [SEP]");
    FUZZ_CHECK(npart >= 2 && npart <= budget, "%zu ids for a budget of %zu", npart, budget);
    FUZZ_CHECK(part[0] == 101 && part[npart - 1] == 102, "truncated: not [CLS] ... [SEP]");
    for (size_t i = 0; i < nfull; i++) {
        FUZZ_CHECK(full[i] >= 0 && (size_t)full[i] < vocab, "id %d outside the vocabulary",
                   full[i]);
    }
    if (nfull < MAX_IDS) {
        FUZZ_CHECK(npart == (nfull < budget ? nfull : budget), "truncated to %zu of %zu", npart,
                   nfull);
        FUZZ_CHECK(memcmp(part, full, (npart - 1) * sizeof(*part)) == 0,
                   "truncation is not a prefix");
    }
    if (wordpiece_from_json(text, size, &other, &cause) == 0) {
        wordpiece_free(other);
    } else {
        FUZZ_CHECK(cause != NULL, "refused without a cause");
        free(cause);
    }
    cause = NULL;
    if (wordpiece_from_vocab(text, size, &other, &cause) == 0) {
        wordpiece_free(other);
    } else {
        free(cause);
    }
    free(text);
    return 0;
}
