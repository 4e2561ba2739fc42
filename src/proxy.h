/*
 * proxy.h - the traffic side: a client connection, the request it carries,
 * and each attempt of that request at an upstream. Both the connection and
 * the attempt are explicit state machines (see proxy.c for the diagrams).
 */
#ifndef AKOSHA_PROXY_H
#define AKOSHA_PROXY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "breaker.h"
#include "cacheflow.h"
#include "embed_api.h"
#include "http.h"
#include "observe.h"
#include "server.h"
#include "trace.h"
#include "upstream.h"

enum client_state {
    CLIENT_READ_HEAD, /* waiting for a request head (also idle keep-alive) */
    CLIENT_READ_BODY, /* buffering the request body */
    CLIENT_DISPATCH,  /* attempts, backoff or fallback under way */
    CLIENT_STREAM,    /* relaying an upstream response body */
    CLIENT_WRITE,     /* a complete response is queued; waiting for it to flush */
    CLIENT_CLOSING,   /* flush, then close */
};

enum attempt_state {
    ATTEMPT_IDLE,      /* no attempt */
    ATTEMPT_WAIT_SLOT, /* queued for a connection slot of the upstream */
    ATTEMPT_CONNECT,   /* TCP/TLS connect under way */
    ATTEMPT_HEAD,      /* request written (or being written), reading the response head */
    ATTEMPT_BODY,      /* relaying the response body */
    ATTEMPT_BACKOFF,   /* waiting before the next attempt */
};

/* A traced real answer's first and last bytes: where its "model" field is. */
struct answer_edges {
    char head[512], tail[256];
    size_t hlen, tlen;
};

struct attempt {
    enum attempt_state state;
    struct upstream *up; /* reference held while set */
    struct upconn *conn;
    struct upstream_waiter waiter;
    struct breaker_ticket ticket;
    bool ticket_open; /* breaker outcome not yet recorded */
    struct event *timer; /* call_timeout, or the backoff delay */
    enum http_body_kind body_kind;
    uint64_t remaining;
    struct http_chunked chunk;
    int status;
    bool keep_alive;
    size_t bytes_in;
    struct embed_dim_scan *dim_scan; /* a 2xx embedding answer's first vector, being counted */
    struct answer_edges *edges;      /* a traced 2xx embedding answer's edges, or NULL */
    bool paused;        /* upstream reads stopped: the client is STREAM_HIGH_WATER behind */
    bool deadline_cut;  /* its timer is the time left, shorter than call_timeout */
    const char *remote_model; /* up's own name for the model (NAME=REMOTE), or NULL; up's config owns it */
    bool collect;       /* a 2xx answer kept whole for the cache to merge, not relayed */
    uint64_t start_us;        /* monotonic: picked; its latency feeds balance = ewma */
};

struct fallback_job;

