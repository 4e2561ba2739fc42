/*
 * config.c - the configuration table and the INI parser.
 *
 * Every key is one row of config_table. A row names its section, type,
 * default (as text, parsed by the same code as the file), bounds, whether it
 * reloads, and a line of help. Defaults are applied by parsing the default
 * text, so the table, the sample file and the man page cannot disagree
 * without tests/unit/test_docs noticing.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "bert.h"
#include "model.h"

#define OFF_G(field) offsetof(struct config, field)
#define OFF_U(field) offsetof(struct upstream_config, field)
#define OFF_M(field) offsetof(struct model_config, field)
#define NOB 1, 0 /* no bounds */

const struct config_key config_table[] = {
    /* [proxy] */
    {SEC_PROXY, "listen", CT_LISTEN, "127.0.0.1:8080", NOB, true, false, false, NULL,
     OFF_G(proxy.listen), "traffic listener: host:port, [v6]:port or unix:/path"},
    {SEC_PROXY, "listen_mode", CT_MODE, "0666", 0, 0777, true, false, false, NULL,
     OFF_G(proxy.listen_mode), "permissions of a unix: listen socket, whatever the umask"},
    {SEC_PROXY, "max_body_size", CT_SIZE, "16M", 1024, 1073741824.0, true, false, false, NULL,
     OFF_G(proxy.max_body_size), "largest request body accepted (buffered for retries)"},
    {SEC_PROXY, "max_header_size", CT_SIZE, "64K", 1024, 1048576, true, false, false, NULL,
     OFF_G(proxy.max_header_size), "largest request head (request line and headers)"},
    {SEC_PROXY, "request_timeout", CT_DURATION, "60s", 1, 86400000, true, false, false, NULL,
     OFF_G(proxy.request_timeout_ms), "the caller's whole budget: attempts, backoff and fallback"},
    {SEC_PROXY, "client_timeout", CT_DURATION, "60s", 1, 86400000, true, false, false, NULL,
     OFF_G(proxy.client_timeout_ms), "idle keep-alive and header read limit"},
    {SEC_PROXY, "max_connections", CT_INT, "4096", 1, 1000000, true, false, false, NULL,
     OFF_G(proxy.max_connections), "client connections accepted at once"},
    {SEC_PROXY, "default_model", CT_STRING, NULL, NOB, true, false, false, NULL,
     OFF_G(proxy.default_model), "model of requests that name none (TEI, a missing field)"},
    {SEC_PROXY, "drain_timeout", CT_DURATION, "30s", 0, 3600000, true, false, false, NULL,
     OFF_G(proxy.drain_timeout_ms), "on SIGTERM, how long requests in flight may finish"},
    {SEC_PROXY, "retry_budget", CT_PERCENT, "20%", 0, 10, true, false, false, NULL,
     OFF_G(proxy.retry_budget), "retries may add at most this share of recent requests"},
    {SEC_PROXY, "retry_budget_min", CT_DOUBLE, "10", 0, 100000, true, false, false, NULL,
     OFF_G(proxy.retry_budget_min), "retries per second always allowed on top of the share"},
    {SEC_PROXY, "log_level", CT_ENUM, "info", NOB, true, false, false, "error|warn|info|debug",
     OFF_G(proxy.log_level), "least severe level written to stderr"},
    {SEC_PROXY, "access_log", CT_STRING, "off", NOB, true, false, false, NULL,
     OFF_G(proxy.access_log), "one line per proxied request: off, stderr or a file path"},
    {SEC_PROXY, "access_log_format", CT_ENUM, "json", NOB, true, false, false, "json|text",
     OFF_G(proxy.access_log_format), "access log lines as JSON objects or key=value text"},
    {SEC_PROXY, "access_log_buffer", CT_SIZE, "1M", 4096, 1073741824.0, false, false, false, NULL,
     OFF_G(proxy.access_log_buffer), "lines waiting for the disk; beyond it lines are dropped"},
    {SEC_PROXY, "balance", CT_ENUM, "weighted", NOB, true, false, false, "weighted|ewma",
     OFF_G(proxy.balance), "within a priority: smooth weighted round-robin, or least peak-EWMA load"},
    /* [admin] */
    {SEC_ADMIN, "listen", CT_LISTEN, "127.0.0.1:3002", NOB, true, false, false, NULL,
     OFF_G(admin.listen), "admin listener: /healthz /readyz /stats /config /metrics"},
    {SEC_ADMIN, "listen_mode", CT_MODE, "0600", 0, 0777, true, false, false, NULL,
     OFF_G(admin.listen_mode), "permissions of a unix: admin socket, whatever the umask"},
    {SEC_ADMIN, "token", CT_STRING, "", NOB, true, false, true, NULL, OFF_G(admin.token),
     "bearer token POST /upstreams/... needs (secret); empty: local peers only"},
    /* [fallback] */
    {SEC_FALLBACK, "mode", CT_ENUM, "auto", NOB, true, false, false, "auto|always|off",
     OFF_G(fallback.mode), "auto: when no upstream can answer; always: never upstream; off: 503"},
    {SEC_FALLBACK, "workers", CT_INT, "1", 1, 256, false, false, false, NULL,
     OFF_G(fallback.workers), "embedding worker threads"},
    {SEC_FALLBACK, "queue_size", CT_INT, "1024", 1, 1048576, false, false, false, NULL,
     OFF_G(fallback.queue_size), "fallback jobs waiting at most; beyond it 503"},
    {SEC_FALLBACK, "dimensions", CT_INT, "384", 1, 4096, true, false, false, NULL,
     OFF_G(fallback.dimensions), "vector size when neither request nor model names one"},
    {SEC_FALLBACK, "queue_timeout", CT_DURATION, "1s", 0, 3600000, false, false, false, NULL,
     OFF_G(fallback.queue_timeout_ms), "a job waiting longer is answered 503; 0: never"},
    /* [telemetry] */
    {SEC_TELEMETRY, "service_name", CT_STRING, "akosha", NOB, false, false, false, NULL,
     OFF_G(telemetry.service_name), "service.name of exported spans"},
    {SEC_TELEMETRY, "environment", CT_STRING, "development", NOB, false, false, false, NULL,
     OFF_G(telemetry.environment), "deployment.environment; sets the default sample rate"},
    {SEC_TELEMETRY, "otlp_endpoint", CT_STRING, "", NOB, false, false, false, NULL,
     OFF_G(telemetry.otlp_endpoint), "OTLP base URL (port 4318 HTTP, 4317 gRPC); empty: no export"},
    {SEC_TELEMETRY, "otlp_protocol", CT_ENUM, NULL, NOB, false, false, false,
     "http/protobuf|http/json|grpc", OFF_G(telemetry.otlp_protocol),
     "OTLP transport; unset: grpc when the endpoint's port is 4317, else http/protobuf"},
    {SEC_TELEMETRY, "otlp_headers", CT_STRING, "", NOB, false, false, true, NULL,
     OFF_G(telemetry.otlp_headers), "k=v,k2=v2 headers sent to the collector (secret)"},
    {SEC_TELEMETRY, "sample_rate", CT_DOUBLE, NULL, 0, 1, false, false, false, NULL,
     OFF_G(telemetry.sample_rate), "trace ratio; unset: 1.0 in development, else 0.1"},
    {SEC_TELEMETRY, "console_export", CT_BOOL, "no", NOB, false, false, false, NULL,
     OFF_G(telemetry.console_export), "also print each finished span as JSON on stderr"},
    {SEC_TELEMETRY, "shutdown_timeout", CT_DURATION, "5s", 0, 60000, true, false, false, NULL,
     OFF_G(telemetry.shutdown_timeout_ms), "after the drain, time left to export queued spans"},
    /* [cache] */
    {SEC_CACHE, "memory", CT_SIZE, NULL, 0, 1099511627776.0, false, false, false, NULL,
     OFF_G(cache.memory), "memory for cached vectors, all overhead counted; unset or 0: off"},
    {SEC_CACHE, "ttl", CT_DURATION, "7d", 0, 315360000000.0, true, false, false, NULL,
     OFF_G(cache.ttl_ms), "a cached vector younger than this answers without an upstream"},
    {SEC_CACHE, "stale_if_error", CT_DURATION, "30d", 0, 315360000000.0, true, false, false,
     NULL, OFF_G(cache.stale_if_error_ms),
     "an older one up to this age answers only when no upstream can; >= ttl"},
    {SEC_CACHE, "per_caller", CT_BOOL, "no", NOB, true, false, false, NULL,
     OFF_G(cache.per_caller), "key entries by the caller's Authorization too: no sharing"},
    {SEC_CACHE, "redis", CT_STRING, NULL, NOB, false, false, false, NULL, OFF_G(cache.redis),
     "shared tier: redis://IP:PORT/DB or unix:PATH; unset: none"},
    {SEC_CACHE, "redis_timeout", CT_DURATION, "20ms", 1, 10000, false, false, false, NULL,
     OFF_G(cache.redis_timeout_ms), "the most a Redis lookup adds to a request; then it misses"},
    {SEC_CACHE, "redis_prefix", CT_STRING, "akosha:", NOB, false, false, false, NULL,
     OFF_G(cache.redis_prefix), "put before each key's 64 hex digits in Redis"},
    {SEC_CACHE, "redis_password", CT_STRING, "", NOB, false, false, true, NULL,
     OFF_G(cache.redis_password), "AUTH password (secret), instead of the URL's"},
    /* [upstream NAME] */
    {SEC_UPSTREAM, "url", CT_URL, NULL, NOB, true, true, false, NULL, OFF_U(url),
     "http:// or https:// base URL, with an optional path prefix"},
    {SEC_UPSTREAM, "priority", CT_INT, "1", 0, 1000000, true, false, false, NULL,
     OFF_U(priority), "lower is tried first"},
    {SEC_UPSTREAM, "weight", CT_INT, "1", 1, 1000000, true, false, false, NULL, OFF_U(weight),
     "share among upstreams of equal priority"},
    {SEC_UPSTREAM, "connect_timeout", CT_DURATION, "2s", 1, 600000, true, false, false, NULL,
     OFF_U(connect_timeout_ms), "TCP and TLS connect limit"},
    {SEC_UPSTREAM, "call_timeout", CT_DURATION, "30s", 1, 86400000, true, false, false, NULL,
     OFF_U(call_timeout_ms), "one attempt's limit, never past the deadline; a failure"},
    {SEC_UPSTREAM, "max_connections", CT_INT, "64", 1, 65536, true, false, false, NULL,
     OFF_U(max_connections), "pooled connections to this upstream at most"},
    {SEC_UPSTREAM, "idle_timeout", CT_DURATION, "30s", 1, 3600000, true, false, false, NULL,
     OFF_U(idle_timeout_ms), "a pooled connection unused this long is closed"},
    {SEC_UPSTREAM, "header", CT_HEADER, NULL, NOB, true, false, true, NULL, OFF_U(headers),
     "repeatable \"Name: value\" added to every request (secret)"},
    {SEC_UPSTREAM, "tls_verify", CT_BOOL, "yes", NOB, true, false, false, NULL, OFF_U(tls_verify),
     "verify the certificate and host name of https upstreams"},
    {SEC_UPSTREAM, "tls_ca_file", CT_STRING, NULL, NOB, true, false, false, NULL,
     OFF_U(tls_ca_file), "PEM file of trusted CAs instead of the system store"},
    {SEC_UPSTREAM, "tls_server_name", CT_STRING, NULL, NOB, true, false, false, NULL,
     OFF_U(tls_server_name), "SNI and verified name instead of the URL's host"},
    {SEC_UPSTREAM, "host", CT_STRING, NULL, NOB, true, false, false, NULL, OFF_U(host),
     "Host header instead of tls_server_name, else the URL's host"},
    {SEC_UPSTREAM, "models", CT_LIST, NULL, NOB, true, false, false, NULL, OFF_U(models),
     "models served, as callers name them (NAME=REMOTE renames); none: any model"},
    {SEC_UPSTREAM, "failure_threshold", CT_INT, "5", 1, 1000000, true, false, false, NULL,
     OFF_U(failure_threshold), "consecutive failures that open the breaker"},
    {SEC_UPSTREAM, "open_timeout", CT_DURATION, "60s", 1, 86400000, true, false, false, NULL,
     OFF_U(open_timeout_ms), "time OPEN before a trial call is let through"},
    {SEC_UPSTREAM, "half_open_max_calls", CT_INT, "3", 1, 1000000, true, false, false, NULL,
     OFF_U(half_open_max_calls), "trial calls in flight at once while HALF_OPEN"},
    {SEC_UPSTREAM, "success_threshold", CT_INT, "2", 1, 1000000, true, false, false, NULL,
     OFF_U(success_threshold), "consecutive trial successes that close the breaker"},
    {SEC_UPSTREAM, "retries", CT_INT, "2", 0, 100, true, false, false, NULL, OFF_U(retries),
     "attempts after the first"},
    {SEC_UPSTREAM, "backoff_base", CT_DURATION, "100ms", 0, 3600000, true, false, false, NULL,
     OFF_U(backoff_base_ms), "first retry's backoff cap"},
    {SEC_UPSTREAM, "backoff_multiplier", CT_DOUBLE, "2.0", 1, 100, true, false, false, NULL,
     OFF_U(backoff_multiplier), "growth of the backoff cap per retry"},
    {SEC_UPSTREAM, "backoff_max", CT_DURATION, "2s", 0, 3600000, true, false, false, NULL,
     OFF_U(backoff_max_ms), "largest backoff cap"},
    {SEC_UPSTREAM, "max_retry_after", CT_DURATION, "30s", 0, 3600000, true, false, false, NULL,
     OFF_U(max_retry_after_ms), "longest Retry-After waited out; longer ones skip the upstream"},
    {SEC_UPSTREAM, "health_check", CT_STRING, NULL, NOB, true, false, false, NULL,
     OFF_U(health_check), "path probed with GET (after the url's prefix); unset: no checks"},
    {SEC_UPSTREAM, "health_interval", CT_DURATION, "5s", 50, 3600000, true, false, false, NULL,
     OFF_U(health_interval_ms), "time between the end of one check and the next (+-15% jitter)"},
    {SEC_UPSTREAM, "health_timeout", CT_DURATION, "1s", 1, 600000, true, false, false, NULL,
     OFF_U(health_timeout_ms), "one check's limit: connect, TLS, request and status line"},
    {SEC_UPSTREAM, "healthy_threshold", CT_INT, "2", 1, 100, true, false, false, NULL,
     OFF_U(healthy_threshold), "consecutive passing checks that make it healthy again"},
    {SEC_UPSTREAM, "unhealthy_threshold", CT_INT, "2", 1, 100, true, false, false, NULL,
     OFF_U(unhealthy_threshold), "consecutive failing checks that take it out of routing"},
    /* [model NAME] */
    {SEC_MODEL, "dimensions", CT_INT, NULL, 1, 4096, true, false, false, NULL, OFF_M(dimensions),
     "fallback vector size for requests naming this model"},
    {SEC_MODEL, "aliases", CT_LIST, NULL, NOB, true, false, false, NULL, OFF_M(aliases),
     "other names callers use for this model"},
    {SEC_MODEL, "revision", CT_STRING, "", NOB, true, false, false, NULL, OFF_M(revision),
     "part of the cache key: change it when the model behind the name changes"},
    {SEC_MODEL, "local", CT_STRING, NULL, NOB, true, false, false, NULL, OFF_M(local),
     "this model's sentence-transformers directory, run locally when upstreams fail"},
};
const size_t config_table_len = ARRAY_SIZE(config_table);

