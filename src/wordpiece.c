/*
 * wordpiece.c - Hugging Face's BERT tokenizer pipeline (see wordpiece.h).
 *
 * The rules are those of the Rust tokenizers library (normalizers/bert.rs,
 * pre_tokenizers/bert.rs, models/wordpiece), which is what every Python
 * sentence-transformers install runs:
 *
 *  - added tokens (normalized: false) are matched in the raw text first,
 *    leftmost-longest, and map to their id whole;
 *  - clean_text drops U+0000, U+FFFD and "control" characters (categories Cc,
 *    Cf and Co, except tab, LF and CR), then maps whitespace to a space. The
 *    drop comes first, so U+000B, U+000C and U+0085 (controls that are also
 *    whitespace) vanish rather than separate words. Unassigned code points
 *    (Cn) are kept;
 *  - handle_chinese_chars puts spaces around each code point of the CJK
 *    ideograph blocks, astral planes included (the library's table, which
 *    starts its Extension E range at U+2B920, not U+2B820);
 *  - strip_accents (default: the value of lowercase) is NFD, then removal of
 *    nonspacing marks (Mn);
 *  - lowercase maps each code point with the full Unicode lowercase mapping
 *    (U+0130 becomes "i" U+0307; every other mapping is one code point);
 *  - the pre-tokenizer splits on whitespace (the Unicode White_Space
 *    property) and isolates each punctuation character: Unicode P* or ASCII
 *    punctuation (so $ + < = > ^ ` | ~ count too);
 *  - WordPiece: a word of more than max_input_chars_per_word code points is the
 *    unknown token; otherwise greedy longest match first, pieces after the
 *    first carry the prefix, and a word with any unmatched remainder is the
 *    unknown token as a whole.
 *
 * Known residual difference: the library's category tables are those of an
 * older Unicode version; characters whose category changed or that were
 * assigned since (a few Cf, Mn and P* code points) can tokenize differently.
 */
#include "wordpiece.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "util.h"

#define MAX_SPECIAL_IDS 8
#define MAX_ADDED 64

struct vocab_slot {
    char *token; /* NULL: empty slot */
    size_t len;
    int32_t id;
};

struct added_token {
    char *content;
    size_t len;
    int32_t id;
};

struct wordpiece {
    struct vocab_slot *slots;
    size_t mask; /* slots: mask + 1, a power of two */
    size_t count;
    int32_t max_id;

    bool clean_text;
    bool chinese;
    bool strip_accents;
    bool lowercase;

    char *prefix;
    size_t prefix_len;
    int32_t unk_id;
    size_t max_chars;

    int32_t pre[MAX_SPECIAL_IDS]; /* ids before and after the text */
    size_t npre;
    int32_t post[MAX_SPECIAL_IDS];
    size_t npost;

    struct added_token added[MAX_ADDED];
    size_t nadded;
};

/* ---- vocabulary hash ------------------------------------------------------ */

static uint64_t
hash_bytes(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    }
    return h ^ (h >> 29);
}

static void
vocab_init(struct wordpiece *wp, size_t expected)
{
    size_t n = 64;

    while (n < expected * 2) {
        n *= 2;
    }
    wp->slots = xcalloc(n, sizeof(*wp->slots));
    wp->mask = n - 1;
    wp->max_id = -1;
}

/* Insert or overwrite (a later duplicate wins, as in the library's map). */
static void
vocab_put(struct wordpiece *wp, const char *token, size_t len, int32_t id)
{
    size_t i = hash_bytes(token, len) & wp->mask;

    while (wp->slots[i].token != NULL) {
        if (wp->slots[i].len == len && memcmp(wp->slots[i].token, token, len) == 0) {
            wp->slots[i].id = id;
            goto done;
        }
        i = (i + 1) & wp->mask;
    }
    wp->slots[i].token = xstrndup(token, len);
    wp->slots[i].len = len;
    wp->slots[i].id = id;
    wp->count++;
done:
    if (id > wp->max_id) {
        wp->max_id = id;
    }
}

