/*
 * test_docs.c - man/akosha.conf.5 and conf/akosha.conf against config_table:
 * every key documented in its section with the code's type and default, no
 * key the code lacks, and a sample file that loads as it is.
 *
 * The files are found under $AKOSHA_SRCDIR (make check sets it), else ".".
 * Conventions the two files follow are described at the top of each.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

/* One key as a document shows it. */
struct doc_key {
    int section; /* enum config_section_kind */
    char *key;
    char *type;   /* man page: the word after Ar; NULL in the sample file */
    char *def;    /* man page: from "Default:"; sample file: the value */
    bool has_def; /* a default (or value) was written */
    bool says_no_default;
    bool says_restart; /* man page */
    bool commented;    /* sample file: "# key = value" */
    bool has_help;     /* sample file: a comment line right above */
    int line;
};

struct doc {
    struct doc_key *keys;
    size_t n;
};

static void
doc_free(struct doc *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->keys[i].key);
        free(d->keys[i].type);
        free(d->keys[i].def);
    }
    free(d->keys);
    d->keys = NULL;
    d->n = 0;
}

static struct doc_key *
doc_add(struct doc *d, int section, const char *key, size_t keylen, int line)
{
    struct doc_key *k;

    d->keys = xrealloc(d->keys, (d->n + 1) * sizeof(*d->keys));
    k = &d->keys[d->n++];
    memset(k, 0, sizeof(*k));
    k->section = section;
    k->key = xstrndup(key, keylen);
    k->line = line;
    return k;
}

/* The file under the source tree; caller owns the text. */
static char *
read_doc(const char *rel)
{
    const char *dir = getenv("AKOSHA_SRCDIR");
    char *path = xasprintf("%s/%s", dir != NULL && *dir != '\0' ? dir : ".", rel);
    FILE *f = fopen(path, "r");
    struct buf b;
    char chunk[4096];
    size_t n;

    cr_assert_not_null(f, "cannot open %s (set AKOSHA_SRCDIR to the source tree)", path);
    buf_init(&b);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        buf_append(&b, chunk, n);
    }
    buf_putc(&b, '\0');
    fclose(f);
    free(path);
    return b.data;
}

/* Section by its name as the file spells it, or SEC_COUNT. */
static int
section_by_name(const char *name, size_t len)
{
    for (int s = 0; s < SEC_COUNT; s++) {
        const char *sn = config_section_name(s);
        if (strlen(sn) == len && strncmp(sn, name, len) == 0) {
            return s;
        }
    }
    return SEC_COUNT;
}

static size_t
word_len(const char *s)
{
    size_t n = 0;

    while (s[n] != '\0' && !isspace((unsigned char)s[n]) && s[n] != ']') {
        n++;
    }
    return n;
}

/* Split text into lines in place; returns the count. */
static size_t
split_lines(char *text, char ***out)
{
    size_t n = 0;
    char **lines = NULL;
    char *p = text;

    while (*p != '\0') {
        char *nl = strchr(p, '\n');
        lines = xrealloc(lines, (n + 1) * sizeof(char *));
        lines[n++] = p;
        if (nl == NULL) {
            break;
        }
        *nl = '\0';
        p = nl + 1;
    }
    *out = lines;
    return n;
}

/*
 * The man page: ".Ss Bo SECTION ..." opens a section, ".It Cm KEY Ar TYPE" a
 * key; "Default:" then ".Ql VALUE ." gives the default; "No default" says
 * there is none.
 */
