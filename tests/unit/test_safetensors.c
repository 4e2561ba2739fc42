/*
 * test_safetensors.c - the safetensors reader accepts good files (every
 * supported dtype, prefixes, metadata, empty tensors, unaligned data) and
 * refuses every kind of bad file with an error naming the problem. Files are
 * built in the test.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

/* A file image: 8-byte little-endian length, header, data. Caller frees. */
static uint8_t *
image(const char *header, const void *data, size_t data_len, size_t *len)
{
    size_t hl = strlen(header);
    uint8_t *p = xmalloc(8 + hl + data_len + 1);

    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    }
    memcpy(p + 8, header, hl);
    if (data_len > 0) {
        memcpy(p + 8 + hl, data, data_len);
    }
    *len = 8 + hl + data_len;
    return p;
}

static struct safetensors *
parse_ok(const uint8_t *buf, size_t len)
{
    struct safetensors *st = NULL;
    char *cause = NULL;

    cr_assert_eq(safetensors_parse(buf, len, &st, &cause), 0, "%s", cause);
    return st;
}

static void
expect_bad(const char *header, size_t data_len, const char *needle)
{
    uint8_t data[256] = {0};
    size_t len;
    uint8_t *buf = image(header, data, data_len, &len);
    struct safetensors *st = NULL;
    char *cause = NULL;

    cr_assert_eq(safetensors_parse(buf, len, &st, &cause), -1, "accepted: %s", header);
    cr_assert_null(st);
    cr_assert_not_null(strstr(cause, needle), "cause \"%s\" lacks \"%s\" for %s", cause, needle,
                       header);
    free(cause);
    free(buf);
}

Test(safetensors, reads_f32_f16_bf16_and_ignores_metadata)
{
    /* One padding byte before the data makes the F32 tensor unaligned in memory. */
    const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                         "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                         "\"c\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[22,26]},"
                         "\"ids\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[26,42]},"
                         "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[42,42]}} ";
    uint8_t data[42] = {0};
    float f[4] = {1.5f, -2.0f, 0.25f, 1e-3f};
    uint16_t h[3] = {0x3c00, 0xc000, 0x0001}; /* 1, -2, smallest subnormal */
    uint16_t bf[2] = {0x3f80, 0xc0a0};        /* 1, -5 */
    size_t len;
    char *cause = NULL;

    memcpy(data, f, 16);
    memcpy(data + 16, h, 6);
    memcpy(data + 22, bf, 4);
    uint8_t *buf = image(header, data, sizeof(data), &len);
    struct safetensors *st = parse_ok(buf, len);

    cr_assert_eq(st->ntensors, 5);
    cr_assert_null(safetensors_find(st, "__metadata__"));
    const struct safetensors_tensor *a = safetensors_find(st, "a");
    cr_assert_not_null(a);
    cr_assert_eq(a->ndim, 2);
    cr_assert_eq(a->count, 4);
    float *fa = safetensors_to_f32(st, a, &cause);
    cr_assert_arr_eq(fa, f, sizeof(f));
    free(fa);
    float *fb = safetensors_to_f32(st, safetensors_find(st, "b"), &cause);
    cr_assert(fb[0] == 1.0f && fb[1] == -2.0f && fb[2] == 0x1p-24f);
    free(fb);
    float *fc = safetensors_to_f32(st, safetensors_find(st, "c"), &cause);
    cr_assert(fc[0] == 1.0f && fc[1] == -5.0f);
    free(fc);
    float *fe = safetensors_to_f32(st, safetensors_find(st, "empty"), &cause);
    cr_assert_not_null(fe);
    free(fe);
    cr_assert_null(safetensors_to_f32(st, safetensors_find(st, "ids"), &cause));
    cr_assert_not_null(strstr(cause, "dtype I64"), "%s", cause);
    free(cause);
    safetensors_free(st);
    free(buf);
}

Test(safetensors, half_precision_special_values)
{
    cr_assert(isinf(safetensors_f16_to_f32(0x7c00)) && safetensors_f16_to_f32(0x7c00) > 0);
    cr_assert(isnan(safetensors_f16_to_f32(0x7e00)));
    cr_assert(safetensors_f16_to_f32(0x8000) == 0.0f && signbit(safetensors_f16_to_f32(0x8000)));
    cr_assert(safetensors_f16_to_f32(0x7bff) == 65504.0f);
    cr_assert(safetensors_f16_to_f32(0x0400) == 0x1p-14f);
    cr_assert(safetensors_f16_to_f32(0x83ff) == -(float)0x3ff * 0x1p-24f);
    cr_assert(isnan(safetensors_bf16_to_f32(0x7fc0)));
    cr_assert(safetensors_bf16_to_f32(0x0001) == 0x1p-133f);
}

