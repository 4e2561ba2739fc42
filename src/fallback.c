/*
 * fallback.c - embedding requests answered locally.
 *
 * The loop thread hands the request body to a job and never looks inside:
 * parsing, embedding and rendering all run on a worker thread. An answer
 * comes back in pieces of about PIECE_BYTES: a small one whole (sent with a
 * Content-Length, as before), a big one as a chunked stream whose next piece
 * is computed only once the client has taken the previous one, so a client
 * that does not read pins one piece, not the whole answer.
 *
 * Who owns the job: while it is submitted (queued, running, or finished and
 * waiting for done()) the worker side reads and writes its work fields; at
 * every other moment, and always for client, submitted and streaming, the
 * loop thread does. When the client goes (fallback_detach), a job the loop
 * holds or the pool hands back unstarted is freed at once, body and all; a
 * running one sees the cancelled flag before its next input and done() frees
 * it. Under overload the pool sheds jobs that waited queue_timeout, and a job
 * whose estimated work would end past the request's deadline is answered 503
 * right after parsing instead of being computed for nobody.
 */
#include "fallback.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "bert.h"
#include "embed_api.h"
#include "embedder_hash.h"
#include "log.h"
#include "model.h"
#include "otlp.h"
#include "util.h"
#include "worker.h"

/* A piece of answer: rendering stops after the input that passes it. */
#define PIECE_BYTES (256 * 1024)

/* What every answer of the fallback says of itself; model: canonical, or NULL. */
/* mode: LOCAL (the model's own, run here) or FALLBACK (the hash, another space). */
const char *
fallback_answer_headers(enum embed_mode mode, const char *upstream, const char *model,
                        bool retry_after, char out[FALLBACK_HEADERS_MAX])
{
    snprintf(out, FALLBACK_HEADERS_MAX, "%sX-Akosha-Mode: %s\r\nX-Akosha-Upstream: %s\r\n%s%s%s",
             retry_after ? "Retry-After: 1\r\n" : "", embed_mode_name(mode),
             upstream != NULL ? upstream : "local", model ? "X-Akosha-Model: " : "",
             model ? model : "", model ? "\r\n" : "");
    return out;
}

/* Each worker thread's working memory for local models, freed when the thread ends. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void
scratch_destroy(void *s)
{
    bert_scratch_free(s);
}

static void
scratch_key_create(void)
{
    if (pthread_key_create(&scratch_key, scratch_destroy) != 0) {
        fatal("cannot create the local model's per-thread key");
    }
}

static struct bert_scratch *
thread_scratch(void)
{
    struct bert_scratch *s;

    pthread_once(&scratch_once, scratch_key_create);
    s = pthread_getspecific(scratch_key);
    if (s == NULL) {
        s = bert_scratch_new();
        pthread_setspecific(scratch_key, s);
    }
    return s;
}

struct fallback_job {
    struct worker_job job; /* first: the pool sees only this */
    struct worker_pool *pool;
    const struct fallback_sink *sink;
    void *arg;             /* the sink's; NULL once detached; loop thread */
    struct config *cfg;    /* reference held: [model] sizes and defaults */
    const char *model;     /* canonical, owned by cfg; NULL when the request names none known */
    char model_key[128];   /* what learned sizes go by ("" : the parsed request's model) */
    enum embed_api api;
    uint64_t deadline_ms;  /* monotonic: the request's request_timeout */
    atomic_bool cancelled; /* set by detach: a running job stops before its next input */
    /* loop thread only */
    bool submitted; /* in the pool: queued, running, or done() still to come */
    bool streaming; /* the head is out; the rest goes as chunks */
    bool in_done;   /* inside done(): a drained client asks for more through want_more */
    bool want_more;
    /* the worker's while submitted, the loop's otherwise */
    struct evbuffer *body; /* until parsed; then freed */
    struct embed_request er;
    bool parsed;
    unsigned runs;
    int status;        /* 0 until known: 200, 400, or 503 when shed for the deadline */
    struct buf piece;  /* rendered and not yet handed to the client */
    bool complete;     /* piece ends the answer */
    size_t next_input; /* inputs rendered so far */
    const struct bert *bert; /* the model's own, run here (owned by cfg); NULL: the hash */
    enum embed_mode mode;    /* LOCAL with bert, else FALLBACK */
    size_t units;      /* the whole job's work, for the estimate */
    float *vector;     /* one input's vector */
    char model_name[64];
    unsigned dim;
    uint64_t start_ns, end_ns;
    size_t text_chars;
    float **known;          /* per input, or NULL (see fallback_request) */
    size_t nknown;
    unsigned known_dim;
    size_t known_usage;
    unsigned char *known_mask; /* per input once parsed: 1 = known */
    bool all_known;
    char upstream_name[64];
    struct buf extra;       /* the caller's extra headers */
    struct buf items;       /* X-Akosha-Fallback-Items of a mixed answer */
    struct buf hbuf;        /* the headers of the answer being sent */
};