static void
parse_man(char *text, struct doc *d)
{
    char **lines;
    size_t n = split_lines(text, &lines);
    int section = SEC_COUNT;
    struct doc_key *cur = NULL;

    memset(d, 0, sizeof(*d));
    for (size_t i = 0; i < n; i++) {
        const char *l = lines[i];
        if (strncmp(l, ".Sh ", 4) == 0 || strncmp(l, ".Ss ", 4) == 0) {
            section = SEC_COUNT;
            cur = NULL;
            if (strncmp(l, ".Ss Bo ", 7) == 0) {
                section = section_by_name(l + 7, word_len(l + 7));
            }
            continue;
        }
        if (strncmp(l, ".It", 3) == 0 || strncmp(l, ".El", 3) == 0) {
            cur = NULL;
            if (section != SEC_COUNT && strncmp(l, ".It Cm ", 7) == 0) {
                const char *key = l + 7;
                size_t klen = word_len(key);
                cur = doc_add(d, section, key, klen, (int)i + 1);
                if (strncmp(key + klen, " Ar ", 4) == 0) {
                    cur->type = xstrdup(key + klen + 4);
                }
            }
            continue;
        }
        if (cur == NULL) {
            continue;
        }
        if (strcmp(l, "Default:") == 0 && i + 1 < n && strncmp(lines[i + 1], ".Ql ", 4) == 0) {
            const char *v = lines[i + 1] + 4;
            size_t vlen = strlen(v);
            if (vlen >= 2 && strcmp(v + vlen - 2, " .") == 0) {
                vlen -= 2;
            }
            if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
                v++;
                vlen -= 2;
            }
            free(cur->def);
            cur->def = xstrndup(v, vlen);
            cur->has_def = true;
            i++;
            continue;
        }
        if (strstr(l, "No default") != NULL) {
            cur->says_no_default = true;
        }
        if (strstr(l, "restart") != NULL) {
            cur->says_restart = true;
        }
    }
    free(lines);
}

/* "key = value" or "key =" after the comment mark; key length or 0. */
static size_t
key_line(const char *s, const char **value)
{
    size_t k = 0;

    if (!islower((unsigned char)s[0])) {
        return 0;
    }
    while (islower((unsigned char)s[k]) || isdigit((unsigned char)s[k]) || s[k] == '_') {
        k++;
    }
    if (strcmp(s + k, " =") == 0) {
        *value = s + k + 2;
        return k;
    }
    if (strncmp(s + k, " = ", 3) == 0) {
        *value = s + k + 3;
        return k;
    }
    return 0;
}

/*
 * The sample file: "[SECTION ...]" or "# [SECTION ...]" opens a section;
 * "key = value" or "# key = value" within it is a key; the line above a key
 * must be a comment that is neither.
 */
static void
parse_conf(char *text, struct doc *d)
{
    char **lines;
    size_t n = split_lines(text, &lines);
    int section = SEC_COUNT;
    bool prev_help = false;

    memset(d, 0, sizeof(*d));
    for (size_t i = 0; i < n; i++) {
        const char *l = lines[i];
        bool commented = l[0] == '#';
        const char *s = l;
        const char *value;
        size_t klen;

        if (commented) {
            s++;
            while (*s == ' ') {
                s++;
            }
        }
        if (*s == '[') {
            section = section_by_name(s + 1, word_len(s + 1));
            prev_help = false;
            continue;
        }
        klen = key_line(s, &value);
        if (klen > 0 && section != SEC_COUNT) {
            struct doc_key *k = doc_add(d, section, s, klen, (int)i + 1);
            k->def = xstrdup(value);
            k->has_def = true;
            k->commented = commented;
            k->has_help = prev_help;
            k->says_no_default = prev_help && strstr(lines[i - 1], "no default") != NULL;
            prev_help = false;
            continue;
        }
        prev_help = commented && *s != '\0' && klen == 0;
    }
    free(lines);
}

static const char *
type_word(const struct config_key *k)
{
    switch (k->type) {
    case CT_STRING:
        return "string";
    case CT_INT:
        return "integer";
    case CT_DOUBLE:
        return "number";
    case CT_BOOL:
        return "boolean";
    case CT_DURATION:
        return "duration";
    case CT_SIZE:
        return "size";
    case CT_PERCENT:
        return "percent";
    case CT_LISTEN:
        return "address";
    case CT_URL:
        return "url";
    case CT_HEADER:
        return "header";
    case CT_ENUM:
        return k->enum_values;
    case CT_MODE:
        return "mode";
    case CT_LIST:
        return "list";
    }
    return "?";
}

/* Entries of d for the table row k; *count says how many. */
static struct doc_key *
find(const struct doc *d, const struct config_key *k, int *count)
{
    struct doc_key *first = NULL;

    *count = 0;
    for (size_t i = 0; i < d->n; i++) {
        if (d->keys[i].section == (int)k->section && strcmp(d->keys[i].key, k->name) == 0) {
            if (first == NULL) {
                first = &d->keys[i];
            }
            (*count)++;
        }
    }
    return first;
}