static int32_t
vocab_get(const struct wordpiece *wp, const char *token, size_t len)
{
    size_t i = hash_bytes(token, len) & wp->mask;

    while (wp->slots[i].token != NULL) {
        if (wp->slots[i].len == len && memcmp(wp->slots[i].token, token, len) == 0) {
            return wp->slots[i].id;
        }
        i = (i + 1) & wp->mask;
    }
    return -1;
}

void
wordpiece_free(struct wordpiece *wp)
{
    if (wp == NULL) {
        return;
    }
    if (wp->slots != NULL) {
        for (size_t i = 0; i <= wp->mask; i++) {
            free(wp->slots[i].token);
        }
    }
    free(wp->slots);
    free(wp->prefix);
    for (size_t i = 0; i < wp->nadded; i++) {
        free(wp->added[i].content);
    }
    free(wp);
}

size_t
wordpiece_vocab_size(const struct wordpiece *wp)
{
    return (size_t)(wp->max_id + 1);
}

size_t
wordpiece_special_count(const struct wordpiece *wp)
{
    return wp->npre + wp->npost;
}

/* ---- loading -------------------------------------------------------------- */

static struct wordpiece *
wordpiece_new(void)
{
    struct wordpiece *wp = xcalloc(1, sizeof(*wp));

    wp->clean_text = true;
    wp->chinese = true;
    wp->strip_accents = true;
    wp->lowercase = true;
    wp->prefix = xstrdup("##");
    wp->prefix_len = 2;
    wp->max_chars = 100;
    return wp;
}

static void
add_token(struct wordpiece *wp, const char *content, int32_t id)
{
    wp->added[wp->nadded].content = xstrdup(content);
    wp->added[wp->nadded].len = strlen(content);
    wp->added[wp->nadded].id = id;
    wp->nadded++;
}