static void free_known(struct fallback_job *j);

/* Every header the job's answer carries: who answered, in which mode, and the extras. */
static const char *
job_headers(struct fallback_job *j, bool retry_after)
{
    char hb[FALLBACK_HEADERS_MAX];
    bool real = j->all_known && !retry_after;

    j->hbuf.len = 0;
    buf_puts(&j->hbuf,
             fallback_answer_headers(real ? EMBED_MODE_REAL
                                     : retry_after ? EMBED_MODE_FALLBACK
                                                   : j->mode,
                                     real ? j->upstream_name : NULL, j->model, retry_after, hb));
    buf_append(&j->hbuf, j->extra.data != NULL ? j->extra.data : "", j->extra.len);
    if (!retry_after) {
        buf_append(&j->hbuf, j->items.data != NULL ? j->items.data : "", j->items.len);
    }
    return j->hbuf.data;
}

static unsigned
pick_dimensions(struct fallback_job *j)
{
    const struct config *cfg = j->cfg;

    const struct model_config *m = j->model != NULL ? model_section(cfg, j->model) : NULL;
    unsigned learned;

    if (j->er.dimensions > 0) {
        return j->er.dimensions;
    }
    if (m != NULL && m->dimensions > 0) {
        return (unsigned)m->dimensions;
    }
    learned = model_learned_dim(j->model_key[0] ? j->model_key : j->er.model, util_mono_ms());
    return learned > 0 ? learned : (unsigned)cfg->fallback.dimensions;
}

static void
job_error(struct fallback_job *j, const char *message, const char *param)
{
    size_t len;
    char *text =
        embed_render_error(j->api, message, "invalid_request_error", param, "invalid_input", &len);

    j->status = 400;
    j->piece.len = 0;
    buf_append(&j->piece, text, len);
    j->complete = true;
    free(text);
}

/* Work of one input, in the pool's estimate unit: its text (or ids) and its vector. */
static size_t
input_units(const struct fallback_job *j, const struct embed_input *in)
{
    return (in->text != NULL ? in->len : in->ntokens) + j->dim;
}

/*
 * The model's own (its [model] local directory, for text inputs) or the
 * hash, and the vector size. false when the request is answered (400).
 */
static bool
choose_embedder(struct fallback_job *j)
{
    const struct model_config *m = j->model != NULL ? model_section(j->cfg, j->model) : NULL;
    bool texts = true;

    for (size_t i = 0; i < j->er.ninputs; i++) {
        texts = texts && j->er.inputs[i].text != NULL;
    }
    /* Token ids are the upstream's tokenizer's: only the hash reads them as they are. */
    j->bert = m != NULL && m->bert != NULL && texts ? m->bert : NULL;
    j->mode = j->bert != NULL ? EMBED_MODE_LOCAL : EMBED_MODE_FALLBACK;
    if (j->bert == NULL) {
        j->dim = pick_dimensions(j);
        return true;
    }
    j->dim = (unsigned)bert_info(j->bert)->hidden;
    if (j->er.dimensions > j->dim) {
        char err[128];
        snprintf(err, sizeof(err), "dimensions must be at most %u for this model", j->dim);
        job_error(j, err, "dimensions");
        return false;
    }
    if (j->er.dimensions > 0) {
        j->dim = j->er.dimensions; /* Matryoshka: the first dims, renormalised */
    }
    return true;
}

/*
 * First run: parse, free the body, refuse what the embedder would refuse
 * (before anything is sent, so it can still be a 400), and drop work that
 * cannot end before the deadline. false when the job is answered already.
 */