/* Every way the man page differs from the table, one line each. Returns the count. */
static int
check_man(const struct doc *d, struct buf *out)
{
    int problems = 0;

    for (size_t i = 0; i < config_table_len; i++) {
        const struct config_key *k = &config_table[i];
        const char *sec = config_section_name(k->section);
        int count;
        struct doc_key *e = find(d, k, &count);

        if (e == NULL) {
            buf_printf(out, "[%s] %s: not documented\n", sec, k->name);
            problems++;
            continue;
        }
        if (count > 1) {
            buf_printf(out, "[%s] %s: documented %d times\n", sec, k->name, count);
            problems++;
        }
        if (e->type == NULL || strcmp(e->type, type_word(k)) != 0) {
            buf_printf(out, "[%s] %s: type '%s', the code says '%s'\n", sec, k->name,
                       e->type ? e->type : "(none)", type_word(k));
            problems++;
        }
        if (k->def != NULL && (!e->has_def || strcmp(e->def, k->def) != 0)) {
            buf_printf(out, "[%s] %s: default '%s', the code says '%s'\n", sec, k->name,
                       e->has_def ? e->def : "(none)", k->def);
            problems++;
        }
        if (k->def == NULL && (e->has_def || !e->says_no_default)) {
            buf_printf(out, "[%s] %s: the code has no default; say \"No default\"\n", sec, k->name);
            problems++;
        }
        if (e->says_restart == k->reloadable) {
            buf_printf(out, "[%s] %s: %s\n", sec, k->name,
                       k->reloadable ? "reloads, but the page says it needs a restart"
                                     : "needs a restart, and the page does not say so");
            problems++;
        }
    }
    for (size_t i = 0; i < d->n; i++) {
        if (config_key_index(d->keys[i].section, d->keys[i].key) < 0) {
            buf_printf(out, "line %d: [%s] %s: no such key in the code\n", d->keys[i].line,
                       config_section_name(d->keys[i].section), d->keys[i].key);
            problems++;
        }
    }
    return problems;
}

/* Every way the sample file differs from the table, one line each. Returns the count. */
static int
check_conf(const struct doc *d, struct buf *out)
{
    int problems = 0;

    for (size_t i = 0; i < config_table_len; i++) {
        const struct config_key *k = &config_table[i];
        const char *sec = config_section_name(k->section);
        int count;
        struct doc_key *e = find(d, k, &count);

        if (e == NULL) {
            buf_printf(out, "[%s] %s: missing\n", sec, k->name);
            problems++;
            continue;
        }
        if (count > 1) {
            buf_printf(out, "[%s] %s: listed %d times\n", sec, k->name, count);
            problems++;
        }
        if (!e->has_help) {
            buf_printf(out, "line %d: [%s] %s: no comment line above it\n", e->line, sec, k->name);
            problems++;
        }
        if (k->def != NULL && strcmp(e->def, k->def) != 0) {
            buf_printf(out, "line %d: [%s] %s: default '%s', the code says '%s'\n", e->line, sec,
                       k->name, e->def, k->def);
            problems++;
        }
        if (k->def == NULL && (!e->commented || !e->says_no_default)) {
            buf_printf(out,
                       "line %d: [%s] %s: the code has no default; comment the example out "
                       "and say \"no default\" above it\n",
                       e->line, sec, k->name);
            problems++;
        }
    }
    for (size_t i = 0; i < d->n; i++) {
        if (config_key_index(d->keys[i].section, d->keys[i].key) < 0) {
            buf_printf(out, "line %d: [%s] %s: no such key in the code\n", d->keys[i].line,
                       config_section_name(d->keys[i].section), d->keys[i].key);
            problems++;
        }
    }
    return problems;
}

static int
check_man_text(const char *text, struct buf *out)
{
    char *copy = xstrdup(text);
    struct doc d;
    int problems;

    parse_man(copy, &d);
    problems = check_man(&d, out);
    doc_free(&d);
    free(copy);
    return problems;
}

static int
check_conf_text(const char *text, struct buf *out)
{
    char *copy = xstrdup(text);
    struct doc d;
    int problems;

    parse_conf(copy, &d);
    problems = check_conf(&d, out);
    doc_free(&d);
    free(copy);
    return problems;
}

/* text with the first occurrence of from replaced by to; caller owns it. */
static char *
replace(const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);

    cr_assert_not_null(at, "'%s' not found in the document", from);
    return xasprintf("%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
}

