/*
 * fallback.c - embedding requests answered locally.
 *
 * The loop thread hands the request body to a job and never looks inside:
 * parsing, embedding and rendering all run on a worker thread, and the
 * finished body comes back to the loop in done(). A job whose client went
 * away is detached: it still runs, and done() frees it.
 */
#include "fallback.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "embed_api.h"
#include "embedder_hash.h"
#include "log.h"
#include "model.h"
#include "observe.h"
#include "otlp.h"
#include "proxy.h"
#include "util.h"
#include "worker.h"

struct fallback_job {
    struct worker_job job; /* first: the pool sees only this */
    struct server *srv;
    struct client *client; /* NULL once detached */
    struct config *cfg;    /* reference held: [model] sizes and defaults */
    const char *model;     /* canonical, owned by cfg; NULL when the request names none known */
    char model_key[128];   /* what learned sizes go by ("" : the parsed request's model) */
    enum embed_api api;
    struct evbuffer *body; /* owned */
    /* results, written by the worker */
    struct embed_request er;
    bool parsed;
    int status;
    char *answer;
    size_t answer_len;
    char model_name[64];
    unsigned dim;
    uint64_t start_ns, end_ns;
    size_t text_chars;
};

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
    j->status = 400;
    j->answer = embed_render_error(j->api, message, "invalid_request_error", param,
                                   "invalid_input", &j->answer_len);
}

/* Worker thread: parse, embed, render. Touches nothing but the job. */
static void
job_run(struct worker_job *wj)
{
    struct fallback_job *j = (struct fallback_job *)wj;
    char err[256];
    const char *param = NULL;
    size_t len = evbuffer_get_length(j->body);
    const char *body = len ? (const char *)evbuffer_pullup(j->body, -1) : "";
    float *vectors;

    j->start_ns = otlp_now_unix_ns();
    if (embed_request_parse(j->api, body, len, &j->er, err, sizeof(err), &param) < 0) {
        job_error(j, err, param);
        j->end_ns = otlp_now_unix_ns();
        return;
    }
    j->parsed = true;
    j->dim = pick_dimensions(j);
    vectors = xmalloc(j->er.ninputs * j->dim * sizeof(float));
    for (size_t i = 0; i < j->er.ninputs; i++) {
        const struct embed_input *in = &j->er.inputs[i];
        float *v = vectors + i * j->dim;
        int rc;
        if (in->text != NULL) {
            rc = embedder_hash_text(in->text, in->len, v, j->dim);
            j->text_chars += util_utf8_chars(in->text, in->len);
        } else {
            rc = embedder_hash_tokens(in->tokens, in->ntokens, v, j->dim);
            j->text_chars += in->ntokens;
        }
        if (rc < 0) {
            snprintf(err, sizeof(err), "input %zu is empty or whitespace only", i);
            job_error(j, err, j->api == EMBED_API_TEI ? "inputs" : "input");
            free(vectors);
            j->end_ns = otlp_now_unix_ns();
            return;
        }
    }
    embedder_hash_model_name(j->dim, j->model_name, sizeof(j->model_name));
    j->answer = embed_render_response(&j->er, vectors, j->dim, j->model_name, &j->answer_len);
    j->status = 200;
    free(vectors);
    j->end_ns = otlp_now_unix_ns();
}

static void
job_free(struct fallback_job *j)
{
    if (j->parsed) {
        embed_request_free(&j->er);
    }
    if (j->body != NULL) {
        evbuffer_free(j->body);
    }
    config_unref(j->cfg);
    free(j->answer);
    free(j);
}

static void
job_span(struct fallback_job *j, struct request *r)
{
    struct trace_context child;
    struct trace_span *s;

    if (r->span == NULL || j->srv->otlp == NULL || !j->parsed) {
        return;
    }
    trace_child_context(&r->ctx, &child);
    s = trace_span_new(&child, r->ctx.span_id, TRACE_KIND_INTERNAL,
                       j->er.ninputs > 1 ? "generate_batch_embeddings" : "generate_embedding",
                       j->start_ns);
    trace_span_attr_str(s, "embedding.mode", "fallback");
    trace_span_attr_int(s, "embedding.text_length", (int64_t)j->text_chars);
    trace_span_attr_int(s, "batch.size", (int64_t)j->er.ninputs);
    trace_span_attr_int(s, "embedding.dimensions", j->dim);
    if (j->status != 200) {
        trace_span_set_status(s, TRACE_STATUS_ERROR, "invalid input");
    }
    trace_span_end(s, j->end_ns);
    otlp_submit(j->srv->otlp, s);
}

/* Loop thread: answer the client, if it is still there. */
static void
job_done(struct worker_job *wj)
{
    struct fallback_job *j = (struct fallback_job *)wj;
    struct client *c = j->client;

    if (c == NULL) {
        job_free(j);
        return;
    }
    c->req->job = NULL;
    if (j->status == 200) {
        observe_embeddings(j->srv, "fallback", &j->er);
        c->req->mode = "fallback";
    }
    job_span(j, c->req);
    {
        char extra[256];
        snprintf(extra, sizeof(extra),
                 "X-Akosha-Mode: fallback\r\nX-Akosha-Upstream: local\r\n%s%s%s",
                 j->model ? "X-Akosha-Model: " : "", j->model ? j->model : "",
                 j->model ? "\r\n" : "");
        proxy_respond(c, j->status, "application/json", j->answer, j->answer_len, extra);
    }
    job_free(j);
    /* proxy_respond queued the answer; the write callback finishes the request. */
}

void
fallback_start(struct client *c, const char *reason)
{
    struct server *srv = c->srv;
    struct request *r = c->req;
    struct fallback_job *j = xcalloc(1, sizeof(*j));

    j->job.run = job_run;
    j->job.done = job_done;
    j->srv = srv;
    j->client = c;
    j->cfg = r->cfg; /* the request's: a reload does not change its answer */
    config_ref(j->cfg);
    j->model = r->model;
    snprintf(j->model_key, sizeof(j->model_key), "%s", observe_model_key(r));
    j->api = r->api;
    j->body = evbuffer_new();
    /* Moved, not copied: from here only the worker reads the body. */
    evbuffer_add_buffer(j->body, r->body);
    if (worker_pool_submit(srv->workers, &j->job) < 0) {
        size_t len;
        char *body;
        job_free(j);
        log_warn("request %s: fallback queue full (%lld); answering 503", r->id,
                 (long long)r->cfg->fallback.queue_size);
        observe_fallback(srv, "queue_full", r->model);
        body = embed_render_error(r->api, "fallback queue is full; retry shortly", "overloaded",
                                  NULL, "queue_full", &len);
        proxy_respond(c, 503, "application/json", body, len,
                      "Retry-After: 1\r\nX-Akosha-Mode: fallback\r\nX-Akosha-Upstream: local\r\n");
        free(body);
        return;
    }
    r->job = j;
    observe_fallback(srv, reason, r->model);
    log_debug("request %s: answered by the fallback worker (%s)", r->id, reason);
}

void
fallback_detach(struct fallback_job *job)
{
    job->client = NULL;
}

int
fallback_init(struct server *srv, char **cause)
{
    srv->workers = worker_pool_new(srv->base, (unsigned)srv->cfg->fallback.workers,
                                   (size_t)srv->cfg->fallback.queue_size, cause);
    return srv->workers == NULL ? -1 : 0;
}

void
fallback_shutdown(struct server *srv)
{
    if (srv->workers != NULL) {
        worker_pool_free(srv->workers);
        srv->workers = NULL;
    }
}
