/*
 * safetensors.c - a validating reader for .safetensors files (see safetensors.h).
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static const struct {
    const char *name;
    enum safetensors_dtype dtype;
    unsigned size;
} dtypes[] = {
    {"F32", SAFETENSORS_F32, 4},        {"F16", SAFETENSORS_F16, 2},
    {"BF16", SAFETENSORS_BF16, 2},      {"F64", SAFETENSORS_F64, 8},
    {"I64", SAFETENSORS_I64, 8},        {"I32", SAFETENSORS_I32, 4},
    {"I16", SAFETENSORS_I16, 2},        {"I8", SAFETENSORS_I8, 1},
    {"U64", SAFETENSORS_U64, 8},        {"U32", SAFETENSORS_U32, 4},
    {"U16", SAFETENSORS_U16, 2},        {"U8", SAFETENSORS_U8, 1},
    {"BOOL", SAFETENSORS_BOOL, 1},      {"F8_E4M3", SAFETENSORS_F8_E4M3, 1},
    {"F8_E5M2", SAFETENSORS_F8_E5M2, 1},
};

const char *
safetensors_dtype_name(enum safetensors_dtype dtype)
{
    for (size_t i = 0; i < ARRAY_SIZE(dtypes); i++) {
        if (dtypes[i].dtype == dtype) {
            return dtypes[i].name;
        }
    }
    return "?";
}

static unsigned
dtype_size(enum safetensors_dtype dtype)
{
    for (size_t i = 0; i < ARRAY_SIZE(dtypes); i++) {
        if (dtypes[i].dtype == dtype) {
            return dtypes[i].size;
        }
    }
    return 0;
}

void
safetensors_free(struct safetensors *st)
{
    if (st == NULL) {
        return;
    }
    for (size_t i = 0; i < st->ntensors; i++) {
        free(st->tensors[i].name);
    }
    free(st->tensors);
    if (st->map != NULL) {
        munmap(st->map, st->map_len);
    }
    free(st);
}

/* A JSON integer in [0, INT64_MAX] (jansson integers are json_int_t, signed 64-bit). */
static bool
get_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return false;
    }
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Fill t from the header entry v: 0, or -1 with *cause set. */
static int
parse_entry(const char *name, const json_t *v, size_t data_len, struct safetensors_tensor *t,
            char **cause)
{
    const json_t *dtype, *shape, *offsets;
    const char *dname;
    size_t i;
    bool found = false;
    uint64_t bytes;

    if (!json_is_object(v)) {
        *cause = xasprintf("tensor \"%s\": entry is not a JSON object", name);
        return -1;
    }
    dtype = json_object_get(v, "dtype");
    shape = json_object_get(v, "shape");
    offsets = json_object_get(v, "data_offsets");
    if (!json_is_string(dtype)) {
        *cause = xasprintf("tensor \"%s\": \"dtype\" missing or not a string", name);
        return -1;
    }
    dname = json_string_value(dtype);
    for (i = 0; i < ARRAY_SIZE(dtypes); i++) {
        if (strcmp(dname, dtypes[i].name) == 0) {
            t->dtype = dtypes[i].dtype;
            found = true;
            break;
        }
    }
    if (!found) {
        *cause = xasprintf("tensor \"%s\": unknown dtype \"%.32s\"", name, dname);
        return -1;
    }
    if (!json_is_array(shape)) {
        *cause = xasprintf("tensor \"%s\": \"shape\" missing or not an array", name);
        return -1;
    }
    if (json_array_size(shape) > SAFETENSORS_MAX_DIMS) {
        *cause = xasprintf("tensor \"%s\": %zu dimensions, at most %d supported", name,
                           json_array_size(shape), SAFETENSORS_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)json_array_size(shape);
    t->count = 1;
    for (i = 0; i < json_array_size(shape); i++) {
        if (!get_u64(json_array_get(shape, i), &t->shape[i])) {
            *cause = xasprintf("tensor \"%s\": shape[%zu] is not a non-negative integer", name,
                               i);
            return -1;
        }
        if (t->shape[i] != 0 && t->count > UINT64_MAX / t->shape[i]) {
            *cause = xasprintf("tensor \"%s\": shape overflows", name);
            return -1;
        }
        t->count *= t->shape[i];
    }
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
        !get_u64(json_array_get(offsets, 0), &t->begin) ||
        !get_u64(json_array_get(offsets, 1), &t->end)) {
        *cause = xasprintf("tensor \"%s\": \"data_offsets\" is not [begin, end] "
                           "of non-negative integers",
                           name);
        return -1;
    }
    if (t->begin > t->end || t->end > data_len) {
        *cause = xasprintf("tensor \"%s\": data_offsets [%llu, %llu] outside the data area of "
                           "%zu bytes",
                           name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           data_len);
        return -1;
    }
    if (t->count > UINT64_MAX / dtype_size(t->dtype)) {
        *cause = xasprintf("tensor \"%s\": shape overflows", name);
        return -1;
    }
    bytes = t->count * dtype_size(t->dtype);
    if (bytes != t->end - t->begin) {
        *cause = xasprintf("tensor \"%s\": shape and dtype %s need %llu bytes, data_offsets "
                           "give %llu",
                           name, dname, (unsigned long long)bytes,
                           (unsigned long long)(t->end - t->begin));
        return -1;
    }
    return 0;
}