struct request {
    char id[65];
    char *head; /* the client's head, copied; hd points into it */
    struct evbuffer *body;
    struct http_chunked chunk; /* chunked request bodies */
    enum embed_api api;
    const char *route; /* metrics label */
    bool deny_fallback;
    bool keep_alive;
    bool is_head;
    struct config *cfg;        /* the config it started with; reference held */
    struct upstream_want want; /* the upstreams its model allows */
    struct upstream_set *ups;  /* the upstreams it started with; reference held */
    uint64_t start_us;
    uint64_t end_us;           /* monotonic: answered (or the client went), 0 until then */
    uint64_t deadline_ms;      /* monotonic: request_timeout from the head, the caller's */
    uint64_t upstream_deadline_ms; /* attempts end here: the deadline less the fallback reserve */
    unsigned attempts;     /* attempts started */
    unsigned max_attempts; /* 1 + retries of the first upstream */
    struct upstream *tried[16];
    size_t ntried;
    int fail_status; /* what to answer if no attempt succeeds: 502 or 504 */
    char fail_cause[160];
    struct attempt att;
    struct fallback_job *job;
    struct cacheflow *cf;       /* the cache's view of it, or NULL */
    enum cacheflow_use cache;   /* what the cache did, for X-Akosha-Cache and the access log */
    struct evbuffer *answer;    /* a 2xx answer's payload kept for the cache, or NULL */
    bool answer_over;           /* it passed CACHEFLOW_ANSWER_MAX: relayed, not stored */
    uint32_t cache_hits, cache_misses; /* inputs the lookup found, and did not */
    int status; /* answered status, for logs and metrics */
    enum embed_mode mode;    /* where the answer's vectors came from; NONE before one */
    struct observe_req obs;  /* its spans and input sizes, observe.c's */
    const char *reason; /* static: why a fallback or an error answered (access log), or NULL */
    uint64_t bytes_in;  /* the head's bytes (the body's are counted from its buffer) */
    uint64_t bytes_out; /* bytes the client's socket took for this request */
    unsigned sniffed_dim;    /* vector size seen in a real 2xx answer, 0 if none */
    /* What the body says, scanned once at dispatch (embedding routes). */
    const char *model;          /* canonical (owned by cfg); NULL when none is named or known */
    char model_sent[128];       /* the model the body names, decoded; "" when none */
    char response_model[64];    /* the model the answer names (traced requests); "" if unknown */
    size_t model_at, model_len; /* its raw bytes in the body, rewritten per upstream; 0: absent */
    bool sized;                 /* the body sets "dimensions" */
    bool scanned;               /* the body is a well-formed request of its API */
    uint32_t ninputs;           /* its inputs, when scanned */
    struct http_request_head hd; /* last: only its scalars are cleared per request */
};

struct client {
    struct server *srv;
    evutil_socket_t fd;
    struct evbuffer *in, *out;
    struct event *rev;       /* readable: direct reads (sockio.c) */
    struct event *wev;       /* writable: armed only while the kernel pushes back */
    struct event *drive_ev;  /* moves the machine on after a flush, outside the caller */
    bool reading;
    bool write_failed;
    bool read_eof; /* the client half-closed: answer what it sent, then close */
    enum client_state state;
    char addr[64]; /* peer address, for X-Forwarded-For and logs */
    struct event *timer; /* head-read deadline, then the request deadline */
    size_t head_scan;    /* bytes of input already searched for the head's end */
    bool head_started;
    bool body_timeout; /* the idle-read limit is armed (a body is arriving) */
    struct request *req;   /* NULL between requests */
    struct request *spare; /* the last request's memory, reused by the next */
    struct evbuffer *spare_body; /* and its body buffer, empty */
    struct event *spare_timer;   /* and its attempt timer, not pending */
    uint64_t served;
    TAILQ_ENTRY(client) link;
};

/* Accept a new client connection on fd (takes ownership). */
void proxy_accept(struct server *srv, evutil_socket_t fd, struct sockaddr *sa, int salen);
/* Close clients that are idle between requests (drain). */
void proxy_close_idle(struct server *srv);
/* Close every client (drain deadline, shutdown). */
void proxy_close_all(struct server *srv);
/* Release what the traffic side keeps between requests. */
void proxy_shutdown(void);

/*
 * Answer the request with a complete body the proxy built itself.
 * extra_headers is "Name: value\r\n..." or NULL. Used by fallback.c.
 */
void proxy_respond(struct client *c, int status, const char *content_type, const char *body,
                   size_t len, const char *extra_headers);
/*
 * Answer with a body of unknown length, in pieces: the head now (chunked for
 * HTTP/1.1; for HTTP/1.0 the connection closes after the body), then each
 * piece, the last one with last set. While the connection waits in STREAM,
 * fallback_stream_drained() is called each time the client has taken every
 * queued byte. Used by fallback.c.
 */
void proxy_stream_begin(struct client *c, int status, const char *content_type,
                        const char *extra_headers);
void proxy_stream_piece(struct client *c, const char *data, size_t len, bool last);
/* Answer in the request's API error shape (OpenAI shape off embedding routes). */
void proxy_respond_error(struct client *c, int status, const char *type, const char *message,
                         const char *extra_headers);

#endif