static const char *section_names[SEC_COUNT] = {"proxy",     "admin", "fallback", "telemetry",
                                               "cache",     "upstream", "model"};

const char *
config_section_name(enum config_section_kind s)
{
    return section_names[s];
}

int
config_key_index(enum config_section_kind sec, const char *name)
{
    for (size_t i = 0; i < config_table_len; i++) {
        if (config_table[i].section == sec && strcmp(config_table[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* ---- value parsers ---------------------------------------------------- */

int
config_parse_duration(const char *s, uint64_t *ms, const char **cause)
{
    char *end;
    double v;
    double mult;

    if (!isdigit((unsigned char)*s)) {
        *cause = "expected a duration like 250ms, 30s, 5m, 1h, 7d";
        return -1;
    }
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s) {
        *cause = "expected a duration like 250ms, 30s, 5m, 1h, 7d";
        return -1;
    }
    if (strcmp(end, "ms") == 0) {
        mult = 1;
    } else if (strcmp(end, "s") == 0) {
        mult = 1000;
    } else if (strcmp(end, "m") == 0) {
        mult = 60000;
    } else if (strcmp(end, "h") == 0) {
        mult = 3600000;
    } else if (strcmp(end, "d") == 0) {
        mult = 86400000;
    } else if (*end == '\0') {
        *cause = "a duration needs a unit: ms, s, m, h or d";
        return -1;
    } else {
        *cause = "unknown duration unit (use ms, s, m, h or d)";
        return -1;
    }
    v *= mult;
    if (v > 1e15) {
        *cause = "duration too large";
        return -1;
    }
    *ms = (uint64_t)llround(v);
    return 0;
}

int
config_parse_size(const char *s, uint64_t *bytes, const char **cause)
{
    char *end;
    unsigned long long v;
    uint64_t mult = 1;

    if (!isdigit((unsigned char)*s)) {
        *cause = "expected a size like 512, 64K, 16M or 1G";
        return -1;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0) {
        *cause = "size too large";
        return -1;
    }
    if (*end == 'K' || *end == 'k') {
        mult = 1024;
        end++;
    } else if (*end == 'M' || *end == 'm') {
        mult = 1024 * 1024;
        end++;
    } else if (*end == 'G' || *end == 'g') {
        mult = 1024ull * 1024 * 1024;
        end++;
    }
    if (*end == 'B' || *end == 'b') {
        end++;
    }
    if (*end != '\0') {
        *cause = "expected a size like 512, 64K, 16M or 1G";
        return -1;
    }
    if (v > UINT64_MAX / mult) {
        *cause = "size too large";
        return -1;
    }
    *bytes = v * mult;
    return 0;
}

int
config_parse_bool(const char *s, bool *out, const char **cause)
{
    static const char *yes[] = {"yes", "true", "on", "1"};
    static const char *no[] = {"no", "false", "off", "0"};

    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    *cause = "expected yes/no, true/false or on/off";
    return -1;
}

static int
parse_port(const char *s, uint16_t *port)
{
    char *end;
    long v;

    if (!isdigit((unsigned char)*s)) {
        return -1;
    }
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1 || v > 65535) {
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

int
config_parse_listen(const char *s, struct listen_addr *out, const char **cause)
{
    char host[256];
    const char *colon;
    uint16_t port;

    memset(out, 0, sizeof(*out));
    if (strncmp(s, "unix:", 5) == 0) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&out->ss;
        const char *path = s + 5;
        if (*path != '/') {
            *cause = "unix socket path must be absolute";
            return -1;
        }
        if (strlen(path) >= sizeof(sun->sun_path)) {
            *cause = "unix socket path too long";
            return -1;
        }
        sun->sun_family = AF_UNIX;
        strcpy(sun->sun_path, path);
        out->sslen = sizeof(*sun);
        out->is_unix = true;
        out->text = xstrdup(s);
        return 0;
    }
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host)) {
            *cause = "expected [v6-address]:port";
            return -1;
        }
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || (size_t)(colon - s) >= sizeof(host)) {
            *cause = "expected host:port, [v6]:port or unix:/path";
            return -1;
        }
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    if (parse_port(colon + 1, &port) < 0) {
        *cause = "port must be 1-65535";
        return -1;
    }
    if (*host == '\0' || strcmp(host, "*") == 0) {
        strcpy(host, "0.0.0.0");
    } else if (strcmp(host, "localhost") == 0) {
        strcpy(host, "127.0.0.1");
    }
    {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
            sin->sin_family = AF_INET;
            sin->sin_port = htons(port);
            out->sslen = sizeof(*sin);
        } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons(port);
            out->sslen = sizeof(*sin6);
        } else {
            /* Listeners bind at start-up and reload; no DNS there. */
            *cause = "listen host must be a numeric address (or localhost, *)";
            return -1;
        }
    }
    out->text = xstrdup(s);
    return 0;
}

