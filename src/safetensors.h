/*
 * safetensors.h - a validating reader for .safetensors weight files.
 *
 * File layout: an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 * ..., "__metadata__": {...}}), then the data area the offsets point into.
 *
 * Everything is checked before any tensor is handed out: the header length
 * lies inside the file, the header is one JSON object without duplicate keys,
 * every dtype is known, every shape is a list of non-negative integers, every
 * [begin, end) lies inside the data area with end - begin == product(shape) *
 * dtype size (no overflow), and no two tensors overlap. "__metadata__" is
 * ignored. A bad file gives an error naming the tensor and the problem.
 *
 * All dtypes of the format are indexed (so a file with an I64 buffer such as
 * embeddings.position_ids loads), but only F32, F16 and BF16 convert to
 * float32; asking for another one is an error naming the dtype.
 *
 * Pure apart from safetensors_open, which reads the file (blocking I/O: call
 * it from a start-up or reload thread, never from the event loop). A loaded
 * file is immutable and may be read from several threads at once.
 */
#ifndef AKOSHA_SAFETENSORS_H
#define AKOSHA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define SAFETENSORS_MAX_DIMS 8
/* A header above this is refused rather than parsed (the format's own limit). */
#define SAFETENSORS_MAX_HEADER (100u * 1024 * 1024)

enum safetensors_dtype {
    SAFETENSORS_F32,
    SAFETENSORS_F16,
    SAFETENSORS_BF16,
    /* Known to the format, indexed, but not convertible to float32 here. */
    SAFETENSORS_F64,
    SAFETENSORS_I64,
    SAFETENSORS_I32,
    SAFETENSORS_I16,
    SAFETENSORS_I8,
    SAFETENSORS_U64,
    SAFETENSORS_U32,
    SAFETENSORS_U16,
    SAFETENSORS_U8,
    SAFETENSORS_BOOL,
    SAFETENSORS_F8_E4M3,
    SAFETENSORS_F8_E5M2,
};

struct safetensors_tensor {
    char *name;
    enum safetensors_dtype dtype;
    int ndim;
    uint64_t shape[SAFETENSORS_MAX_DIMS];
    uint64_t count;  /* product of shape (1 for a scalar) */
    uint64_t begin;  /* byte offsets into the data area */
    uint64_t end;
};

struct safetensors {
    const uint8_t *data; /* the data area: data[0..data_len) */
    size_t data_len;
    struct safetensors_tensor *tensors; /* sorted by name */
    size_t ntensors;
    void *map;      /* the mmap()ed file, or NULL when parsed from memory */
    size_t map_len;
};

/* "F32", "BF16", ... */
const char *safetensors_dtype_name(enum safetensors_dtype dtype);

/*
 * Parse and validate a whole file held in buf[0..len). The result points into
 * buf (which must outlive it) and is freed with safetensors_free. Returns 0,
 * or -1 with *cause set (caller frees) and *out untouched.
 */
int safetensors_parse(const uint8_t *buf, size_t len, struct safetensors **out, char **cause)
    __attribute__((warn_unused_result));

/*
 * Map path read-only and parse it as safetensors_parse does. The result owns
 * the mapping; safetensors_free unmaps it. Returns 0, or -1 with *cause set
 * (caller frees; it names the path).
 */
int safetensors_open(const char *path, struct safetensors **out, char **cause)
    __attribute__((warn_unused_result));

/* The tensor called name, or NULL. Points into st. */
const struct safetensors_tensor *safetensors_find(const struct safetensors *st, const char *name);

/*
 * A float32 copy of tensor t (F32, F16 or BF16), t->count values; the caller
 * frees it. Returns NULL with *cause set for any other dtype.
 */
float *safetensors_to_f32(const struct safetensors *st, const struct safetensors_tensor *t,
                          char **cause) __attribute__((warn_unused_result));

/* Converters, exposed for the tests: IEEE half and bfloat16 to float. */
float safetensors_f16_to_f32(uint16_t h);
float safetensors_bf16_to_f32(uint16_t b);

/* Free st (and unmap its file). NULL is fine. */
void safetensors_free(struct safetensors *st);

#endif