/* An empty, NUL-terminated buffer, so a check that finds nothing still prints. */
static void
out_reset(struct buf *out, bool first)
{
    if (first) {
        buf_init(out);
    }
    buf_append(out, "", 0);
    out->len = 0;
    out->data[0] = '\0';
}

/* ---- the man page ------------------------------------------------------ */

Test(docs, man_page_documents_every_key_with_its_section_type_and_default)
{
    char *text = read_doc("man/akosha.conf.5");
    struct buf out;
    int problems;

    out_reset(&out, true);
    problems = check_man_text(text, &out);
    cr_expect_eq(problems, 0, "man/akosha.conf.5 differs from config_table:\n%s", out.data);
    buf_free(&out);
    free(text);
}

Test(docs, man_page_check_catches_a_changed_default)
{
    char *text = read_doc("man/akosha.conf.5");
    char *bad = replace(text, "Default:\n.Ql 16M .", "Default:\n.Ql 32M .");
    struct buf out;

    out_reset(&out, true);
    cr_expect_eq(check_man_text(bad, &out), 1);
    cr_expect_not_null(strstr(out.data, "[proxy] max_body_size: default '32M'"), "%s", out.data);
    buf_free(&out);
    free(bad);
    free(text);
}

Test(docs, man_page_check_catches_a_missing_key_and_a_wrong_section)
{
    char *text = read_doc("man/akosha.conf.5");
    char *bad = replace(text, ".It Cm drain_timeout Ar duration", ".It Cm drain_time Ar duration");
    char *moved = replace(text, ".It Cm tls_verify Ar boolean",
                          ".El\n.Ss Bo proxy Bc\n"
                          ".Bl -tag -width Ds\n"
                          ".It Cm tls_verify Ar boolean");
    struct buf out;

    out_reset(&out, true);
    cr_expect_eq(check_man_text(bad, &out), 2);
    cr_expect_not_null(strstr(out.data, "[proxy] drain_timeout: not documented"), "%s", out.data);
    cr_expect_not_null(strstr(out.data, "[proxy] drain_time: no such key"), "%s", out.data);
    out_reset(&out, false);
    cr_expect_geq(check_man_text(moved, &out), 2);
    cr_expect_not_null(strstr(out.data, "[upstream] tls_verify: not documented"), "%s", out.data);
    buf_free(&out);
    free(moved);
    free(bad);
    free(text);
}

Test(docs, man_page_check_catches_a_wrong_type_and_a_missing_restart_note)
{
    char *text = read_doc("man/akosha.conf.5");
    char *bad = replace(text,
                        ".It Cm queue_size Ar integer\n"
                        "Jobs that may wait for a worker; beyond it the answer is 503 with\n"
                        ".Ql Retry-After .\nA change needs a restart.",
                        ".It Cm queue_size Ar number\n"
                        "Jobs that may wait for a worker; beyond it the answer is 503 with\n"
                        ".Ql Retry-After .");
    struct buf out;

    out_reset(&out, true);
    cr_expect_eq(check_man_text(bad, &out), 2);
    cr_expect_not_null(strstr(out.data, "[fallback] queue_size: type 'number'"), "%s", out.data);
    cr_expect_not_null(strstr(out.data, "[fallback] queue_size: needs a restart"), "%s",
                       out.data);
    buf_free(&out);
    free(bad);
    free(text);
}

/* ---- the sample file --------------------------------------------------- */

Test(docs, sample_config_lists_every_key_with_its_default_in_its_section)
{
    char *text = read_doc("conf/akosha.conf");
    struct buf out;
    int problems;

    out_reset(&out, true);
    problems = check_conf_text(text, &out);
    cr_expect_eq(problems, 0, "conf/akosha.conf differs from config_table:\n%s", out.data);
    buf_free(&out);
    free(text);
}

Test(docs, sample_config_check_catches_a_changed_default_and_a_missing_key)
{
    char *text = read_doc("conf/akosha.conf");
    char *changed = replace(text, "# open_timeout = 60s", "# open_timeout = 30s");
    char *missing = replace(text, "# queue_size = 1024\n", "");
    char *moved = replace(text, "[telemetry]\n",
                          "[telemetry]\n# drain timeout\n"
                          "# drain_timeout = 30s\n");
    struct buf out;

    out_reset(&out, true);
    cr_expect_eq(check_conf_text(changed, &out), 1);
    cr_expect_not_null(strstr(out.data, "[upstream] open_timeout: default '30s'"), "%s", out.data);
    out_reset(&out, false);
    cr_expect_eq(check_conf_text(missing, &out), 1);
    cr_expect_not_null(strstr(out.data, "[fallback] queue_size: missing"), "%s", out.data);
    out_reset(&out, false);
    cr_expect_eq(check_conf_text(moved, &out), 1);
    cr_expect_not_null(strstr(out.data, "[telemetry] drain_timeout: no such key"), "%s", out.data);
    buf_free(&out);
    free(moved);
    free(missing);
    free(changed);
    free(text);
}