int
config_parse_url(const char *s, struct upstream_url *out, const char **cause)
{
    const char *p, *auth_end, *hp_end;
    char host[256];
    uint16_t port;

    memset(out, 0, sizeof(*out));
    if (strncasecmp(s, "http://", 7) == 0) {
        out->tls = false;
        p = s + 7;
        port = 80;
    } else if (strncasecmp(s, "https://", 8) == 0) {
        out->tls = true;
        p = s + 8;
        port = 443;
    } else {
        *cause = "url must start with http:// or https://";
        return -1;
    }
    if (strpbrk(p, "?#") != NULL) {
        *cause = "url must not have a query or fragment";
        return -1;
    }
    if (strpbrk(p, " \t") != NULL) {
        *cause = "url must not contain spaces";
        return -1;
    }
    auth_end = strchr(p, '/');
    if (auth_end == NULL) {
        auth_end = p + strlen(p);
    }
    if (memchr(p, '@', (size_t)(auth_end - p)) != NULL) {
        *cause = "url must not carry credentials; use header = Authorization: ...";
        return -1;
    }
    if (*p == '[') {
        const char *close = memchr(p, ']', (size_t)(auth_end - p));
        if (close == NULL || (size_t)(close - p - 1) >= sizeof(host) || close == p + 1) {
            *cause = "bad IPv6 address in url";
            return -1;
        }
        memcpy(host, p + 1, (size_t)(close - p - 1));
        host[close - p - 1] = '\0';
        hp_end = close + 1;
        if (hp_end != auth_end && *hp_end != ':') {
            *cause = "bad IPv6 address in url";
            return -1;
        }
    } else {
        hp_end = memchr(p, ':', (size_t)(auth_end - p));
        if (hp_end == NULL) {
            hp_end = auth_end;
        }
        if (hp_end == p || (size_t)(hp_end - p) >= sizeof(host)) {
            *cause = "url has no host";
            return -1;
        }
        memcpy(host, p, (size_t)(hp_end - p));
        host[hp_end - p] = '\0';
        for (char *c = host; *c; c++) {
            if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.' && *c != '_') {
                *cause = "url host has invalid characters";
                return -1;
            }
        }
    }
    if (hp_end != auth_end) {
        char portbuf[8];
        size_t n = (size_t)(auth_end - hp_end - 1);
        if (n == 0 || n >= sizeof(portbuf)) {
            *cause = "url port must be 1-65535";
            return -1;
        }
        memcpy(portbuf, hp_end + 1, n);
        portbuf[n] = '\0';
        if (parse_port(portbuf, &port) < 0) {
            *cause = "url port must be 1-65535";
            return -1;
        }
    }
    out->text = xstrdup(s);
    out->host = xstrdup(host);
    out->port = port;
    {
        bool v6 = strchr(host, ':') != NULL;
        bool default_port = port == (out->tls ? 443 : 80);
        if (default_port) {
            out->authority = v6 ? xasprintf("[%s]", host) : xstrdup(host);
        } else {
            out->authority = v6 ? xasprintf("[%s]:%u", host, port) : xasprintf("%s:%u", host, port);
        }
    }
    {
        size_t plen = strlen(auth_end);
        while (plen > 0 && auth_end[plen - 1] == '/') {
            plen--;
        }
        out->prefix = xstrndup(auth_end, plen);
    }
    return 0;
}

/* ---- the parser -------------------------------------------------------- */

struct parser {
    const char *name;
    int line;
    struct config_errors *errs;
    const char *(*getenv_fn)(const char *);
    struct config *cfg;
    /* current section */
    enum config_section_kind sec;
    bool in_section;
    void *target;  /* struct config, upstream_config or model_config */
    char ***raw;   /* raw text array of the current section's target */
    int *set_line; /* line where each key was set, per table index, current section */
    int *global_set_line;
    int section_line[SEC_COUNT];
};

static void
add_error(struct config_errors *errs, const char *fmt, ...)
{
    struct buf b;
    va_list ap;

    buf_init(&b);
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    errs->msgs = xrealloc(errs->msgs, (errs->n + 1) * sizeof(char *));
    errs->msgs[errs->n++] = b.data;
}

static size_t
edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[64];

    if (la >= 63 || lb >= 63) {
        return 99;
    }
    for (size_t j = 0; j <= lb; j++) {
        row[j] = j;
    }
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            row[j] = MIN(MIN(row[j] + 1, row[j - 1] + 1), prev + cost);
            prev = cur;
        }
    }
    return row[lb];
}

/* Suggest the closest known key: first in the same section, then elsewhere. */
static void
suggest_key(struct parser *p, const char *key, char *out, size_t outlen)
{
    size_t best = 99;
    const struct config_key *bk = NULL;

    *out = '\0';
    for (size_t i = 0; i < config_table_len; i++) {
        const struct config_key *k = &config_table[i];
        size_t d = edit_distance(key, k->name);
        if (k->section != p->sec) {
            if (strcmp(key, k->name) == 0) {
                snprintf(out, outlen, " ('%s' belongs in [%s])", key, section_names[k->section]);
                return;
            }
            continue;
        }
        if (d < best) {
            best = d;
            bk = k;
        }
    }
    if (bk != NULL && best <= MAX(2, strlen(key) / 3)) {
        snprintf(out, outlen, " (did you mean '%s'?)", bk->name);
    }
}