static int
by_begin(const void *a, const void *b)
{
    const struct safetensors_tensor *x = *(const struct safetensors_tensor *const *)a;
    const struct safetensors_tensor *y = *(const struct safetensors_tensor *const *)b;

    if (x->begin != y->begin) {
        return x->begin < y->begin ? -1 : 1;
    }
    return x->end < y->end ? -1 : x->end > y->end;
}

static int
by_name(const void *a, const void *b)
{
    return strcmp(((const struct safetensors_tensor *)a)->name,
                  ((const struct safetensors_tensor *)b)->name);
}

int
safetensors_parse(const uint8_t *buf, size_t len, struct safetensors **out, char **cause)
{
    uint64_t header_len = 0;
    json_t *root;
    json_error_t jerr;
    struct safetensors *st;
    struct safetensors_tensor **order = NULL;
    const char *key;
    json_t *value;
    size_t n = 0;

    if (len < 8) {
        *cause = xasprintf("file of %zu bytes is shorter than the 8-byte header length", len);
        return -1;
    }
    for (int i = 7; i >= 0; i--) {
        header_len = header_len << 8 | buf[i];
    }
    if (header_len > len - 8) {
        *cause = xasprintf("header length %llu runs past the end of the file (%zu bytes)",
                           (unsigned long long)header_len, len);
        return -1;
    }
    if (header_len > SAFETENSORS_MAX_HEADER) {
        *cause = xasprintf("header length %llu is above the limit of %u bytes",
                           (unsigned long long)header_len, SAFETENSORS_MAX_HEADER);
        return -1;
    }
    root = json_loadb((const char *)buf + 8, header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        *cause = xasprintf("header is not valid JSON: %s at byte %d", jerr.text, jerr.position);
        return -1;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        *cause = xstrdup("header is not a JSON object");
        return -1;
    }

    st = xcalloc(1, sizeof(*st));
    st->data = buf + 8 + header_len;
    st->data_len = len - 8 - (size_t)header_len;
    st->tensors = xcalloc(json_object_size(root) + 1, sizeof(*st->tensors));
    json_object_foreach(root, key, value)
    {
        if (strcmp(key, "__metadata__") == 0) {
            continue;
        }
        if (key[0] == '\0') {
            *cause = xstrdup("a tensor has an empty name");
            goto fail;
        }
        if (parse_entry(key, value, st->data_len, &st->tensors[n], cause) != 0) {
            goto fail;
        }
        st->tensors[n].name = xstrdup(key);
        st->ntensors = ++n;
    }

    /* Overlap: sorted by begin, each tensor must start at or after the previous end. */
    order = xcalloc(n + 1, sizeof(*order));
    for (size_t i = 0; i < n; i++) {
        order[i] = &st->tensors[i];
    }
    qsort(order, n, sizeof(*order), by_begin);
    for (size_t i = 1; i < n; i++) {
        /* Empty tensors take no bytes and overlap nothing. */
        if (order[i]->begin == order[i]->end || order[i - 1]->begin == order[i - 1]->end) {
            continue;
        }
        if (order[i]->begin < order[i - 1]->end) {
            *cause = xasprintf("tensors \"%s\" and \"%s\" overlap in the data area",
                               order[i - 1]->name, order[i]->name);
            goto fail;
        }
    }
    free(order);
    qsort(st->tensors, n, sizeof(*st->tensors), by_name);
    json_decref(root);
    *out = st;
    return 0;

fail:
    free(order);
    json_decref(root);
    safetensors_free(st);
    return -1;
}