static bool
job_prepare(struct fallback_job *j)
{
    char err[256];
    const char *param = NULL;
    size_t len = evbuffer_get_length(j->body);
    const char *body = len ? (const char *)evbuffer_pullup(j->body, -1) : "";
    int rc;
    uint64_t estimate;

    j->start_ns = otlp_now_unix_ns();
    rc = embed_request_parse(j->api, body, len, &j->er, err, sizeof(err), &param);
    evbuffer_free(j->body);
    j->body = NULL;
    if (rc < 0) {
        job_error(j, err, param);
        return false;
    }
    j->parsed = true;
    if (j->known != NULL && j->nknown != j->er.ninputs) {
        free_known(j); /* another request than the one the vectors are for: compute all */
    }
    if (j->known != NULL) {
        size_t nk = 0;
        j->known_mask = xcalloc(j->er.ninputs, 1);
        for (size_t i = 0; i < j->er.ninputs; i++) {
            j->known_mask[i] = j->known[i] != NULL;
            nk += j->known_mask[i];
        }
        j->all_known = nk == j->er.ninputs;
    }
    if (j->all_known) {
        /* Real vectors, as the upstream gave them: nothing to compute or refuse. */
        j->mode = EMBED_MODE_REAL;
        j->dim = j->known_dim;
        j->er.usage_tokens = j->known_usage;
        j->er.usage_known = true;
        snprintf(j->model_name, sizeof(j->model_name), "%s",
                 j->er.model[0] != '\0' ? j->er.model : j->model ? j->model : "");
        j->vector = xmalloc(j->dim * sizeof(float));
        embed_render_open(&j->er, j->model_name, &j->piece);
        return true;
    }
    if (!choose_embedder(j)) {
        return false;
    }
    if (j->known != NULL) {
        /* One answer, one size: what is computed matches the real vectors. */
        if (j->bert != NULL && j->dim != j->known_dim) {
            j->bert = NULL;
            j->mode = EMBED_MODE_FALLBACK;
        }
        j->dim = j->known_dim;
        buf_puts(&j->items, "X-Akosha-Fallback-Items: ");
        for (size_t i = 0, first = 1; i < j->er.ninputs; i++) {
            if (!j->known_mask[i]) {
                buf_printf(&j->items, first ? "%zu" : ",%zu", i);
                first = 0;
            }
        }
        buf_puts(&j->items, "\r\n");
    }
    for (size_t i = 0; i < j->er.ninputs; i++) {
        const struct embed_input *in = &j->er.inputs[i];
        bool empty;
        if (j->known_mask != NULL && j->known_mask[i]) {
            continue;
        }
        empty =
            in->text != NULL ? embedder_hash_is_blank(in->text, in->len) : in->ntokens == 0;
        if (empty || j->dim == 0 || (j->bert == NULL && j->dim > EMBEDDER_HASH_MAX_DIM)) {
            snprintf(err, sizeof(err), "input %zu is empty or whitespace only", i);
            job_error(j, err, j->api == EMBED_API_TEI ? "inputs" : "input");
            return false;
        }
        j->units += input_units(j, in);
    }
    /* The pool's cost per unit is the hash's; a local model's work is not on that scale. */
    estimate = j->bert == NULL ? worker_pool_estimate_ns(j->pool, j->units) : 0;
    if (j->deadline_ms > 0 && util_mono_ms() + estimate / 1000000u > j->deadline_ms) {
        j->status = 503; /* done() answers: the caller would be gone before the answer */
        return false;
    }
    if (j->bert != NULL) {
        snprintf(j->model_name, sizeof(j->model_name), "%s", j->model); /* the same model */
    } else {
        embedder_hash_model_name(j->dim, j->model_name, sizeof(j->model_name));
    }
    j->vector = xmalloc(j->dim * sizeof(float));
    embed_render_open(&j->er, j->model_name, &j->piece);
    return true;
}

/* The local model's helper: another thread of the pool, while one is idle (see worker.h). */
static bool
helper_post(void *ctx, void (*fn)(void *arg), void *arg)
{
    return worker_assist_post(ctx, fn, arg);
}

static void
helper_wait(void *ctx)
{
    worker_assist_wait(ctx);
}