static void
suggest_section(const char *name, char *out, size_t outlen)
{
    size_t best = 99;
    int bi = -1;

    *out = '\0';
    for (int i = 0; i < SEC_COUNT; i++) {
        size_t d = edit_distance(name, section_names[i]);
        if (d < best) {
            best = d;
            bi = i;
        }
    }
    if (bi >= 0 && best <= 2) {
        snprintf(out, outlen, " (did you mean [%s%s]?)", section_names[bi],
                 bi == SEC_UPSTREAM || bi == SEC_MODEL ? " NAME" : "");
    }
}

static char *
read_credential(const char *name, const char *(*getenv_fn)(const char *), const char **cause)
{
    const char *dir = getenv_fn("CREDENTIALS_DIRECTORY");
    char path[PATH_MAX];
    char data[8192];
    ssize_t n;
    int fd;

    if (dir == NULL || *dir == '\0') {
        *cause = "CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)";
        return NULL;
    }
    if (*name == '\0' || strchr(name, '/') != NULL || strcmp(name, "..") == 0) {
        *cause = "credential name must be a plain file name";
        return NULL;
    }
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path)) {
        *cause = "credential path too long";
        return NULL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *cause = "cannot open credential file";
        return NULL;
    }
    n = read(fd, data, sizeof(data) - 1);
    close(fd);
    if (n < 0) {
        *cause = "cannot read credential file";
        return NULL;
    }
    while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == '\r')) {
        n--;
    }
    return xstrndup(data, (size_t)n);
}

/*
 * Expand ${VAR} and ${file:NAME}; "$$" is a literal "$". Returns a malloc'd
 * string, or NULL after reporting an error. *expanded tells whether anything
 * came from outside the file (such values are never echoed).
 */
static char *
expand(struct parser *p, const char *key, const char *v, bool *expanded)
{
    struct buf b;

    *expanded = false;
    buf_init(&b);
    buf_append(&b, "", 0);
    while (*v) {
        if (v[0] == '$' && v[1] == '$') {
            buf_putc(&b, '$');
            v += 2;
            continue;
        }
        if (v[0] == '$' && v[1] == '{') {
            const char *end = strchr(v + 2, '}');
            char name[256];
            size_t n;
            if (end == NULL) {
                add_error(p->errs, "%s:%d: %s: unterminated ${ in value", p->name, p->line, key);
                buf_free(&b);
                return NULL;
            }
            n = (size_t)(end - v - 2);
            if (n == 0 || n >= sizeof(name)) {
                add_error(p->errs, "%s:%d: %s: empty or over-long ${} name", p->name, p->line,
                          key);
                buf_free(&b);
                return NULL;
            }
            memcpy(name, v + 2, n);
            name[n] = '\0';
            if (strncmp(name, "file:", 5) == 0) {
                const char *cause;
                char *val = read_credential(name + 5, p->getenv_fn, &cause);
                if (val == NULL) {
                    add_error(p->errs, "%s:%d: %s: ${%s}: %s", p->name, p->line, key, name,
                              cause);
                    buf_free(&b);
                    return NULL;
                }
                buf_puts(&b, val);
                free(val);
            } else {
                const char *val = p->getenv_fn(name);
                for (const char *c = name; *c; c++) {
                    if (!isalnum((unsigned char)*c) && *c != '_') {
                        add_error(p->errs, "%s:%d: %s: invalid variable name '%s'", p->name,
                                  p->line, key, name);
                        buf_free(&b);
                        return NULL;
                    }
                }
                if (val == NULL) {
                    add_error(p->errs, "%s:%d: %s: environment variable %s is not set", p->name,
                              p->line, key, name);
                    buf_free(&b);
                    return NULL;
                }
                buf_puts(&b, val);
            }
            *expanded = true;
            v = end + 1;
            continue;
        }
        buf_putc(&b, *v++);
    }
    return b.data;
}

static bool
check_bounds(struct parser *p, const struct config_key *k, double v, const char *shown)
{
    if (k->min <= k->max && (v < k->min || v > k->max)) {
        add_error(p->errs, "%s:%d: [%s] %s: %s is out of range", p->name, p->line,
                  section_names[k->section], k->name, shown);
        return false;
    }
    return true;
}

static void
name_list_free(struct name_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->names[i]);
        free(l->remotes[i]);
    }
    free(l->names);
    free(l->remotes);
    free(l->canon);
    memset(l, 0, sizeof(*l));
}

/* A model name as callers send it: printable, no blanks, quotes, commas or '='. */
bool
config_valid_model_name(const char *s, size_t n)
{
    if (n == 0 || n > 127) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch == 127 || ch == '"' || ch == '\\' || ch == ',' || ch == '=') {
            return false;
        }
    }
    return true;
}

/* "a, b=c": names separated by commas (blanks around them ignored), each NAME or NAME=REMOTE. */
static int
parse_name_list(const char *text, struct name_list *l, const char **cause)
{
    const char *p = text;

    while (*p != '\0') {
        const char *start, *end, *eq;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        start = p;
        while (*p != '\0' && *p != ',') {
            p++;
        }
        end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }
        if (*p == ',') {
            p++;
        }
        if (end == start) {
            *cause = "empty name in the list";
            return -1;
        }
        eq = memchr(start, '=', (size_t)(end - start));
        if (!config_valid_model_name(start, (size_t)((eq ? eq : end) - start)) ||
            (eq != NULL && !config_valid_model_name(eq + 1, (size_t)(end - eq - 1)))) {
            *cause = "a name must be 1-127 printable bytes without blanks, quotes, '\\', "
                     "',' or '=' (NAME=REMOTE renames)";
            return -1;
        }
        l->names = xrealloc(l->names, (l->n + 1) * sizeof(char *));
        l->remotes = xrealloc(l->remotes, (l->n + 1) * sizeof(char *));
        l->canon = xrealloc(l->canon, (l->n + 1) * sizeof(char *));
        l->canon[l->n] = NULL;
        l->names[l->n] = xstrndup(start, (size_t)((eq ? eq : end) - start));
        l->remotes[l->n] = eq ? xstrndup(eq + 1, (size_t)(end - eq - 1)) : NULL;
        l->n++;
    }
    if (l->n == 0) {
        *cause = "empty list";
        return -1;
    }
    return 0;
}

static void
free_value(const struct config_key *k, void *base)
{
    void *field = (char *)base + k->offset;

    switch (k->type) {
    case CT_STRING:
        free(*(char **)field);
        *(char **)field = NULL;
        break;
    case CT_LISTEN:
        free(((struct listen_addr *)field)->text);
        ((struct listen_addr *)field)->text = NULL;
        break;
    case CT_URL: {
        struct upstream_url *u = field;
        free(u->text);
        free(u->host);
        free(u->authority);
        free(u->prefix);
        memset(u, 0, sizeof(*u));
        break;
    }
    case CT_HEADER: {
        struct header_list *h = field;
        for (size_t i = 0; i < h->n; i++) {
            free(h->lines[i]);
        }
        free(h->lines);
        h->lines = NULL;
        h->n = 0;
        break;
    }
    case CT_LIST:
        name_list_free(field);
        break;
    default:
        break;
    }
}

/*
 * Parse text into the field of base described by k. Reports its own errors,
 * quoting shown: the value as written, never one expanded from ${...}.
 */
