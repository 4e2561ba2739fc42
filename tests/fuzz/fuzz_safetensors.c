/*
 * fuzz_safetensors.c - libFuzzer harness for safetensors_parse, the reader of
 * model weight files: the input is a whole file image.
 *
 * A refused file has a cause and no result. An accepted one keeps every
 * promise of the header: each tensor lies inside the data area, its byte size
 * is its element count times its dtype's size, no two non-empty tensors
 * overlap, each is found by its name, and each F32/F16/BF16 tensor converts
 * (reading every byte, so ASan sees any escape from the file).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned
size_of(enum safetensors_dtype d)
{
    switch (d) {
    case SAFETENSORS_F64:
    case SAFETENSORS_I64:
    case SAFETENSORS_U64:
        return 8;
    case SAFETENSORS_F32:
    case SAFETENSORS_I32:
    case SAFETENSORS_U32:
        return 4;
    case SAFETENSORS_F16:
    case SAFETENSORS_BF16:
    case SAFETENSORS_I16:
    case SAFETENSORS_U16:
        return 2;
    default:
        return 1;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = (uint8_t *)fuzz_copy(data, size);
    struct safetensors *st = NULL;
    char *cause = NULL;

    if (safetensors_parse(copy, size, &st, &cause) != 0) {
        FUZZ_CHECK(cause != NULL && cause[0] != '\0', "refused without a cause");
        FUZZ_CHECK(st == NULL, "refused but set the result");
        free(cause);
        free(copy);
        return 0;
    }
    FUZZ_CHECK(st->data >= copy + 8 && st->data + st->data_len == copy + size,
               "data area outside the file");
    for (size_t i = 0; i < st->ntensors; i++) {
        const struct safetensors_tensor *t = &st->tensors[i];
        FUZZ_CHECK(t->begin <= t->end && t->end <= st->data_len, "tensor %s outside the data",
                   t->name);
        FUZZ_CHECK(t->end - t->begin == t->count * size_of(t->dtype), "tensor %s size", t->name);
        FUZZ_CHECK(safetensors_find(st, t->name) == t, "tensor %s not found by name", t->name);
        FUZZ_CHECK(strcmp(t->name, "__metadata__") != 0, "metadata indexed as a tensor");
        for (size_t j = 0; j < i; j++) {
            const struct safetensors_tensor *u = &st->tensors[j];
            bool empty = t->begin == t->end || u->begin == u->end;
            FUZZ_CHECK(empty || t->end <= u->begin || u->end <= t->begin, "%s and %s overlap",
                       t->name, u->name);
        }
        if (t->count <= (1u << 20)) {
            float *f = safetensors_to_f32(st, t, &cause);
            if (f == NULL) {
                FUZZ_CHECK(t->dtype != SAFETENSORS_F32 && t->dtype != SAFETENSORS_F16 &&
                               t->dtype != SAFETENSORS_BF16,
                           "a float tensor did not convert");
                free(cause);
            }
            free(f);
        }
    }
    safetensors_free(st);
    free(copy);
    return 0;
}