/* The inputs of the next piece, from next_input on. */
static void
job_run_inputs(struct fallback_job *j, struct bert_scratch *scratch)
{
    struct worker_job *wj = &j->job;

    while (j->next_input < j->er.ninputs) {
        const struct embed_input *in = &j->er.inputs[j->next_input];
        int rc;

        if (atomic_load_explicit(&j->cancelled, memory_order_relaxed)) {
            return; /* nobody reads the rest: done() frees the job */
        }
        if (j->known_mask != NULL && j->known_mask[j->next_input]) {
            embed_render_vector(&j->er, j->next_input, j->known[j->next_input], j->dim,
                                &j->piece);
            wj->units += j->dim;
            j->next_input++;
            if (j->piece.len >= PIECE_BYTES && j->next_input < j->er.ninputs) {
                j->end_ns = otlp_now_unix_ns();
                return;
            }
            continue;
        }
        if (j->bert != NULL) {
            uint64_t tokens = 0;
            char *cause = NULL;
            rc = bert_embed(j->bert, &in->text, &in->len, 1, j->vector, j->dim, &tokens,
                            scratch, &cause);
            free(cause); /* dimensions were checked in choose_embedder */
            j->er.usage_tokens += (size_t)tokens;
            j->text_chars += util_utf8_chars(in->text, in->len);
        } else if (in->text != NULL) {
            rc = embedder_hash_text(in->text, in->len, j->vector, j->dim);
            j->text_chars += util_utf8_chars(in->text, in->len);
        } else {
            rc = embedder_hash_tokens(in->tokens, in->ntokens, j->vector, j->dim);
            j->text_chars += in->ntokens;
        }
        if (rc < 0) {
            /* job_prepare refused every input the embedder refuses: cannot happen */
            memset(j->vector, 0, j->dim * sizeof(float));
        }
        embed_render_vector(&j->er, j->next_input, j->vector, j->dim, &j->piece);
        wj->units += input_units(j, in);
        j->next_input++;
        if (j->piece.len >= PIECE_BYTES && j->next_input < j->er.ninputs) {
            j->end_ns = otlp_now_unix_ns();
            return;
        }
    }
    embed_render_close(&j->er, j->model_name, &j->piece);
    j->status = 200;
    j->complete = true;
    j->end_ns = otlp_now_unix_ns();
}

/* Worker thread: the next piece of the answer. Touches nothing but the job. */
static void
job_run(struct worker_job *wj)
{
    struct fallback_job *j = (struct fallback_job *)wj;
    struct worker_assist assist;
    struct bert_helper helper = {helper_post, helper_wait, &assist};
    struct bert_scratch *scratch = NULL;

    if (atomic_load_explicit(&j->cancelled, memory_order_acquire)) {
        return;
    }
    if (j->runs++ == 0 && !job_prepare(j)) {
        j->end_ns = otlp_now_unix_ns();
        return;
    }
    if (j->bert == NULL) {
        job_run_inputs(j, NULL);
        return;
    }
    /* An idle thread of the pool, if there is one, takes half of each dense layer. */
    scratch = thread_scratch();
    worker_assist_begin(j->pool, &assist);
    bert_scratch_set_helper(scratch, &helper);
    job_run_inputs(j, scratch);
    bert_scratch_set_helper(scratch, NULL);
    worker_assist_end(&assist);
}

static void
free_known(struct fallback_job *j)
{
    for (size_t i = 0; j->known != NULL && i < j->nknown; i++) {
        free(j->known[i]);
    }
    free(j->known);
    j->known = NULL;
    j->nknown = 0;
}

static void
job_free(struct fallback_job *j)
{
    free_known(j);
    free(j->known_mask);
    buf_free(&j->extra);
    buf_free(&j->items);
    buf_free(&j->hbuf);
    if (j->parsed) {
        embed_request_free(&j->er);
    }
    if (j->body != NULL) {
        evbuffer_free(j->body);
    }
    config_unref(j->cfg);
    buf_free(&j->piece);
    free(j->vector);
    free(j);
}

static int
submit(struct fallback_job *j)
{
    if (worker_pool_submit(j->pool, &j->job) < 0) {
        return -1;
    }
    j->submitted = true;
    return 0;
}

/* The job is over: tell the caller what it came to (shed: why it was dropped, or NULL). */
static void
job_finished(struct fallback_job *j, const char *shed)
{
    struct fallback_outcome o = {
        .status = j->status,
        .mode = j->mode,
        .er = j->parsed ? &j->er : NULL,
        .model_name = j->model_name,
        .dim = j->dim,
        .text_chars = j->text_chars,
        .start_ns = j->start_ns,
        .end_ns = j->end_ns,
        .shed = shed,
        .known = j->known_mask,
    };

    j->sink->finished(j->arg, &o);
}