static bool
set_value(struct parser *p, const struct config_key *k, void *base, const char *text,
          const char *shown)
{
    void *field = (char *)base + k->offset;
    const char *cause = NULL;
    const char *sec = section_names[k->section];

    switch (k->type) {
    case CT_STRING:
        free(*(char **)field);
        *(char **)field = xstrdup(text);
        return true;
    case CT_INT: {
        char *end;
        long long v;
        errno = 0;
        v = strtoll(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0') {
            cause = "expected an integer";
            break;
        }
        if (!check_bounds(p, k, (double)v, shown)) {
            return false;
        }
        *(int64_t *)field = v;
        return true;
    }
    case CT_DOUBLE: {
        char *end;
        double v;
        errno = 0;
        v = strtod(text, &end);
        if (errno != 0 || end == text || *end != '\0' || !isfinite(v)) {
            cause = "expected a number";
            break;
        }
        if (!check_bounds(p, k, v, shown)) {
            return false;
        }
        *(double *)field = v;
        return true;
    }
    case CT_PERCENT: {
        char *end;
        double v;
        errno = 0;
        v = strtod(text, &end);
        if (errno != 0 || end == text || strcmp(end, "%") != 0 || !isfinite(v)) {
            cause = "expected a percentage like 20%";
            break;
        }
        v /= 100.0;
        if (!check_bounds(p, k, v, shown)) {
            return false;
        }
        *(double *)field = v;
        return true;
    }
    case CT_BOOL:
        if (config_parse_bool(text, field, &cause) == 0) {
            return true;
        }
        break;
    case CT_DURATION: {
        uint64_t ms;
        if (config_parse_duration(text, &ms, &cause) < 0) {
            break;
        }
        if (!check_bounds(p, k, (double)ms, shown)) {
            return false;
        }
        *(uint64_t *)field = ms;
        return true;
    }
    case CT_SIZE: {
        uint64_t bytes;
        if (config_parse_size(text, &bytes, &cause) < 0) {
            break;
        }
        if (!check_bounds(p, k, (double)bytes, shown)) {
            return false;
        }
        *(uint64_t *)field = bytes;
        return true;
    }
    case CT_LISTEN: {
        struct listen_addr la;
        if (config_parse_listen(text, &la, &cause) < 0) {
            break;
        }
        free_value(k, base);
        *(struct listen_addr *)field = la;
        return true;
    }
    case CT_URL: {
        struct upstream_url u;
        if (config_parse_url(text, &u, &cause) < 0) {
            break;
        }
        free_value(k, base);
        *(struct upstream_url *)field = u;
        return true;
    }
    case CT_HEADER: {
        struct header_list *h = field;
        const char *colon = strchr(text, ':');
        const char *c;
        if (colon == NULL || colon == text) {
            cause = "expected \"Name: value\"";
            break;
        }
        for (c = text; c < colon; c++) {
            if (!isalnum((unsigned char)*c) && strchr("!#$%&'*+-.^_`|~", *c) == NULL) {
                break;
            }
        }
        if (c != colon) {
            cause = "header name must be a token (no spaces before the colon)";
            break;
        }
        for (c = colon + 1; *c; c++) {
            if ((unsigned char)*c < 0x20 && *c != '\t') {
                break;
            }
        }
        if (*c != '\0') {
            cause = "header value has control characters";
            break;
        }
        {
            /* Akosha owns these; letting the file set them would break framing. */
            static const char *reserved[] = {"host", "content-length", "transfer-encoding",
                                             "connection", "keep-alive", "upgrade", "te"};
            size_t nlen = (size_t)(colon - text);
            for (size_t i = 0; i < ARRAY_SIZE(reserved); i++) {
                if (strlen(reserved[i]) == nlen && strncasecmp(text, reserved[i], nlen) == 0) {
                    cause = "this header is set by akosha and cannot be configured";
                    break;
                }
            }
            if (cause != NULL) {
                break;
            }
        }
        h->lines = xrealloc(h->lines, (h->n + 1) * sizeof(char *));
        h->lines[h->n++] = xstrdup(text);
        return true;
    }
    case CT_LIST: {
        struct name_list l = {0};
        if (parse_name_list(text, &l, &cause) < 0) {
            name_list_free(&l);
            break;
        }
        free_value(k, base);
        *(struct name_list *)field = l;
        return true;
    }
    case CT_MODE: {
        char *end;
        long v;
        errno = 0;
        v = strtol(text, &end, 8);
        if (*text != '0' || errno != 0 || end == text || *end != '\0') {
            cause = "expected octal permissions with a leading 0, like 0660";
            break;
        }
        if (!check_bounds(p, k, (double)v, shown)) {
            return false;
        }
        *(int *)field = (int)v;
        return true;
    }
    case CT_ENUM: {
        const char *opts = k->enum_values;
        int idx = 0;
        size_t tl = strlen(text);
        while (*opts) {
            const char *bar = strchr(opts, '|');
            size_t n = bar ? (size_t)(bar - opts) : strlen(opts);
            if (n == tl && strncmp(opts, text, n) == 0) {
                *(int *)field = idx;
                return true;
            }
            idx++;
            opts += n + (bar ? 1 : 0);
        }
        add_error(p->errs, "%s:%d: [%s] %s: '%s' is not one of %s", p->name, p->line, sec,
                  k->name, shown, k->enum_values);
        return false;
    }
    }
    add_error(p->errs, "%s:%d: [%s] %s: %s", p->name, p->line, sec, k->name,
              cause ? cause : "invalid value");
    return false;
}

static char ***
section_raw(struct config *cfg, enum config_section_kind sec, size_t idx)
{
    if (sec == SEC_UPSTREAM) {
        return &cfg->upstreams[idx].raw;
    }
    if (sec == SEC_MODEL) {
        return &cfg->models[idx].raw;
    }
    return &cfg->raw;
}

/* Apply defaults for every key of a section to base. */
static void
apply_defaults(struct parser *p, enum config_section_kind sec, void *base)
{
    int saved = p->line;

    p->line = 0;
    for (size_t i = 0; i < config_table_len; i++) {
        const struct config_key *k = &config_table[i];
        if (k->section != sec) {
            continue;
        }
        if (k->def != NULL) {
            /* A default that fails to parse is a bug in the table; tests catch it. */
            set_value(p, k, base, k->def, k->def);
        } else if (k->type == CT_DOUBLE) {
            *(double *)((char *)base + k->offset) = -1;
        } else if (k->type == CT_ENUM) {
            *(int *)((char *)base + k->offset) = -1; /* unset: the code decides */
        }
    }
    p->line = saved;
}

static bool
valid_section_name(const char *s)
{
    if (*s == '\0' || strlen(s) > 63) {
        return false;
    }
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.') {
            return false;
        }
    }
    return true;
}

static char *
trim(char *s)
{
    char *e;

    while (*s == ' ' || *s == '\t') {
        s++;
    }
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) {
        *--e = '\0';
    }
    return s;
}

static void
open_section(struct parser *p, char *spec)
{
    char *name = NULL;
    char *sp;
    int sec = -1;

    p->in_section = false;
    sp = strpbrk(spec, " \t");
    if (sp != NULL) {
        *sp = '\0';
        name = trim(sp + 1);
    }
    for (int i = 0; i < SEC_COUNT; i++) {
        if (strcmp(spec, section_names[i]) == 0) {
            sec = i;
        }
    }
    if (sec < 0) {
        char hint[96];
        suggest_section(spec, hint, sizeof(hint));
        add_error(p->errs, "%s:%d: unknown section [%s]%s", p->name, p->line, spec, hint);
        return;
    }
    if (sec == SEC_UPSTREAM || sec == SEC_MODEL) {
        size_t *n = sec == SEC_UPSTREAM ? &p->cfg->nupstreams : &p->cfg->nmodels;
        if (name == NULL || !valid_section_name(name)) {
            add_error(p->errs,
                      "%s:%d: [%s] needs a name of letters, digits, '-', '_' or '.', "
                      "like [%s NAME]",
                      p->name, p->line, spec, spec);
            return;
        }
        for (size_t i = 0; i < *n; i++) {
            const char *other =
                sec == SEC_UPSTREAM ? p->cfg->upstreams[i].name : p->cfg->models[i].name;
            int other_line =
                sec == SEC_UPSTREAM ? p->cfg->upstreams[i].line : p->cfg->models[i].line;
            if (strcmp(other, name) == 0) {
                add_error(p->errs, "%s:%d: duplicate section [%s %s] (first at line %d)",
                          p->name, p->line, spec, name, other_line);
                return;
            }
        }
        if (sec == SEC_UPSTREAM) {
            struct upstream_config *u;
            p->cfg->upstreams =
                xrealloc(p->cfg->upstreams, (*n + 1) * sizeof(struct upstream_config));
            u = &p->cfg->upstreams[*n];
            memset(u, 0, sizeof(*u));
            u->name = xstrdup(name);
            u->line = p->line;
            u->raw = xcalloc(config_table_len, sizeof(char *));
            apply_defaults(p, SEC_UPSTREAM, u);
            p->target = u;
        } else {
            struct model_config *m;
            p->cfg->models = xrealloc(p->cfg->models, (*n + 1) * sizeof(struct model_config));
            m = &p->cfg->models[*n];
            memset(m, 0, sizeof(*m));
            m->name = xstrdup(name);
            m->line = p->line;
            m->raw = xcalloc(config_table_len, sizeof(char *));
            apply_defaults(p, SEC_MODEL, m);
            p->target = m;
        }
        (*n)++;
        p->raw = section_raw(p->cfg, sec, *n - 1);
        free(p->set_line);
        p->set_line = xcalloc(config_table_len, sizeof(int));
    } else {
        if (name != NULL && *name != '\0') {
            add_error(p->errs, "%s:%d: section [%s] takes no name", p->name, p->line, spec);
            return;
        }
        if (p->section_line[sec] != 0) {
            add_error(p->errs, "%s:%d: duplicate section [%s] (first at line %d)", p->name,
                      p->line, spec, p->section_line[sec]);
            return;
        }
        p->section_line[sec] = p->line;
        p->target = p->cfg;
        p->raw = &p->cfg->raw;
        free(p->set_line);
        p->set_line = NULL;
    }
    p->sec = sec;
    p->in_section = true;
}

