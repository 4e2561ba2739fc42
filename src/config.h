/*
 * config.h - the configuration file: one table of keys drives parsing,
 * defaults, --check-config, the admin /config dump, the sample file and the
 * man page (see config_table in config.c).
 *
 * The parser is pure: it reads a file given to it and the environment, never
 * a socket or the clock, so it links alone into unit tests.
 */
#ifndef AKOSHA_CONFIG_H
#define AKOSHA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "util.h"

enum config_type {
    CT_STRING,
    CT_INT,
    CT_DOUBLE,
    CT_BOOL,
    CT_DURATION, /* stored as uint64_t milliseconds */
    CT_SIZE,     /* stored as uint64_t bytes */
    CT_PERCENT,  /* "20%" stored as double 0.20 */
    CT_LISTEN,   /* stored as struct listen_addr */
    CT_URL,      /* stored as struct upstream_url */
    CT_HEADER,   /* repeatable "Name: value", stored as struct header_list */
    CT_ENUM,     /* stored as int, index into enum_values */
    CT_MODE,     /* octal file permissions "0660", stored as int */
    CT_LIST,     /* "a, b=c, d": model names, stored as struct name_list */
};

enum config_section_kind {
    SEC_PROXY,
    SEC_ADMIN,
    SEC_FALLBACK,
    SEC_TELEMETRY,
    SEC_CACHE,
    SEC_UPSTREAM, /* repeatable, named */
    SEC_MODEL,    /* repeatable, named */
    SEC_COUNT
};

struct config_key {
    enum config_section_kind section;
    const char *name;
    enum config_type type;
    const char *def;         /* default as written in the file; NULL: unset */
    double min, max;         /* bounds in the stored unit (ms, bytes, ...); min > max: none */
    bool reloadable;         /* false: a change needs a restart */
    bool required;
    bool secret;             /* value never shown in /config or logs */
    const char *enum_values; /* "auto|always|off" for CT_ENUM */
    size_t offset;           /* into struct config, upstream_config or model_config */
    const char *help;        /* one line */
};

extern const struct config_key config_table[];
extern const size_t config_table_len;
const char *config_section_name(enum config_section_kind s);

struct listen_addr {
    char *text; /* as written: "127.0.0.1:8080", "[::1]:80", "unix:/run/a.sock" */
    struct sockaddr_storage ss;
    socklen_t sslen;
    bool is_unix;
};

struct upstream_url {
    char *text;      /* as written */
    bool tls;        /* https */
    char *host;      /* without brackets */
    uint16_t port;
    char *authority; /* Host header value: "host", "host:port", "[v6]:port" */
    char *prefix;    /* path prefix without trailing slash, "" when none */
};

/* A list of model names; remote[i] is what one upstream calls names[i], NULL when the same. */
struct name_list {
    char **names;
    char **remotes;
    /* derived at validation: each name's canonical name, owned by the config */
    const char **canon;
    size_t n;
};

struct header_list {
    char **lines; /* "Name: value" with ${VAR} expanded; secret */
    size_t n;
};

enum fallback_mode { FALLBACK_AUTO, FALLBACK_ALWAYS, FALLBACK_OFF };
/* [proxy] balance: how upstream_pick chooses within a priority. */
enum balance_mode { BALANCE_WEIGHTED, BALANCE_EWMA };

struct upstream_config {
    char *name;
    int line;
    struct upstream_url url;
    int64_t priority;
    int64_t weight;
    uint64_t connect_timeout_ms;
    uint64_t call_timeout_ms;
    int64_t max_connections;
    uint64_t idle_timeout_ms;
    struct header_list headers;
    bool tls_verify;
    char *tls_ca_file;
    char *tls_server_name;
    char *host;        /* the Host key as set, NULL when not */
    struct name_list models; /* models served (n == 0: any), with their remote names */
    char *host_header; /* derived: host, else tls_server_name (and port), else url.authority */
    /* breaker */
    int64_t failure_threshold;
    uint64_t open_timeout_ms;
    int64_t half_open_max_calls;
    int64_t success_threshold;
    /* retries */
    int64_t retries;
    uint64_t backoff_base_ms;
    double backoff_multiplier;
    uint64_t backoff_max_ms;
    uint64_t max_retry_after_ms;
    /* active health checks (health.c) */
    char *health_check; /* path, NULL: no checks */
    uint64_t health_interval_ms;
    uint64_t health_timeout_ms;
    int64_t healthy_threshold;
    int64_t unhealthy_threshold;
    char **raw; /* raw text per key index as written, NULL when defaulted */
};

struct bert;

struct model_config {
    char *name;
    int line;
    int64_t dimensions; /* 0 when not set */
    struct name_list aliases;
    char *revision;     /* part of every cache key; "" when none */
    char *local;        /* a sentence-transformers directory run on the CPU, or NULL */
    struct bert *bert;  /* derived: local loaded (by the loading thread), owned */
    char **raw;
};