int
wordpiece_from_vocab(const char *buf, size_t len, struct wordpiece **out, char **cause)
{
    static const char *specials[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    struct wordpiece *wp = wordpiece_new();
    size_t lines = 1, pos = 0, line_len;
    int32_t id = 0, cls, sep;
    const char *nl;

    for (size_t i = 0; i < len; i++) {
        lines += buf[i] == '\n';
    }
    vocab_init(wp, lines);
    while (pos < len) {
        nl = memchr(buf + pos, '\n', len - pos);
        line_len = nl != NULL ? (size_t)(nl - (buf + pos)) : len - pos;
        if (line_len > 0 && buf[pos + line_len - 1] == '\r') {
            line_len--;
        }
        vocab_put(wp, buf + pos, line_len, id++);
        pos += (nl != NULL ? (size_t)(nl - (buf + pos)) + 1 : len - pos);
    }
    wp->unk_id = vocab_get(wp, "[UNK]", 5);
    cls = vocab_get(wp, "[CLS]", 5);
    sep = vocab_get(wp, "[SEP]", 5);
    if (wp->unk_id < 0 || cls < 0 || sep < 0) {
        *cause = xstrdup("vocab.txt lacks one of [UNK], [CLS], [SEP]");
        wordpiece_free(wp);
        return -1;
    }
    for (size_t i = 0; i < ARRAY_SIZE(specials); i++) {
        int32_t sid = vocab_get(wp, specials[i], strlen(specials[i]));
        if (sid >= 0) {
            add_token(wp, specials[i], sid);
        }
    }
    wp->pre[wp->npre++] = cls;
    wp->post[wp->npost++] = sep;
    *out = wp;
    return 0;
}

/* The "type" of a component object, or "null" / "(no type)" for the error message. */
static const char *
type_of(const json_t *v)
{
    const char *t;

    if (v == NULL || json_is_null(v)) {
        return "null";
    }
    t = json_string_value(json_object_get(v, "type"));
    return t != NULL ? t : "(no type)";
}

static int
get_bool(const json_t *obj, const char *key, bool *out, bool null_ok, char **cause)
{
    const json_t *v = json_object_get(obj, key);

    if (v == NULL || (null_ok && json_is_null(v))) {
        return 0;
    }
    if (!json_is_boolean(v)) {
        *cause = xasprintf("BertNormalizer \"%s\" is not a boolean", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int
load_normalizer(struct wordpiece *wp, const json_t *n, char **cause)
{
    const json_t *sa;

    if (n == NULL || json_is_null(n)) {
        wp->clean_text = wp->chinese = wp->strip_accents = wp->lowercase = false;
        return 0;
    }
    if (strcmp(type_of(n), "BertNormalizer") != 0) {
        *cause = xasprintf("normalizer \"%s\" is not supported (only BertNormalizer)", type_of(n));
        return -1;
    }
    if (get_bool(n, "clean_text", &wp->clean_text, false, cause) != 0 ||
        get_bool(n, "handle_chinese_chars", &wp->chinese, false, cause) != 0 ||
        get_bool(n, "lowercase", &wp->lowercase, false, cause) != 0) {
        return -1;
    }
    /* strip_accents null (or absent) follows lowercase. */
    wp->strip_accents = wp->lowercase;
    sa = json_object_get(n, "strip_accents");
    if (sa != NULL && !json_is_null(sa)) {
        if (!json_is_boolean(sa)) {
            *cause = xstrdup("BertNormalizer \"strip_accents\" is not a boolean or null");
            return -1;
        }
        wp->strip_accents = json_is_true(sa);
    }
    return 0;
}

static int
load_model(struct wordpiece *wp, const json_t *m, char **cause)
{
    const json_t *vocab, *v;
    const char *key, *unk;
    json_t *value;

    if (m == NULL || strcmp(type_of(m), "WordPiece") != 0) {
        *cause = xasprintf("model \"%s\" is not supported (only WordPiece)", type_of(m));
        return -1;
    }
    vocab = json_object_get(m, "vocab");
    if (!json_is_object(vocab) || json_object_size(vocab) == 0) {
        *cause = xstrdup("WordPiece \"vocab\" is missing or empty");
        return -1;
    }
    vocab_init(wp, json_object_size(vocab));
    json_object_foreach((json_t *)vocab, key, value)
    {
        if (!json_is_integer(value) || json_integer_value(value) < 0 ||
            json_integer_value(value) >= INT32_MAX) {
            *cause = xasprintf("WordPiece vocab entry \"%.64s\" has no valid id", key);
            return -1;
        }
        vocab_put(wp, key, strlen(key), (int32_t)json_integer_value(value));
    }
    if ((v = json_object_get(m, "continuing_subword_prefix")) != NULL && !json_is_null(v)) {
        if (!json_is_string(v)) {
            *cause = xstrdup("WordPiece \"continuing_subword_prefix\" is not a string");
            return -1;
        }
        free(wp->prefix);
        wp->prefix = xstrdup(json_string_value(v));
        wp->prefix_len = strlen(wp->prefix);
    }
    if ((v = json_object_get(m, "max_input_chars_per_word")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            *cause = xstrdup("WordPiece \"max_input_chars_per_word\" is not a non-negative integer");
            return -1;
        }
        wp->max_chars = (size_t)json_integer_value(v);
    }
    unk = json_string_value(json_object_get(m, "unk_token"));
    if (unk == NULL) {
        unk = "[UNK]";
    }
    wp->unk_id = vocab_get(wp, unk, strlen(unk));
    if (wp->unk_id < 0) {
        *cause = xasprintf("WordPiece unk_token \"%.64s\" is not in the vocabulary", unk);
        return -1;
    }
    return 0;
}

/* Append the ids of special token name (from TemplateProcessing's special_tokens). */
static int
template_special(struct wordpiece *wp, const json_t *specials, const json_t *item, bool after,
                 char **cause)
{
    const char *name = json_string_value(json_object_get(item, "id"));
    const json_t *ids = json_object_get(json_object_get(specials, name != NULL ? name : ""), "ids");
    int32_t *dst = after ? wp->post : wp->pre;
    size_t *n = after ? &wp->npost : &wp->npre;

    if (name == NULL || !json_is_array(ids)) {
        *cause = xstrdup("TemplateProcessing names a special token it does not define");
        return -1;
    }
    for (size_t i = 0; i < json_array_size(ids); i++) {
        const json_t *id = json_array_get(ids, i);
        if (*n == MAX_SPECIAL_IDS || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= INT32_MAX) {
            *cause = xasprintf("TemplateProcessing special token \"%.64s\" has bad ids", name);
            return -1;
        }
        dst[(*n)++] = (int32_t)json_integer_value(id);
    }
    return 0;
}

static int
load_post_processor(struct wordpiece *wp, const json_t *p, char **cause)
{
    const char *type = type_of(p);
    const json_t *single, *item, *inner;
    bool seen_a = false;

    if (strcmp(type, "null") == 0) {
        return 0;
    }
    if (strcmp(type, "BertProcessing") == 0) {
        const json_t *cls = json_array_get(json_object_get(p, "cls"), 1);
        const json_t *sep = json_array_get(json_object_get(p, "sep"), 1);
        if (!json_is_integer(cls) || !json_is_integer(sep) || json_integer_value(cls) < 0 ||
            json_integer_value(sep) < 0 || json_integer_value(cls) >= INT32_MAX ||
            json_integer_value(sep) >= INT32_MAX) {
            *cause = xstrdup("BertProcessing needs \"cls\" and \"sep\" as [token, id]");
            return -1;
        }
        wp->pre[wp->npre++] = (int32_t)json_integer_value(cls);
        wp->post[wp->npost++] = (int32_t)json_integer_value(sep);
        return 0;
    }
    if (strcmp(type, "TemplateProcessing") != 0) {
        *cause = xasprintf("post_processor \"%s\" is not supported "
                           "(only TemplateProcessing and BertProcessing)",
                           type);
        return -1;
    }
    single = json_object_get(p, "single");
    if (!json_is_array(single)) {
        *cause = xstrdup("TemplateProcessing has no \"single\" template");
        return -1;
    }
    for (size_t i = 0; i < json_array_size(single); i++) {
        item = json_array_get(single, i);
        if ((inner = json_object_get(item, "Sequence")) != NULL) {
            const char *which = json_string_value(json_object_get(inner, "id"));
            if (seen_a || which == NULL || strcmp(which, "A") != 0) {
                *cause = xstrdup("TemplateProcessing \"single\" must hold $A once");
                return -1;
            }
            seen_a = true;
        } else if ((inner = json_object_get(item, "SpecialToken")) != NULL) {
            if (template_special(wp, json_object_get(p, "special_tokens"), inner, seen_a,
                                 cause) != 0) {
                return -1;
            }
        } else {
            *cause = xstrdup("TemplateProcessing \"single\" holds an unknown piece");
            return -1;
        }
        if (json_integer_value(json_object_get(inner, "type_id")) != 0) {
            *cause = xstrdup("TemplateProcessing with a type_id other than 0 is not supported");
            return -1;
        }
    }
    if (!seen_a) {
        *cause = xstrdup("TemplateProcessing \"single\" must hold $A once");
        return -1;
    }
    return 0;
}

static int
load_added_tokens(struct wordpiece *wp, const json_t *list, char **cause)
{
    const json_t *t;
    const char *content;

    if (list == NULL || json_is_null(list)) {
        return 0;
    }
    if (!json_is_array(list)) {
        *cause = xstrdup("\"added_tokens\" is not an array");
        return -1;
    }
    for (size_t i = 0; i < json_array_size(list); i++) {
        t = json_array_get(list, i);
        content = json_string_value(json_object_get(t, "content"));
        if (content == NULL || content[0] == '\0' ||
            !json_is_integer(json_object_get(t, "id")) ||
            json_integer_value(json_object_get(t, "id")) < 0 ||
            json_integer_value(json_object_get(t, "id")) >= INT32_MAX) {
            *cause = xasprintf("added token %zu has no content or no valid id", i);
            return -1;
        }
        /* Options changing where a token matches are refused rather than half done. */
        if (json_is_true(json_object_get(t, "normalized")) ||
            json_is_true(json_object_get(t, "lstrip")) ||
            json_is_true(json_object_get(t, "rstrip")) ||
            json_is_true(json_object_get(t, "single_word"))) {
            *cause = xasprintf("added token \"%.64s\": normalized, lstrip, rstrip and "
                               "single_word are not supported",
                               content);
            return -1;
        }
        if (wp->nadded == MAX_ADDED) {
            *cause = xasprintf("more than %d added tokens", MAX_ADDED);
            return -1;
        }
        add_token(wp, content, (int32_t)json_integer_value(json_object_get(t, "id")));
        if (wp->added[wp->nadded - 1].id > wp->max_id) {
            wp->max_id = wp->added[wp->nadded - 1].id;
        }
    }
    return 0;
}

int
wordpiece_from_json(const char *buf, size_t len, struct wordpiece **out, char **cause)
{
    json_error_t jerr;
    json_t *root = json_loadb(buf, len, 0, &jerr);
    struct wordpiece *wp;

    if (root == NULL) {
        *cause = xasprintf("not valid JSON: %s (line %d)", jerr.text, jerr.line);
        return -1;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        *cause = xstrdup("not a JSON object");
        return -1;
    }
    wp = wordpiece_new();
    if (load_model(wp, json_object_get(root, "model"), cause) != 0 ||
        load_normalizer(wp, json_object_get(root, "normalizer"), cause) != 0) {
        goto fail;
    }
    if (strcmp(type_of(json_object_get(root, "pre_tokenizer")), "BertPreTokenizer") != 0) {
        *cause = xasprintf("pre_tokenizer \"%s\" is not supported (only BertPreTokenizer)",
                           type_of(json_object_get(root, "pre_tokenizer")));
        goto fail;
    }
    if (load_post_processor(wp, json_object_get(root, "post_processor"), cause) != 0 ||
        load_added_tokens(wp, json_object_get(root, "added_tokens"), cause) != 0) {
        goto fail;
    }
    json_decref(root);
    *out = wp;
    return 0;
fail:
    json_decref(root);
    wordpiece_free(wp);
    return -1;
}

static char *
read_file(const char *path, size_t *len, char **cause)
{
    FILE *f = fopen(path, "rb");
    struct buf b;
    char chunk[65536];
    size_t n;

    if (f == NULL) {
        int saved = errno;
        *cause = xasprintf("%s: %s", path, strerror(saved));
        errno = saved; /* the caller looks for ENOENT */
        return NULL;
    }
    buf_init(&b);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        buf_append(&b, chunk, n);
    }
    if (ferror(f)) {
        *cause = xasprintf("%s: read error", path);
        fclose(f);
        buf_free(&b);
        return NULL;
    }
    fclose(f);
    buf_putc(&b, '\0');
    *len = b.len - 1;
    return b.data;
}

/*
 * With a bare vocab.txt, transformers builds the normalizer from
 * tokenizer_config.json when there is one (a cased model says
 * "do_lower_case": false there); without it the uncased defaults stand.
 */
static int
apply_tokenizer_config(struct wordpiece *wp, const char *dir, char **cause)
{
    char *path = xasprintf("%s/tokenizer_config.json", dir);
    json_error_t jerr;
    json_t *cfg, *v;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        free(path);
        return 0;
    }
    cfg = json_loadf(f, 0, &jerr);
    fclose(f);
    if (!json_is_object(cfg)) {
        *cause = xasprintf("%s: not a JSON object", path);
        json_decref(cfg);
        free(path);
        return -1;
    }
    if (json_is_boolean(v = json_object_get(cfg, "do_lower_case"))) {
        wp->lowercase = json_is_true(v);
    }
    wp->strip_accents = wp->lowercase;
    if (json_is_boolean(v = json_object_get(cfg, "strip_accents"))) {
        wp->strip_accents = json_is_true(v);
    }
    if (json_is_boolean(v = json_object_get(cfg, "tokenize_chinese_chars"))) {
        wp->chinese = json_is_true(v);
    }
    json_decref(cfg);
    free(path);
    return 0;
}

int
wordpiece_load(const char *dir, struct wordpiece **out, char **cause)
{
    char *path = xasprintf("%s/tokenizer.json", dir);
    char *data, *why = NULL;
    size_t len;
    int rc;
    bool json = true;

    data = read_file(path, &len, &why);
    if (data == NULL && errno == ENOENT) {
        free(why);
        why = NULL;
        free(path);
        path = xasprintf("%s/vocab.txt", dir);
        json = false;
        data = read_file(path, &len, &why);
    }
    if (data == NULL) {
        *cause = why;
        free(path);
        return -1;
    }
    rc = json ? wordpiece_from_json(data, len, out, &why) : wordpiece_from_vocab(data, len, out, &why);
    if (rc != 0) {
        *cause = xasprintf("%s: %s", path, why);
        free(why);
    } else if (!json) {
        rc = apply_tokenizer_config(*out, dir, cause);
        if (rc != 0) {
            wordpiece_free(*out);
            *out = NULL;
        }
    }
    free(data);
    free(path);
    return rc;
}

/* ---- encoding ------------------------------------------------------------- */

static bool
is_rust_whitespace(int32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

static bool
is_control(int32_t c)
{
    utf8proc_category_t cat;

    if (c == '\t' || c == '\n' || c == '\r') {
        return false;
    }
    cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
           cat == UTF8PROC_CATEGORY_CO;
}

static bool
is_chinese(int32_t c)
{
    return (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3400 && c <= 0x4dbf) ||
           (c >= 0x20000 && c <= 0x2a6df) || (c >= 0x2a700 && c <= 0x2b73f) ||
           (c >= 0x2b740 && c <= 0x2b81f) || (c >= 0x2b920 && c <= 0x2ceaf) ||
           (c >= 0xf900 && c <= 0xfaff) || (c >= 0x2f800 && c <= 0x2fa1f);
}

static bool
is_punctuation(int32_t c)
{
    utf8proc_category_t cat;

    if ((c >= 0x21 && c <= 0x2f) || (c >= 0x3a && c <= 0x40) || (c >= 0x5b && c <= 0x60) ||
        (c >= 0x7b && c <= 0x7e)) {
        return true;
    }
    cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

/* Ids written so far into the text's part of the output, and the room it has. */
struct sink {
    int32_t *ids;
    size_t n;
    size_t cap;
};

/* A growable array of code points. */
struct cps {
    int32_t *v;
    size_t n;
    size_t cap;
};

static void
cps_push(struct cps *a, int32_t c)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, a->cap * sizeof(*a->v));
    }
    a->v[a->n++] = c;
}

/* Code points of text after clean_text and CJK spacing. */
static void
decode_clean(const struct wordpiece *wp, const char *text, size_t len, struct cps *out)
{
    size_t pos = 0;
    utf8proc_int32_t c;
    utf8proc_ssize_t step;

    while (pos < len) {
        step = utf8proc_iterate((const utf8proc_uint8_t *)text + pos, (utf8proc_ssize_t)(len - pos),
                                &c);
        if (step < 0) {
            c = 0xfffd;
            step = 1;
        }
        pos += (size_t)step;
        if (wp->clean_text) {
            if (c == 0 || c == 0xfffd || is_control(c)) {
                continue;
            }
            if (is_rust_whitespace(c)) {
                c = ' ';
            }
        }
        if (wp->chinese && is_chinese(c)) {
            cps_push(out, ' ');
            cps_push(out, c);
            cps_push(out, ' ');
        } else {
            cps_push(out, c);
        }
    }
}

/* NFD of in, then nonspacing marks removed; the result replaces in. */
static void
strip_accents(struct cps *in)
{
    struct buf utf8;
    utf8proc_uint8_t enc[4];
    utf8proc_ssize_t n, cap;
    int32_t *dec;
    size_t kept = 0;

    buf_init(&utf8);
    for (size_t i = 0; i < in->n; i++) {
        buf_append(&utf8, enc, (size_t)utf8proc_encode_char(in->v[i], enc));
    }
    cap = (utf8proc_ssize_t)in->n * 4 + 16;
    for (;;) {
        dec = xmalloc((size_t)cap * sizeof(*dec));
        n = utf8proc_decompose((const utf8proc_uint8_t *)utf8.data, (utf8proc_ssize_t)utf8.len, dec,
                               cap, UTF8PROC_DECOMPOSE);
        if (n <= cap) {
            break;
        }
        free(dec);
        cap = n;
    }
    buf_free(&utf8);
    if (n < 0) {
        /* Cannot happen: the input was encoded from valid code points above. */
        free(dec);
        return;
    }
    for (utf8proc_ssize_t i = 0; i < n; i++) {
        if (utf8proc_category(dec[i]) != UTF8PROC_CATEGORY_MN) {
            dec[kept++] = dec[i];
        }
    }
    free(in->v);
    in->v = dec;
    in->n = kept;
    in->cap = (size_t)cap;
}

static void
lowercase(struct cps *a)
{
    size_t extra = 0, j;

    for (size_t i = 0; i < a->n; i++) {
        extra += a->v[i] == 0x130;
    }
    if (extra > 0) {
        /* U+0130 is the one code point whose full lowercase mapping is two long. */
        int32_t *v = xmalloc((a->n + extra) * sizeof(*v));
        j = 0;
        for (size_t i = 0; i < a->n; i++) {
            if (a->v[i] == 0x130) {
                v[j++] = 'i';
                v[j++] = 0x307;
            } else {
                v[j++] = a->v[i];
            }
        }
        free(a->v);
        a->v = v;
        a->n = a->cap = j;
    }
    for (size_t i = 0; i < a->n; i++) {
        a->v[i] = utf8proc_tolower(a->v[i]);
    }
}

/* WordPiece of one word (code points w[0..n)); false once the sink is full. */
static bool
wordpiece_word(const struct wordpiece *wp, const int32_t *w, size_t n, struct sink *s,
               struct buf *scratch)
{
    size_t *bounds, start = 0, end, nbytes, npieces = 0;
    int32_t *pieces, id = -1;
    char *bytes, *key;
    bool ok = true;

    if (n > wp->max_chars) {
        if (s->n == s->cap) {
            return false;
        }
        s->ids[s->n++] = wp->unk_id;
        return true;
    }
    /* One allocation: boundaries, piece ids, the word's UTF-8, a key buffer. */
    buf_reserve(scratch, (n + 1) * sizeof(size_t) + n * sizeof(int32_t) + 2 * (4 * n + 1) +
                             wp->prefix_len + 16);
    bounds = (size_t *)(void *)scratch->data;
    pieces = (int32_t *)(void *)(bounds + n + 1);
    bytes = (char *)(pieces + n);
    nbytes = 0;
    for (size_t i = 0; i < n; i++) {
        bounds[i] = nbytes;
        nbytes += (size_t)utf8proc_encode_char(w[i], (utf8proc_uint8_t *)bytes + nbytes);
    }
    bounds[n] = nbytes;
    key = bytes + nbytes;

    while (start < n) {
        for (end = n; end > start; end--) {
            size_t klen = bounds[end] - bounds[start];
            if (start > 0) {
                memcpy(key, wp->prefix, wp->prefix_len);
                memcpy(key + wp->prefix_len, bytes + bounds[start], klen);
                klen += wp->prefix_len;
            } else {
                memcpy(key, bytes, klen);
            }
            id = vocab_get(wp, key, klen);
            if (id >= 0) {
                break;
            }
        }
        if (end == start) {
            ok = false;
            break;
        }
        pieces[npieces++] = id;
        start = end;
    }
    if (!ok) {
        pieces[0] = wp->unk_id;
        npieces = 1;
    }
    for (size_t i = 0; i < npieces; i++) {
        if (s->n == s->cap) {
            return false;
        }
        s->ids[s->n++] = pieces[i];
    }
    return true;
}

/* Normalise, pre-tokenize and WordPiece text[0..len); false once the sink is full. */
static bool
encode_segment(const struct wordpiece *wp, const char *text, size_t len, struct sink *s)
{
    struct cps a = {0};
    struct buf scratch;
    size_t i = 0, j;
    bool more = true;

    if (len == 0) {
        return true;
    }
    decode_clean(wp, text, len, &a);
    if (wp->strip_accents) {
        strip_accents(&a);
    }
    if (wp->lowercase) {
        lowercase(&a);
    }
    buf_init(&scratch);
    while (more && i < a.n) {
        if (is_rust_whitespace(a.v[i])) {
            i++;
            continue;
        }
        if (is_punctuation(a.v[i])) {
            more = wordpiece_word(wp, a.v + i, 1, s, &scratch);
            i++;
            continue;
        }
        for (j = i; j < a.n && !is_rust_whitespace(a.v[j]) && !is_punctuation(a.v[j]); j++) {
        }
        more = wordpiece_word(wp, a.v + i, j - i, s, &scratch);
        i = j;
    }
    buf_free(&scratch);
    free(a.v);
    return more;
}

/* The leftmost-longest added token in text[from..len): its index, or -1. */
static int
find_added(const struct wordpiece *wp, const char *text, size_t len, size_t from, size_t *at)
{
    for (size_t p = from; p < len; p++) {
        int best = -1;
        for (size_t k = 0; k < wp->nadded; k++) {
            const struct added_token *t = &wp->added[k];
            if (t->len <= len - p && memcmp(text + p, t->content, t->len) == 0 &&
                (best < 0 || t->len > wp->added[best].len)) {
                best = (int)k;
            }
        }
        if (best >= 0) {
            *at = p;
            return best;
        }
    }
    return -1;
}

size_t
wordpiece_encode(const struct wordpiece *wp, const char *text, size_t len, int32_t *ids,
                 size_t max_ids)
{
    size_t specials = wp->npre + wp->npost, pos = 0, at;
    struct sink s;
    int k;

    if (max_ids < specials) {
        return 0;
    }
    memcpy(ids, wp->pre, wp->npre * sizeof(*ids));
    s.ids = ids + wp->npre;
    s.n = 0;
    s.cap = max_ids - specials;
    while (pos <= len) {
        k = find_added(wp, text, len, pos, &at);
        if (k < 0) {
            encode_segment(wp, text + pos, len - pos, &s);
            break;
        }
        if (!encode_segment(wp, text + pos, at - pos, &s) || s.n == s.cap) {
            break;
        }
        s.ids[s.n++] = wp->added[k].id;
        pos = at + wp->added[k].len;
    }
    memcpy(s.ids + s.n, wp->post, wp->npost * sizeof(*ids));
    return wp->npre + s.n + wp->npost;
}