static void
parse_assignment(struct parser *p, char *line)
{
    char *eq = strchr(line, '=');
    char *key, *value, *expanded_value;
    int idx;
    int *set_line;
    const struct config_key *k;
    bool expanded;

    if (eq == NULL) {
        add_error(p->errs, "%s:%d: expected 'key = value', '[section]' or a comment", p->name,
                  p->line);
        return;
    }
    *eq = '\0';
    key = trim(line);
    value = trim(eq + 1);
    if (*key == '\0') {
        add_error(p->errs, "%s:%d: missing key before '='", p->name, p->line);
        return;
    }
    if (!p->in_section) {
        if (p->sec == SEC_COUNT) {
            add_error(p->errs, "%s:%d: %s: key outside any section", p->name, p->line, key);
        }
        /* Otherwise the section header was bad and already reported. */
        return;
    }
    idx = config_key_index(p->sec, key);
    if (idx < 0) {
        char hint[128];
        suggest_key(p, key, hint, sizeof(hint));
        add_error(p->errs, "%s:%d: [%s] %s: unknown key%s", p->name, p->line,
                  section_names[p->sec], key, hint);
        return;
    }
    k = &config_table[idx];
    set_line = p->set_line != NULL ? &p->set_line[idx] : &p->global_set_line[idx];
    if (*set_line != 0 && k->type != CT_HEADER) {
        add_error(p->errs, "%s:%d: [%s] %s: set twice (first at line %d)", p->name, p->line,
                  section_names[p->sec], key, *set_line);
        return;
    }
    *set_line = p->line;
    if (*value == '\0' && k->type != CT_STRING) {
        add_error(p->errs, "%s:%d: [%s] %s: empty value", p->name, p->line,
                  section_names[p->sec], key);
        return;
    }
    expanded_value = expand(p, key, value, &expanded);
    if (expanded_value == NULL) {
        return;
    }
    if (set_value(p, k, p->target, expanded_value, value)) {
        char **raw = *p->raw;
        if (k->type == CT_HEADER && raw[idx] != NULL) {
            char *joined = xasprintf("%s\n%s", raw[idx], value);
            free(raw[idx]);
            raw[idx] = joined;
        } else {
            free(raw[idx]);
            raw[idx] = xstrdup(value);
        }
    }
    free(expanded_value);
}

static const char *
default_getenv(const char *name)
{
    return getenv(name);
}

/* A Host field value: visible ASCII, no blanks, commas or slashes (RFC 9110 7.2). */
static bool
valid_host_value(const char *v)
{
    if (*v == '\0') {
        return false;
    }
    for (; *v != '\0'; v++) {
        if (*v <= ' ' || *v >= 127 || *v == ',' || *v == '/' || *v == '@') {
            return false;
        }
    }
    return true;
}

/* Model names: one meaning per name, one name per model in a list, a default that exists. */
static void
validate_models(struct parser *p)
{
    const struct config *cfg = p->cfg;

    for (size_t i = 0; i < cfg->nmodels; i++) {
        struct model_config *m = &p->cfg->models[i];
        if (m->local != NULL) {
            /* Blocking file I/O: config loads run at start-up, on the reload thread, or for -t. */
            char *cause = NULL;
            if (bert_load(m->local, &m->bert, &cause) < 0) {
                add_error(p->errs, "%s:%d: [model %s] local: %s", p->name, m->line, m->name,
                          cause);
                free(cause);
            } else if (m->dimensions > 0 &&
                       (size_t)m->dimensions != bert_info(m->bert)->hidden) {
                add_error(p->errs,
                          "%s:%d: [model %s] dimensions: %lld, but the local model makes %zu",
                          p->name, m->line, m->name, (long long)m->dimensions,
                          bert_info(m->bert)->hidden);
            }
        }
        if (!config_valid_model_name(m->name, strlen(m->name))) {
            add_error(p->errs, "%s:%d: [model %s]: not a valid model name", p->name, m->line,
                      m->name);
        }
        for (size_t j = 0; j < m->aliases.n; j++) {
            const char *alias = m->aliases.names[j];
            if (m->aliases.remotes[j] != NULL) {
                add_error(p->errs, "%s:%d: [model %s] aliases: %s=%s: an alias takes no '='",
                          p->name, m->line, m->name, alias, m->aliases.remotes[j]);
                continue;
            }
            /* The first model owning the name, by section or alias order. */
            const char *owner = model_canonical(cfg, alias);
            if (strcmp(alias, m->name) == 0 || owner != m->name ||
                (model_section(cfg, alias) != NULL && model_section(cfg, alias) != m)) {
                add_error(p->errs,
                          "%s:%d: [model %s] aliases: %s already names %s; an alias names one "
                          "model",
                          p->name, m->line, m->name, alias,
                          model_section(cfg, alias) != NULL ? alias : owner);
            }
        }
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct upstream_config *u = &cfg->upstreams[i];
        for (size_t j = 0; j < u->models.n; j++) {
            const char *cj = model_canonical(cfg, u->models.names[j]);
            /* resolved once here, so routing compares names and walks no lists */
            u->models.canon[j] = cj;
            for (size_t k = 0; k < j; k++) {
                if (strcmp(u->models.canon[k], cj) == 0) {
                    add_error(p->errs,
                              "%s:%d: [upstream %s] models: %s and %s are the same model (%s); "
                              "list it once",
                              p->name, u->line, u->name, u->models.names[k], u->models.names[j],
                              cj);
                }
            }
        }
    }
    if (cfg->proxy.default_model != NULL && model_canonical(cfg, cfg->proxy.default_model) == NULL) {
        add_error(p->errs,
                  "%s:%d: [proxy] default_model: %s is named by no upstream's models and no "
                  "[model] section",
                  p->name, p->section_line[SEC_PROXY], cfg->proxy.default_model);
    }
    if (cfg->proxy.access_log != NULL && cfg->proxy.access_log[0] == '\0') {
        add_error(p->errs, "%s:%d: [proxy] access_log: empty; off, stderr or a file path",
                  p->name, p->section_line[SEC_PROXY]);
    }
}

/* A request target we can put on the wire as it is. */
static bool
valid_health_path(const char *s)
{
    if (s[0] != '/') {
        return false;
    }
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s <= ' ' || (unsigned char)*s == 0x7f) {
            return false;
        }
    }
    return true;
}