int
safetensors_open(const char *path, struct safetensors **out, char **cause)
{
    struct stat sb;
    void *map;
    char *why = NULL;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *cause = xasprintf("%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &sb) != 0) {
        *cause = xasprintf("%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        *cause = xasprintf("%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (sb.st_size < 8) {
        *cause = xasprintf("%s: file of %lld bytes is shorter than the 8-byte header length",
                           path, (long long)sb.st_size);
        close(fd);
        return -1;
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        *cause = xasprintf("%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    if (safetensors_parse(map, (size_t)sb.st_size, out, &why) != 0) {
        *cause = xasprintf("%s: %s", path, why);
        free(why);
        munmap(map, (size_t)sb.st_size);
        return -1;
    }
    (*out)->map = map;
    (*out)->map_len = (size_t)sb.st_size;
    return 0;
}

const struct safetensors_tensor *
safetensors_find(const struct safetensors *st, const char *name)
{
    struct safetensors_tensor key = {.name = (char *)name};

    return bsearch(&key, st->tensors, st->ntensors, sizeof(*st->tensors), by_name);
}

float
safetensors_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    float f;

    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | mant << 13; /* inf, NaN (payload kept) */
    } else if (exp != 0) {
        bits = sign | (exp + 112) << 23 | mant << 13;
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* Subnormal half: mant * 2^-24, exact in float. */
        f = (float)mant * 0x1p-24f;
        return sign ? -f : f;
    }
    memcpy(&f, &bits, sizeof(f));
    return f;
}

float
safetensors_bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;

    memcpy(&f, &bits, sizeof(f));
    return f;
}

float *
safetensors_to_f32(const struct safetensors *st, const struct safetensors_tensor *t,
                   char **cause)
{
    const uint8_t *p = st->data + t->begin;
    float *out;
    uint16_t h;

    if (t->dtype != SAFETENSORS_F32 && t->dtype != SAFETENSORS_F16 &&
        t->dtype != SAFETENSORS_BF16) {
        *cause = xasprintf("tensor \"%s\" has dtype %s: only F32, F16 and BF16 are supported",
                           t->name, safetensors_dtype_name(t->dtype));
        return NULL;
    }
    if (t->count > SIZE_MAX / sizeof(float)) {
        *cause = xasprintf("tensor \"%s\" is too large", t->name);
        return NULL;
    }
    out = xmalloc(t->count > 0 ? (size_t)t->count * sizeof(float) : 1);
    switch (t->dtype) {
    case SAFETENSORS_F32:
        /* Little-endian host assumed (x86-64, arm64). The data area need not be
         * 4-byte aligned: the header length is arbitrary. */
        memcpy(out, p, (size_t)t->count * sizeof(float));
        break;
    case SAFETENSORS_F16:
        for (uint64_t i = 0; i < t->count; i++) {
            h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
            out[i] = safetensors_f16_to_f32(h);
        }
        break;
    default:
        for (uint64_t i = 0; i < t->count; i++) {
            h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
            out[i] = safetensors_bf16_to_f32(h);
        }
        break;
    }
    return out;
}
