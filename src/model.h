/*
 * model.h - the model registry: which model (vector space) a request is
 * for, which upstreams serve it and what each calls it, and the vector
 * sizes learned from real answers.
 *
 * Names come from the config: [model NAME] sections with their aliases,
 * [upstream] models lists (NAME or NAME=REMOTE) and [proxy] default_model.
 * A model's canonical name is its [model] section's name, else the name an
 * upstream lists. Everything here but the learned table is a pure function
 * of a config; the learned table is shared by every thread, under its own
 * lock, and outlives reloads.
 */
#ifndef AKOSHA_MODEL_H
#define AKOSHA_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/*
 * The canonical name of the model a caller calls name (a [model] name or
 * alias, or a name an upstream lists), NULL when the config names no such
 * model. The result is owned by cfg.
 */
const char *model_canonical(const struct config *cfg, const char *name);
/* The [model] section of canonical, NULL when it has none. */
const struct model_config *model_section(const struct config *cfg, const char *canonical);
/* Whether the config names any model (an upstream's models, or a [model] section). */
bool model_names_configured(const struct config *cfg);
/* Whether some upstream serves any model (has no models list). */
bool model_open_upstream(const struct config *cfg);
/*
 * Whether uc serves the model canonical (NULL: a request that names no
 * known model, served only by upstreams that serve any). *remote, when not
 * NULL, gets the upstream's own name for it, or NULL when it is the same.
 */
bool model_upstream_serves(const struct config *cfg, const struct upstream_config *uc,
                           const char *canonical, const char **remote);

/* The model lists akosha answers itself, from the config. */
enum model_list_shape {
    MODEL_LIST_OPENAI, /* GET /v1/models */
    MODEL_LIST_OLLAMA, /* GET /api/tags */
};
/*
 * Every model callers may name (canonical names, then their aliases, each
 * once) as a JSON body of that API's list call into out. created_unix is
 * the time shown as the models' creation.
 */
void model_list_json(const struct config *cfg, enum model_list_shape shape, int64_t created_unix,
                     struct buf *out);

/* ---- learned dimensions (any thread) ------------------------------------ */

/* Models whose learned size is kept at most; the least used gives way. */
#define MODEL_LEARNED_MAX 256
/* A model's learned size is checked against a real answer at most this often. */
#define MODEL_LEARNED_REFRESH_MS 1000

/* The size learned for model (canonical, or as sent when unknown), 0 when none; counts a use. */
unsigned model_learned_dim(const char *model, uint64_t now_ms);
void model_learn_dim(const char *model, unsigned dim, uint64_t now_ms);
/*
 * Whether a real answer for model should be counted now: its size is not
 * known yet, or was last checked MODEL_LEARNED_REFRESH_MS or more ago (then
 * this call claims the check, so concurrent answers do not all count).
 */
bool model_dim_due(const char *model, uint64_t now_ms);
/* The size learned for model, 0 when none; no use counted (status pages). */
unsigned model_learned_peek(const char *model);
/* Forget every learned size (tests). */
void model_learned_reset(void);

#endif