static void
validate(struct parser *p)
{
    struct config *cfg = p->cfg;

    p->line = 0;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct upstream_config *u = &cfg->upstreams[i];
        if (u->url.text == NULL) {
            add_error(p->errs, "%s:%d: [upstream %s] url: required key is missing", p->name,
                      u->line, u->name);
        } else if (u->host != NULL) {
            u->host_header = xstrdup(u->host);
        } else if (u->tls_server_name != NULL) {
            /* Virtual hosts route by the name the certificate is for: Host follows SNI. */
            bool default_port = u->url.port == (u->url.tls ? 443 : 80);
            u->host_header = default_port
                                 ? xstrdup(u->tls_server_name)
                                 : xasprintf("%s:%u", u->tls_server_name, (unsigned)u->url.port);
        } else {
            u->host_header = xstrdup(u->url.authority);
        }
        if (u->host != NULL && !valid_host_value(u->host)) {
            add_error(p->errs, "%s:%d: [upstream %s] host: not a valid Host value", p->name,
                      u->line, u->name);
        }
        if (u->tls_ca_file != NULL && access(u->tls_ca_file, R_OK) != 0) {
            /* Name the file as written: an expanded ${VAR} may be a secret. */
            add_error(p->errs, "%s:%d: [upstream %s] tls_ca_file: cannot read %s", p->name,
                      u->line, u->name, u->raw[config_key_index(SEC_UPSTREAM, "tls_ca_file")]);
        }
        if (u->health_check != NULL && !valid_health_path(u->health_check)) {
            add_error(p->errs,
                      "%s:%d: [upstream %s] health_check: not a path (starts with /, no "
                      "blanks or control bytes)",
                      p->name, u->line, u->name);
        }
        if (u->backoff_max_ms < u->backoff_base_ms) {
            add_error(p->errs, "%s:%d: [upstream %s] backoff_max: smaller than backoff_base",
                      p->name, u->line, u->name);
        }
    }
    validate_models(p);
    if (cfg->cache.stale_if_error_ms < cfg->cache.ttl_ms) {
        add_error(p->errs,
                  "%s:%d: [cache] stale_if_error: shorter than ttl; an entry is served stale "
                  "only after its ttl, so stale_if_error must be at least ttl",
                  p->name, p->section_line[SEC_CACHE]);
    }
    if (cfg->cache.redis != NULL) {
        struct redis_addr addr;
        const char *cause = NULL;
        /* Quote the value as written: an expanded ${VAR} may hold a password. */
        if (config_parse_redis_addr(cfg->cache.redis, &addr, &cause) != 0) {
            add_error(p->errs, "%s:%d: [cache] redis: %s", p->name, p->section_line[SEC_CACHE],
                      cause);
        } else {
            config_redis_addr_free(&addr);
        }
    }
    if (cfg->cache.redis_prefix != NULL &&
        strlen(cfg->cache.redis_prefix) > CONFIG_REDIS_PREFIX_MAX) {
        add_error(p->errs, "%s:%d: [cache] redis_prefix: longer than %d bytes", p->name,
                  p->section_line[SEC_CACHE], CONFIG_REDIS_PREFIX_MAX);
    }
    if (cfg->proxy.listen.text != NULL && cfg->admin.listen.text != NULL &&
        cfg->proxy.listen.sslen == cfg->admin.listen.sslen &&
        memcmp(&cfg->proxy.listen.ss, &cfg->admin.listen.ss, cfg->proxy.listen.sslen) == 0) {
        add_error(p->errs, "%s:%d: [admin] listen: must differ from [proxy] listen", p->name,
                  p->section_line[SEC_ADMIN]);
    }
}

struct config *
config_parse(const char *name, const char *text, size_t len, struct config_errors *errs,
             const char *(*getenv_fn)(const char *))
{
    struct parser p;
    struct config *cfg = xcalloc(1, sizeof(*cfg));
    size_t errs_before = errs->n;
    const char *pos = text, *end = text + len;

    memset(&p, 0, sizeof(p));
    p.name = name;
    p.errs = errs;
    p.getenv_fn = getenv_fn ? getenv_fn : default_getenv;
    p.cfg = cfg;
    p.sec = SEC_COUNT;
    p.global_set_line = xcalloc(config_table_len, sizeof(int));
    cfg->refs = 1;
    cfg->path = xstrdup(name);
    cfg->raw = xcalloc(config_table_len, sizeof(char *));
    for (int s = 0; s < SEC_COUNT; s++) {
        if (s != SEC_UPSTREAM && s != SEC_MODEL) {
            apply_defaults(&p, s, cfg);
        }
    }

    while (pos < end) {
        const char *nl = memchr(pos, '\n', (size_t)(end - pos));
        size_t n = nl ? (size_t)(nl - pos) : (size_t)(end - pos);
        char *line = xstrndup(pos, n);
        char *t;

        p.line++;
        pos += n + (nl ? 1 : 0);
        if (memchr(pos - n - (nl ? 1 : 0), '\0', n) != NULL) {
            add_error(errs, "%s:%d: NUL byte in line", name, p.line);
            free(line);
            continue;
        }
        t = trim(line);
        if (*t == '\0' || *t == '#' || *t == ';') {
            free(line);
            continue;
        }
        if (*t == '[') {
            char *close = strchr(t, ']');
            if (close == NULL || *trim(close + 1) != '\0') {
                add_error(errs, "%s:%d: malformed section header", name, p.line);
                p.in_section = false;
            } else {
                *close = '\0';
                open_section(&p, trim(t + 1));
            }
            free(line);
            continue;
        }
        parse_assignment(&p, t);
        free(line);
    }
    validate(&p);
    free(p.set_line);
    free(p.global_set_line);
    if (errs->n > errs_before) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

struct config *
config_load(const char *path, struct config_errors *errs, const char *(*getenv_fn)(const char *))
{
    struct buf b;
    char chunk[16384];
    struct config *cfg;
    ssize_t n;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        add_error(errs, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    buf_init(&b);
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
        buf_append(&b, chunk, (size_t)n);
        if (b.len > 4 * 1024 * 1024) {
            add_error(errs, "%s: file larger than 4M", path);
            close(fd);
            buf_free(&b);
            return NULL;
        }
    }
    if (n < 0) {
        add_error(errs, "%s: read error: %s", path, strerror(errno));
        close(fd);
        buf_free(&b);
        return NULL;
    }
    close(fd);
    cfg = config_parse(path, b.data ? b.data : "", b.len, errs, getenv_fn);
    buf_free(&b);
    return cfg;
}

static void
free_section(enum config_section_kind sec, void *base, char **raw)
{
    for (size_t i = 0; i < config_table_len; i++) {
        if (config_table[i].section == sec) {
            free_value(&config_table[i], base);
        }
        if (raw != NULL && config_table[i].section == sec) {
            free(raw[i]);
            raw[i] = NULL;
        }
    }
}

void
config_free(struct config *cfg)
{
    if (cfg == NULL) {
        return;
    }
    for (int s = 0; s < SEC_COUNT; s++) {
        if (s != SEC_UPSTREAM && s != SEC_MODEL) {
            free_section(s, cfg, cfg->raw);
        }
    }
    free(cfg->raw);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        free_section(SEC_UPSTREAM, &cfg->upstreams[i], cfg->upstreams[i].raw);
        free(cfg->upstreams[i].raw);
        free(cfg->upstreams[i].name);
        free(cfg->upstreams[i].host_header);
    }
    free(cfg->upstreams);
    for (size_t i = 0; i < cfg->nmodels; i++) {
        free_section(SEC_MODEL, &cfg->models[i], cfg->models[i].raw);
        free(cfg->models[i].raw);
        free(cfg->models[i].name);
        bert_free(cfg->models[i].bert);
    }
    free(cfg->models);
    free(cfg->path);
    free(cfg);
}

void
config_ref(struct config *cfg)
{
    cfg->refs++;
}

void
config_unref(struct config *cfg)
{
    if (cfg != NULL && --cfg->refs == 0) {
        config_free(cfg);
    }
}

void
config_errors_free(struct config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++) {
        free(errs->msgs[i]);
    }
    free(errs->msgs);
    errs->msgs = NULL;
    errs->n = 0;
}

/* Whether raw text (lines joined by '\n' for headers) has a line without ${...}. */
static bool
has_literal_line(const char *raw)
{
    while (raw != NULL && *raw != '\0') {
        const char *nl = strchr(raw, '\n');
        size_t n = nl != NULL ? (size_t)(nl - raw) : strlen(raw);
        char *line = xstrndup(raw, n);
        bool literal = strstr(line, "${") == NULL;
        free(line);
        if (literal) {
            return true;
        }
        raw += n + (nl != NULL ? 1 : 0);
    }
    return false;
}

static bool
literal_in(enum config_section_kind sec, const char *name, char **raw, char *out, size_t outlen)
{
    for (size_t i = 0; i < config_table_len; i++) {
        const struct config_key *k = &config_table[i];
        if (k->section == sec && k->secret && has_literal_line(raw[i])) {
            if (name != NULL) {
                snprintf(out, outlen, "[%s %s] %s", section_names[sec], name, k->name);
            } else {
                snprintf(out, outlen, "[%s] %s", section_names[sec], k->name);
            }
            return true;
        }
    }
    return false;
}

bool
config_literal_secret(const struct config *cfg, char *out, size_t outlen)
{
    for (int s = 0; s < SEC_COUNT; s++) {
        if (s != SEC_UPSTREAM && s != SEC_MODEL && literal_in(s, NULL, cfg->raw, out, outlen)) {
            return true;
        }
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (literal_in(SEC_UPSTREAM, cfg->upstreams[i].name, cfg->upstreams[i].raw, out,
                       outlen)) {
            return true;
        }
    }
    return false;
}

/* ---- [cache] redis: the Redis tier's address ------------------------------ */

void
config_redis_addr_free(struct redis_addr *a)
{
    free(a->user);
    if (a->password != NULL) {
        explicit_bzero(a->password, strlen(a->password));
        free(a->password);
    }
    memset(a, 0, sizeof(*a));
}

