/*
 * pbdec.h - a protobuf wire-format reader for the tests, written from the
 * encoding spec (varints, fixed64/32, length-delimited) independently of the
 * encoder in src/trace.c, so the tests check akosha's bytes against the
 * format rather than against itself. Also the fuzz harnesses' (static
 * inline: each includer uses a part).
 */
#ifndef AKOSHA_TEST_PBDEC_H
#define AKOSHA_TEST_PBDEC_H

#include <stddef.h>
#include <stdint.h>

struct pb_field {
    uint32_t num;
    int wire;   /* 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 */
    uint64_t v; /* varint and fixed values */
    const uint8_t *p; /* length-delimited bytes */
    size_t len;
};

static inline int
pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;

    for (int shift = 0; shift < 70; shift += 7) {
        if (*p >= end) {
            return -1;
        }
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* The next field at *p: 1 read, 0 at end, -1 malformed. */
static inline int
pb_next(const uint8_t **p, const uint8_t *end, struct pb_field *f)
{
    uint64_t key;

    if (*p == end) {
        return 0;
    }
    if (pb_read_varint(p, end, &key) < 0 || key >> 3 == 0 || key >> 3 > UINT32_MAX) {
        return -1;
    }
    f->num = (uint32_t)(key >> 3);
    f->wire = (int)(key & 7);
    f->p = NULL;
    f->len = 0;
    f->v = 0;
    switch (f->wire) {
    case 0:
        return pb_read_varint(p, end, &f->v) < 0 ? -1 : 1;
    case 1:
    case 5: {
        size_t n = f->wire == 1 ? 8 : 4;
        if ((size_t)(end - *p) < n) {
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            f->v |= (uint64_t)(*p)[i] << (8 * i);
        }
        *p += n;
        return 1;
    }
    case 2:
        if (pb_read_varint(p, end, &f->v) < 0 || f->v > (uint64_t)(end - *p)) {
            return -1;
        }
        f->p = *p;
        f->len = (size_t)f->v;
        *p += f->len;
        return 1;
    default:
        return -1;
    }
}

/* A Span message's shape: ids of the right sizes, known wire types. */
static inline int
pb_span_ok(const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    struct pb_field f;
    int rc, ids = 0;

    while ((rc = pb_next(&p, end, &f)) == 1) {
        if (f.num == 1 && (f.wire != 2 || f.len != 16)) {
            return 0;
        }
        if ((f.num == 2 || f.num == 4) && (f.wire != 2 || f.len != 8)) {
            return 0;
        }
        if ((f.num == 7 || f.num == 8) && f.wire != 1) {
            return 0;
        }
        ids += f.num == 1 || f.num == 2;
    }
    return rc == 0 && ids == 2;
}

/* Spans in an ExportTraceServiceRequest, or -1 when the bytes are not one. */
static inline long
pb_count_spans(const void *body, size_t len)
{
    const uint8_t *p = body, *end = p + len;
    struct pb_field rs, ss, sp;
    long n = 0;
    int rc;

    while ((rc = pb_next(&p, end, &rs)) == 1) {
        const uint8_t *q = rs.p, *qend = rs.p + rs.len;
        int rc2;
        if (rs.num != 1 || rs.wire != 2) {
            return -1;
        }
        while ((rc2 = pb_next(&q, qend, &ss)) == 1) {
            const uint8_t *r = ss.p, *rend = ss.p + ss.len;
            int rc3;
            if (ss.num != 2) {
                continue; /* the resource */
            }
            if (ss.wire != 2) {
                return -1;
            }
            while ((rc3 = pb_next(&r, rend, &sp)) == 1) {
                if (sp.num == 2) {
                    if (sp.wire != 2 || !pb_span_ok(sp.p, sp.len)) {
                        return -1;
                    }
                    n++;
                }
            }
            if (rc3 < 0) {
                return -1;
            }
        }
        if (rc2 < 0) {
            return -1;
        }
    }
    return rc < 0 ? -1 : n;
}

#endif