struct config {
    int refs; /* config_ref/config_unref; loop thread only */
    char *path;
    struct {
        struct listen_addr listen;
        int listen_mode; /* permissions of a unix: socket */
        uint64_t max_body_size;
        uint64_t max_header_size;
        uint64_t request_timeout_ms;
        uint64_t client_timeout_ms;
        int64_t max_connections;
        uint64_t drain_timeout_ms;
        char *default_model; /* model of requests that name none; NULL: none */
        double retry_budget;
        double retry_budget_min;
        int log_level;
        char *access_log;           /* "off", "stderr" or a path */
        int access_log_format;      /* enum accesslog_format: 0 json, 1 text */
        uint64_t access_log_buffer; /* the access log's ring, bytes */
        int balance;                /* enum balance_mode */
    } proxy;
    struct {
        struct listen_addr listen;
        int listen_mode;
        char *token; /* "" when unset; secret */
    } admin;
    struct {
        int mode; /* enum fallback_mode */
        int64_t workers;
        int64_t queue_size;
        int64_t dimensions;
        uint64_t queue_timeout_ms; /* 0: never shed for waiting */
    } fallback;
    struct {
        char *service_name;
        char *environment;
        char *otlp_endpoint;
        int otlp_protocol; /* enum telemetry_protocol; -1: unset */
        char *otlp_headers;
        double sample_rate; /* < 0: unset */
        bool console_export;
        uint64_t shutdown_timeout_ms;
    } telemetry;
    struct {
        uint64_t memory; /* bytes; 0 (unset): no memory cache */
        uint64_t ttl_ms;
        uint64_t stale_if_error_ms; /* >= ttl_ms, checked at load */
        bool per_caller;
        char *redis;             /* redis://... or unix:...; NULL (unset): no Redis tier */
        uint64_t redis_timeout_ms;
        char *redis_prefix;
        char *redis_password;    /* "" when unset; secret */
    } cache;
    struct upstream_config *upstreams;
    size_t nupstreams;
    struct model_config *models;
    size_t nmodels;
    char **raw; /* raw text per key index for the global sections */
};

/* Every error, "file:line: [section] key: message", in order. */
struct config_errors {
    char **msgs;
    size_t n;
};

/*
 * Parse the file at path. Returns a config the caller owns (config_free), or
 * NULL with every error appended to errs. getenv_fn resolves ${VAR}; NULL
 * means getenv(3). ${file:NAME} reads $CREDENTIALS_DIRECTORY/NAME.
 */
struct config *config_load(const char *path, struct config_errors *errs,
                           const char *(*getenv_fn)(const char *));
/* Same, from text in memory; name is used in messages. */
struct config *config_parse(const char *name, const char *text, size_t len,
                            struct config_errors *errs, const char *(*getenv_fn)(const char *));
void config_free(struct config *cfg);
/* Configs outlive a reload while upstreams or requests still use them. */
void config_ref(struct config *cfg);
void config_unref(struct config *cfg); /* frees at zero */
void config_errors_free(struct config_errors *errs);

/* Value parsers, exposed for tests and other modules. 0 on success, -1 with *cause (static). */
int config_parse_duration(const char *s, uint64_t *ms, const char **cause);
int config_parse_size(const char *s, uint64_t *bytes, const char **cause);
int config_parse_bool(const char *s, bool *out, const char **cause);
int config_parse_listen(const char *s, struct listen_addr *out, const char **cause);
int config_parse_url(const char *s, struct upstream_url *out, const char **cause);
/* A model name as callers send it: 1-127 printable bytes, no blanks, quotes, ',', '\\' or '='. */
bool config_valid_model_name(const char *s, size_t n);

/*
 * [cache] redis, the Redis tier's address (cache_redis.c connects to it):
 *   redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]   HOST: IPv4, [IPv6] or localhost
 *   unix:PATH[?db=DB]                            PATH absolute
 * PORT defaults to 6379 and DB to 0. A host name is refused: hiredis would
 * resolve it with a blocking getaddrinfo on the loop; "localhost" is taken as
 * 127.0.0.1. The password is taken as written (no percent-decoding).
 */
#define CONFIG_REDIS_PREFIX_MAX 256 /* [cache] redis_prefix, bytes */
struct redis_addr {
    bool is_unix;
    char host[64]; /* numeric, without brackets */
    uint16_t port;
    char path[108]; /* sizeof(sun_path) */
    uint32_t db;
    char *user;     /* NULL when none; owned */
    char *password; /* NULL when none; owned; never logged */
};
/* 0, or -1 with *cause (static) and *out left empty; config_redis_addr_free releases it. */
int config_parse_redis_addr(const char *text, struct redis_addr *out, const char **cause)
    __attribute__((warn_unused_result));
void config_redis_addr_free(struct redis_addr *a);

/* Index of the key in config_table, or -1. */
int config_key_index(enum config_section_kind sec, const char *name);

/*
 * The first secret key (a row marked secret) whose value is written in the
 * file itself rather than drawn from ${VAR} or ${file:NAME}, as "[section]
 * key" into out; false when there is none.
 */
bool config_literal_secret(const struct config *cfg, char *out, size_t outlen);

/* The effective config as JSON, secrets redacted. Appends to out. */
void config_dump_json(const struct config *cfg, struct buf *out);

/* Names of non-reloadable keys whose value differs; appended to out as "a, b". */
void config_restart_needed(const struct config *old, const struct config *cur, struct buf *out);

#endif