/* A decimal number in [s, end) no larger than max. */
static bool
redis_parse_uint(const char *s, const char *end, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (s == end) {
        return false;
    }
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') {
            return false;
        }
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > max) {
            return false;
        }
    }
    *out = v;
    return true;
}

static int
redis_parse_unix(const char *spec, struct redis_addr *out, const char **cause)
{
    const char *q = strchr(spec, '?');
    size_t len = q != NULL ? (size_t)(q - spec) : strlen(spec);
    uint64_t db = 0;

    if (len == 0 || spec[0] != '/') {
        *cause = "unix: needs an absolute socket path";
        return -1;
    }
    if (len >= sizeof(out->path)) {
        *cause = "unix: socket path too long";
        return -1;
    }
    if (q != NULL) {
        if (strncmp(q, "?db=", 4) != 0 || !redis_parse_uint(q + 4, q + strlen(q), INT32_MAX, &db)) {
            *cause = "unix:PATH takes only ?db=N after the path";
            return -1;
        }
    }
    out->is_unix = true;
    memcpy(out->path, spec, len);
    out->path[len] = '\0';
    out->db = (uint32_t)db;
    return 0;
}

static int
redis_parse_url(const char *spec, struct redis_addr *out, const char **cause)
{
    const char *slash = strchr(spec, '/');
    const char *auth_end = slash != NULL ? slash : spec + strlen(spec);
    const char *at = NULL, *host, *host_end, *port = NULL;
    unsigned char probe[sizeof(struct in6_addr)];
    uint64_t v;

    /* The last '@' before the path ends the userinfo: a password may hold '@'. */
    for (const char *p = spec; p < auth_end; p++) {
        if (*p == '@') {
            at = p;
        }
    }
    if (at != NULL) {
        const char *colon = memchr(spec, ':', (size_t)(at - spec));
        if (colon == NULL || colon + 1 == at) {
            *cause = "redis:// userinfo must be [USER]:PASSWORD";
            return -1;
        }
        if (colon > spec) {
            out->user = xstrndup(spec, (size_t)(colon - spec));
        }
        out->password = xstrndup(colon + 1, (size_t)(at - colon - 1));
        host = at + 1;
    } else {
        host = spec;
    }
    if (*host == '[') {
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (host_end == NULL) {
            *cause = "redis:// IPv6 address without ']'";
            return -1;
        }
        host++;
        if (host_end + 1 < auth_end) {
            if (host_end[1] != ':') {
                *cause = "redis:// expected ':' after the IPv6 address";
                return -1;
            }
            port = host_end + 2;
        }
    } else {
        host_end = memchr(host, ':', (size_t)(auth_end - host));
        if (host_end != NULL) {
            port = host_end + 1;
        } else {
            host_end = auth_end;
        }
    }
    if (host_end == host) {
        *cause = "redis:// needs a host";
        return -1;
    }
    if ((size_t)(host_end - host) >= sizeof(out->host)) {
        *cause = "redis:// host too long";
        return -1;
    }
    memcpy(out->host, host, (size_t)(host_end - host));
    out->host[host_end - host] = '\0';
    if (strcmp(out->host, "localhost") == 0) {
        snprintf(out->host, sizeof(out->host), "127.0.0.1");
    } else if (inet_pton(AF_INET, out->host, probe) != 1 &&
               inet_pton(AF_INET6, out->host, probe) != 1) {
        /* hiredis would resolve a name with a blocking getaddrinfo on the loop. */
        *cause = "redis:// host must be a numeric IP address or localhost";
        return -1;
    }
    out->port = 6379;
    if (port != NULL) {
        if (!redis_parse_uint(port, auth_end, 65535, &v) || v == 0) {
            *cause = "redis:// port must be 1..65535";
            return -1;
        }
        out->port = (uint16_t)v;
    }
    if (slash != NULL && slash[1] != '\0') {
        if (!redis_parse_uint(slash + 1, slash + strlen(slash), INT32_MAX, &v)) {
            *cause = "redis:// database must be a number after the '/'";
            return -1;
        }
        out->db = (uint32_t)v;
    }
    return 0;
}

int
config_parse_redis_addr(const char *text, struct redis_addr *out, const char **cause)
{
    int rc;

    memset(out, 0, sizeof(*out));
    if (text == NULL || *text == '\0') {
        *cause = "empty address";
        return -1;
    }
    if (strncmp(text, "unix:", 5) == 0) {
        rc = redis_parse_unix(text + 5, out, cause);
    } else if (strncmp(text, "redis://", 8) == 0) {
        rc = redis_parse_url(text + 8, out, cause);
    } else {
        *cause = "address must be redis://HOST:PORT/DB or unix:PATH";
        rc = -1;
    }
    if (rc != 0) {
        config_redis_addr_free(out);
    }
    return rc;
}

/* ---- /config dump ------------------------------------------------------ */

/* The value as JSON: raw text as written (before ${} expansion), or the default. */
static void
dump_key(const struct config_key *k, char **raw, struct buf *out)
{
    const char *text = raw[k - config_table];

    buf_json_string(out, k->name, strlen(k->name));
    buf_putc(out, ':');
    if (text == NULL) {
        text = k->def;
    }
    if (text == NULL) {
        buf_puts(out, "null");
        return;
    }
    if (k->type == CT_HEADER) {
        /* Show header names only: values are credentials. */
        const char *line = text;
        buf_putc(out, '[');
        while (*line) {
            const char *nl = strchr(line, '\n');
            const char *colon = strchr(line, ':');
            size_t n = nl ? (size_t)(nl - line) : strlen(line);
            size_t name_len = colon && (size_t)(colon - line) < n ? (size_t)(colon - line) : n;
            struct buf h;
            buf_init(&h);
            buf_append(&h, line, name_len);
            buf_puts(&h, ": <redacted>");
            if (line != text) {
                buf_putc(out, ',');
            }
            buf_json_string(out, h.data, h.len);
            buf_free(&h);
            line += n + (nl ? 1 : 0);
        }
        buf_putc(out, ']');
        return;
    }
    if (k->secret && *text != '\0') {
        buf_puts(out, "\"<redacted>\"");
        return;
    }
    if (strstr(text, "://") != NULL) {
        /* A URL's user:password@ is a credential whatever key holds it. */
        char *shown = util_url_redact(text);
        buf_json_string(out, shown, strlen(shown));
        free(shown);
        return;
    }
    buf_json_string(out, text, strlen(text));
}

static void
dump_section(enum config_section_kind sec, char **raw, struct buf *out)
{
    bool first = true;

    buf_putc(out, '{');
    for (size_t i = 0; i < config_table_len; i++) {
        if (config_table[i].section != sec) {
            continue;
        }
        if (!first) {
            buf_putc(out, ',');
        }
        first = false;
        dump_key(&config_table[i], raw, out);
    }
    buf_putc(out, '}');
}

void
config_dump_json(const struct config *cfg, struct buf *out)
{
    buf_puts(out, "{\"file\":");
    buf_json_string(out, cfg->path, strlen(cfg->path));
    for (int s = 0; s < SEC_COUNT; s++) {
        if (s == SEC_UPSTREAM || s == SEC_MODEL) {
            continue;
        }
        buf_printf(out, ",\"%s\":", section_names[s]);
        dump_section(s, cfg->raw, out);
    }
    buf_puts(out, ",\"upstreams\":{");
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (i > 0) {
            buf_putc(out, ',');
        }
        buf_json_string(out, cfg->upstreams[i].name, strlen(cfg->upstreams[i].name));
        buf_putc(out, ':');
        dump_section(SEC_UPSTREAM, cfg->upstreams[i].raw, out);
    }
    buf_puts(out, "},\"models\":{");
    for (size_t i = 0; i < cfg->nmodels; i++) {
        if (i > 0) {
            buf_putc(out, ',');
        }
        buf_json_string(out, cfg->models[i].name, strlen(cfg->models[i].name));
        buf_putc(out, ':');
        dump_section(SEC_MODEL, cfg->models[i].raw, out);
    }
    buf_puts(out, "}}");
}

static bool
same_text(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    return strcmp(a, b) == 0;
}

void
config_restart_needed(const struct config *old, const struct config *cur, struct buf *out)
{
    for (size_t i = 0; i < config_table_len; i++) {
        const struct config_key *k = &config_table[i];
        if (k->reloadable || k->section == SEC_UPSTREAM || k->section == SEC_MODEL) {
            continue;
        }
        if (!same_text(old->raw[i], cur->raw[i])) {
            if (out->len > 0) {
                buf_puts(out, ", ");
            }
            buf_printf(out, "[%s] %s", section_names[k->section], k->name);
        }
    }
}