Test(docs, sample_config_check_wants_a_comment_above_each_key)
{
    char *text = read_doc("conf/akosha.conf");
    char *bad = replace(text, "# largest backoff cap\n", "");
    struct buf out;

    out_reset(&out, true);
    cr_expect_eq(check_conf_text(bad, &out), 1);
    cr_expect_not_null(strstr(out.data, "[upstream] backoff_max: no comment line"), "%s", out.data);
    buf_free(&out);
    free(bad);
    free(text);
}

Test(docs, sample_config_loads_as_it_is_and_serves_from_the_fallback)
{
    const char *dir = getenv("AKOSHA_SRCDIR");
    char *path = xasprintf("%s/conf/akosha.conf", dir != NULL && *dir != '\0' ? dir : ".");
    struct config_errors errs = {0};
    struct config *cfg = config_load(path, &errs, NULL);

    cr_assert_not_null(cfg, "%s: %s", path, errs.n > 0 ? errs.msgs[0] : "?");
    cr_expect_eq(cfg->nupstreams, 0);
    cr_expect_eq(cfg->nmodels, 0);
    cr_expect_eq(cfg->fallback.mode, FALLBACK_AUTO);
    cr_expect_str_eq(cfg->proxy.listen.text, "127.0.0.1:8080");
    cr_expect_str_eq(cfg->admin.listen.text, "127.0.0.1:3002");
    config_free(cfg);
    config_errors_free(&errs);
    free(path);
}

static const char *cred_dir;

static const char *
example_getenv(const char *name)
{
    if (strcmp(name, "CREDENTIALS_DIRECTORY") == 0) {
        return cred_dir;
    }
    return getenv(name);
}

/* Uncommenting any line of the sample file must give a valid file. */
Test(docs, sample_config_example_values_parse)
{
    char *text = read_doc("conf/akosha.conf");
    char tmpl[] = "/tmp/akosha-docs-XXXXXX";
    char *cred;
    FILE *f;
    struct doc d;

    cred_dir = mkdtemp(tmpl);
    cr_assert_not_null(cred_dir);
    cred = xasprintf("%s/openai_key", cred_dir);
    f = fopen(cred, "w");
    cr_assert_not_null(f);
    fputs("sk-test\n", f);
    fclose(f);

    parse_conf(text, &d);
    cr_assert_gt(d.n, 0);
    for (size_t i = 0; i < d.n; i++) {
        const struct doc_key *e = &d.keys[i];
        int idx = config_key_index(e->section, e->key);
        struct config_errors errs = {0};
        struct config *cfg;
        char *snippet;

        /* Strings always parse; tls_ca_file names a file only a real install has. */
        if (idx < 0 || config_table[idx].type == CT_STRING) {
            continue;
        }
        if (e->section == SEC_UPSTREAM) {
            snippet = xasprintf("[upstream u]\n%s%s = %s\n",
                                strcmp(e->key, "url") == 0 ? "" : "url = http://127.0.0.1:1\n",
                                e->key, e->def);
        } else if (e->section == SEC_MODEL) {
            snippet = xasprintf("[model m]\n%s = %s\n", e->key, e->def);
        } else {
            snippet = xasprintf("[%s]\n%s = %s\n", config_section_name(e->section), e->key, e->def);
        }
        cfg = config_parse("conf/akosha.conf", snippet, strlen(snippet), &errs, example_getenv);
        cr_expect_not_null(cfg, "line %d: %s = %s: %s", e->line, e->key, e->def,
                           errs.n > 0 ? errs.msgs[0] : "?");
        if (cfg != NULL) {
            config_free(cfg);
        }
        config_errors_free(&errs);
        free(snippet);
    }
    doc_free(&d);
    unlink(cred);
    rmdir(cred_dir);
    free(cred);
    free(text);
}
