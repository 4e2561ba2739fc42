/*
 * model.c - the model registry (see model.h).
 *
 * Lookups walk the config's few names: [model] names and aliases first, then
 * the names upstreams list. A config with hundreds of models would want a
 * hash; the configs this serves name a handful.
 */
#include "model.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

const struct model_config *
model_section(const struct config *cfg, const char *canonical)
{
    for (size_t i = 0; i < cfg->nmodels; i++) {
        if (strcmp(cfg->models[i].name, canonical) == 0) {
            return &cfg->models[i];
        }
    }
    return NULL;
}

const char *
model_canonical(const struct config *cfg, const char *name)
{
    if (name == NULL || *name == '\0') {
        return NULL;
    }
    for (size_t i = 0; i < cfg->nmodels; i++) {
        const struct model_config *m = &cfg->models[i];
        if (strcmp(m->name, name) == 0) {
            return m->name;
        }
        for (size_t j = 0; j < m->aliases.n; j++) {
            if (strcmp(m->aliases.names[j], name) == 0) {
                return m->name;
            }
        }
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct name_list *l = &cfg->upstreams[i].models;
        for (size_t j = 0; j < l->n; j++) {
            if (strcmp(l->names[j], name) == 0) {
                return l->names[j];
            }
        }
    }
    return NULL;
}

bool
model_names_configured(const struct config *cfg)
{
    if (cfg->nmodels > 0) {
        return true;
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (cfg->upstreams[i].models.n > 0) {
            return true;
        }
    }
    return false;
}

bool
model_open_upstream(const struct config *cfg)
{
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (cfg->upstreams[i].models.n == 0) {
            return true;
        }
    }
    return false;
}

bool
model_upstream_serves(const struct config *cfg, const struct upstream_config *uc,
                      const char *canonical, const char **remote)
{
    if (remote != NULL) {
        *remote = NULL;
    }
    if (uc->models.n == 0) {
        return true; /* serves any model, under the caller's name for it */
    }
    if (canonical == NULL) {
        return false;
    }
    for (size_t j = 0; j < uc->models.n; j++) {
        /* canon is filled when the config is validated; cfg is only its fallback */
        const char *c = uc->models.canon[j] != NULL ? uc->models.canon[j]
                                                    : model_canonical(cfg, uc->models.names[j]);
        if (c == canonical || (c != NULL && strcmp(c, canonical) == 0)) {
            if (remote != NULL) {
                *remote = uc->models.remotes[j];
            }
            return true;
        }
    }
    return false;
}

/* ---- the model list ---------------------------------------------------------- */

static void
list_entry(enum model_list_shape shape, const char *name, const char *canonical,
           const char *when, int64_t created_unix, bool first, struct buf *out)
{
    if (!first) {
        buf_putc(out, ',');
    }
    if (shape == MODEL_LIST_OPENAI) {
        buf_puts(out, "{\"id\":");
        buf_json_string(out, name, strlen(name));
        buf_printf(out, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"akosha\"}",
                   (long long)created_unix);
        return;
    }
    buf_puts(out, "{\"name\":");
    buf_json_string(out, name, strlen(name));
    buf_puts(out, ",\"model\":");
    buf_json_string(out, name, strlen(name));
    buf_printf(out, ",\"modified_at\":\"%s\",\"size\":0,\"digest\":\"\",\"details\":"
                    "{\"parent_model\":",
               when);
    buf_json_string(out, canonical, strlen(canonical));
    buf_puts(out, ",\"format\":\"\",\"family\":\"\",\"families\":null,\"parameter_size\":\"\","
                  "\"quantization_level\":\"\"}}");
}