Test(safetensors, empty_header_object_is_a_file_with_no_tensors)
{
    size_t len;
    uint8_t *buf = image("{}", NULL, 0, &len);
    struct safetensors *st = parse_ok(buf, len);

    cr_assert_eq(st->ntensors, 0);
    cr_assert_null(safetensors_find(st, "x"));
    safetensors_free(st);
    free(buf);
}

Test(safetensors, refuses_truncated_and_oversized_header_lengths)
{
    uint8_t buf[16] = {0};
    struct safetensors *st = NULL;
    char *cause = NULL;

    cr_assert_eq(safetensors_parse(buf, 7, &st, &cause), -1);
    cr_assert_not_null(strstr(cause, "shorter than the 8-byte"));
    free(cause);
    buf[0] = 9; /* 9 header bytes, 8 present */
    cr_assert_eq(safetensors_parse(buf, 16, &st, &cause), -1);
    cr_assert_not_null(strstr(cause, "runs past the end"), "%s", cause);
    free(cause);
    memset(buf, 0xff, 8); /* 2^64 - 1 */
    cr_assert_eq(safetensors_parse(buf, 16, &st, &cause), -1);
    cr_assert_not_null(strstr(cause, "runs past the end"), "%s", cause);
    free(cause);
}

Test(safetensors, refuses_every_kind_of_bad_header)
{
    expect_bad("{\"a\":", 0, "not valid JSON");
    expect_bad("[1,2]", 0, "not a JSON object");
    expect_bad("\"x\"", 0, "not valid JSON"); /* jansson wants an object or array */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, "duplicate");
    expect_bad("{\"a\":7}", 0, "not a JSON object");
    expect_bad("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty name");
    expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "\"dtype\" missing");
    expect_bad("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               "unknown dtype \"Q4\"");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "\"shape\" missing");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
               "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
               "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               4, "9 dimensions");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,4]}}",
               4, "overflows");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
               "\"data_offsets\":[0,4]}}",
               4, "overflows");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}", 4,
               "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
               "outside the data area");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4,
               "outside the data area");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8,
               "need 8 bytes, data_offsets give 4");
    expect_bad("{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
               "need 6 bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, "overlap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, "overlap");
}

Test(safetensors, open_maps_a_file_and_names_it_in_errors)
{
    char path[] = "/tmp/akosha-st-XXXXXX";
    int fd = mkstemp(path);
    float v[2] = {3.0f, 4.0f};
    size_t len;
    uint8_t *buf = image("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", v, 8,
                         &len);
    struct safetensors *st = NULL;
    char *cause = NULL;

    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, buf, len), (ssize_t)len);
    close(fd);
    cr_assert_eq(safetensors_open(path, &st, &cause), 0, "%s", cause);
    float *w = safetensors_to_f32(st, safetensors_find(st, "w"), &cause);
    cr_assert(w[0] == 3.0f && w[1] == 4.0f);
    free(w);
    safetensors_free(st);

    cr_assert_eq(truncate(path, (off_t)len - 1), 0);
    cr_assert_eq(safetensors_open(path, &st, &cause), -1);
    cr_assert_not_null(strstr(cause, path));
    cr_assert_not_null(strstr(cause, "outside the data area"), "%s", cause);
    free(cause);
    cr_assert_eq(truncate(path, 3), 0);
    cr_assert_eq(safetensors_open(path, &st, &cause), -1);
    cr_assert_not_null(strstr(cause, "shorter"), "%s", cause);
    free(cause);
    unlink(path);
    cr_assert_eq(safetensors_open(path, &st, &cause), -1);
    cr_assert_not_null(strstr(cause, "No such file"), "%s", cause);
    free(cause);
    cr_assert_eq(safetensors_open("/tmp", &st, &cause), -1);
    cr_assert_not_null(strstr(cause, "not a regular file"), "%s", cause);
    free(cause);
    free(buf);
}