/* Loop thread: hand the caller what the worker made, if the caller is still there. */
static void
job_done(struct worker_job *wj)
{
    struct fallback_job *j = (struct fallback_job *)wj;

    j->submitted = false;
    if (j->arg == NULL) {
        job_free(j);
        return;
    }
    if (wj->shed || (j->status == 503 && !j->streaming)) {
        /* 503 with Retry-After: it waited queue_timeout, or would end past the deadline. */
        bool stale = wj->shed;
        size_t len;
        char *body = embed_render_error(
            j->api,
            stale ? "the fallback is overloaded: the job waited queue_timeout"
                  : "the fallback is overloaded: the answer would come after request_timeout",
            "overloaded", NULL, stale ? "queue_timeout" : "deadline", &len);
        j->status = 503;
        job_finished(j, stale ? "stale" : "deadline");
        j->sink->answer(j->arg, 503, body, len, job_headers(j, true));
        free(body);
        job_free(j);
        return;
    }
    if (j->complete && !j->streaming) {
        job_finished(j, NULL);
        j->sink->answer(j->arg, j->status, j->piece.data, j->piece.len, job_headers(j, false));
        job_free(j);
        return;
    }
    if (!j->streaming) {
        j->streaming = true;
        j->job.urgent = true; /* the head is out: finish what was started before new work */
        j->sink->stream_begin(j->arg, j->mode, job_headers(j, false));
    }
    if (j->complete) {
        job_finished(j, NULL);
        j->sink->stream_piece(j->arg, j->piece.data, j->piece.len, true);
        job_free(j);
        return;
    }
    j->in_done = true;
    j->want_more = false;
    j->sink->stream_piece(j->arg, j->piece.data, j->piece.len, false);
    j->in_done = false;
    /* The caller has the bytes: the job holds nothing until the next piece. */
    buf_free(&j->piece);
    buf_init(&j->piece);
    if (j->want_more && submit(j) < 0) {
        log_warn("fallback: the worker pool refused the next piece (stopping)");
    }
}

struct fallback_job *
fallback_submit(struct worker_pool *pool, const struct fallback_request *req,
                const struct fallback_sink *sink, void *arg)
{
    struct fallback_job *j = xcalloc(1, sizeof(*j));

    j->job.run = job_run;
    j->job.done = job_done;
    j->pool = pool;
    j->sink = sink;
    j->arg = arg;
    j->cfg = req->cfg; /* the request's: a reload does not change its answer */
    config_ref(j->cfg);
    j->model = req->model;
    j->mode = EMBED_MODE_FALLBACK; /* until the worker chooses the embedder */
    snprintf(j->model_key, sizeof(j->model_key), "%s", req->model_key ? req->model_key : "");
    j->api = req->api;
    j->deadline_ms = req->deadline_ms;
    atomic_init(&j->cancelled, false);
    buf_init(&j->piece);
    buf_init(&j->extra);
    buf_init(&j->items);
    buf_init(&j->hbuf);
    j->known = req->known;
    j->nknown = req->nknown;
    j->known_dim = req->known_dim;
    j->known_usage = req->known_usage;
    snprintf(j->upstream_name, sizeof(j->upstream_name), "%s",
             req->upstream_name != NULL ? req->upstream_name : "cache");
    if (req->extra_headers != NULL) {
        buf_puts(&j->extra, req->extra_headers);
    }
    j->body = evbuffer_new();
    /* Moved, not copied: from here only the worker reads the body. */
    evbuffer_add_buffer(j->body, req->body);
    if (j->known != NULL) {
        size_t nk = 0;
        for (size_t i = 0; i < j->nknown; i++) {
            nk += j->known[i] != NULL;
        }
        /* Nothing to compute, only to render: ahead of the queue, never shed. */
        j->job.urgent = nk == j->nknown;
    }
    if (submit(j) < 0) {
        /* Give the bytes (and the vectors) back: the caller still owns the request. */
        evbuffer_add_buffer(req->body, j->body);
        j->known = NULL;
        j->nknown = 0;
        job_free(j);
        return NULL;
    }
    return j;
}

int
fallback_stream_drained(struct fallback_job *j)
{
    if (j->submitted) {
        return 0;
    }
    if (j->in_done) {
        j->want_more = true; /* job_done submits once it has let go of the piece */
        return 0;
    }
    return submit(j);
}

void
fallback_detach(struct fallback_job *j)
{
    j->arg = NULL;
    if (!j->submitted || worker_pool_cancel(j->pool, &j->job)) {
        job_free(j); /* between pieces, or never started: ours to free now */
        return;
    }
    atomic_store_explicit(&j->cancelled, true, memory_order_release);
}

struct worker_pool *
fallback_pool_new(struct event_base *base, const struct config *cfg, char **cause)
{
    struct worker_pool *pool = worker_pool_new(base, (unsigned)cfg->fallback.workers,
                                               (size_t)cfg->fallback.queue_size, cause);

    if (pool != NULL) {
        worker_pool_set_max_wait(pool, cfg->fallback.queue_timeout_ms * 1000000u);
    }
    return pool;
}