void
model_list_json(const struct config *cfg, enum model_list_shape shape, int64_t created_unix,
                struct buf *out)
{
    char when[32];
    bool first = true;
    time_t t = (time_t)created_unix;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    buf_puts(out, shape == MODEL_LIST_OPENAI ? "{\"object\":\"list\",\"data\":[" : "{\"models\":[");
    for (size_t i = 0; i < cfg->nmodels; i++) {
        const struct model_config *m = &cfg->models[i];
        list_entry(shape, m->name, m->name, when, created_unix, first, out);
        first = false;
        for (size_t j = 0; j < m->aliases.n; j++) {
            if (model_canonical(cfg, m->aliases.names[j]) == m->name) {
                list_entry(shape, m->aliases.names[j], m->name, when, created_unix, false, out);
            }
        }
    }
    /* Models only upstreams name: each canonical name once, where it first appears. */
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct name_list *l = &cfg->upstreams[i].models;
        for (size_t j = 0; j < l->n; j++) {
            if (model_canonical(cfg, l->names[j]) == l->names[j]) {
                list_entry(shape, l->names[j], l->names[j], when, created_unix, first, out);
                first = false;
            }
        }
    }
    buf_puts(out, "]}");
}

/* ---- learned dimensions ---------------------------------------------------- */

struct learned {
    char model[128];
    unsigned dimensions;
    uint64_t checked_ms; /* when an answer was last counted (or claimed to be) */
    uint64_t uses;       /* answers it was learned from and fallback answers it sized */
    uint64_t used_ms;    /* the last of those */
};

static pthread_mutex_t learned_lock = PTHREAD_MUTEX_INITIALIZER;
static struct learned learned[MODEL_LEARNED_MAX];
static size_t nlearned;

static struct learned *
learned_find(const char *model)
{
    for (size_t i = 0; i < nlearned; i++) {
        if (strcmp(learned[i].model, model) == 0) {
            return &learned[i];
        }
    }
    return NULL;
}

/*
 * The slot a new model takes when the table is full: the least used, the
 * longest unused among equals. A flood of made-up names (one answer each)
 * then evicts its own kind, never a model callers keep using.
 */
static struct learned *
learned_victim(void)
{
    struct learned *victim = &learned[0];

    for (size_t i = 1; i < nlearned; i++) {
        struct learned *l = &learned[i];
        if (l->uses < victim->uses || (l->uses == victim->uses && l->used_ms < victim->used_ms)) {
            victim = l;
        }
    }
    return victim;
}

unsigned
model_learned_dim(const char *model, uint64_t now_ms)
{
    struct learned *l;
    unsigned d = 0;

    pthread_mutex_lock(&learned_lock);
    l = learned_find(model);
    if (l != NULL) {
        d = l->dimensions;
        l->uses++;
        l->used_ms = now_ms;
    }
    pthread_mutex_unlock(&learned_lock);
    return d;
}

void
model_learn_dim(const char *model, unsigned dim, uint64_t now_ms)
{
    struct learned *l;

    if (strlen(model) >= sizeof(learned[0].model) || dim == 0 || dim > 65536) {
        return;
    }
    pthread_mutex_lock(&learned_lock);
    l = learned_find(model);
    if (l == NULL) {
        l = nlearned == MODEL_LEARNED_MAX ? learned_victim() : &learned[nlearned++];
        snprintf(l->model, sizeof(l->model), "%s", model);
        l->dimensions = 0;
        l->uses = 0;
    }
    if (l->dimensions != dim) {
        log_info("model '%s': learned %u dimensions from an upstream answer", model, dim);
    }
    l->dimensions = dim;
    l->checked_ms = now_ms;
    l->uses++;
    l->used_ms = now_ms;
    pthread_mutex_unlock(&learned_lock);
}

bool
model_dim_due(const char *model, uint64_t now_ms)
{
    struct learned *l;
    bool due;

    pthread_mutex_lock(&learned_lock);
    l = learned_find(model);
    due = l == NULL || now_ms - l->checked_ms >= MODEL_LEARNED_REFRESH_MS;
    if (l != NULL && due) {
        l->checked_ms = now_ms;
    }
    pthread_mutex_unlock(&learned_lock);
    return due;
}

unsigned
model_learned_peek(const char *model)
{
    struct learned *l;
    unsigned d;

    pthread_mutex_lock(&learned_lock);
    l = learned_find(model);
    d = l != NULL ? l->dimensions : 0;
    pthread_mutex_unlock(&learned_lock);
    return d;
}

void
model_learned_reset(void)
{
    pthread_mutex_lock(&learned_lock);
    nlearned = 0;
    pthread_mutex_unlock(&learned_lock);
}
