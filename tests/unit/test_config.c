/*
 * test_config.c - the config table and parser: every value type, every
 * error, suggestions, ${VAR} and ${file:NAME} expansion, duplicates.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "model.h"

static const char *fake_env_dir;

static const char *
fake_getenv(const char *name)
{
    if (strcmp(name, "API_KEY") == 0) {
        return "sk-secret";
    }
    if (strcmp(name, "EMPTY") == 0) {
        return "";
    }
    if (strcmp(name, "CREDENTIALS_DIRECTORY") == 0) {
        return fake_env_dir;
    }
    return NULL;
}

static struct config *
parse(const char *text, struct config_errors *errs)
{
    memset(errs, 0, sizeof(*errs));
    return config_parse("t.conf", text, strlen(text), errs, fake_getenv);
}

/* Parse text expecting failure; the first error must contain want. */
static void
expect_error(const char *text, const char *want)
{
    struct config_errors errs;
    struct config *cfg = parse(text, &errs);

    cr_assert_null(cfg, "expected failure for: %s", text);
    cr_assert_geq(errs.n, 1);
    cr_assert_not_null(strstr(errs.msgs[0], want), "error '%s' lacks '%s'", errs.msgs[0], want);
    config_errors_free(&errs);
}

Test(config, empty_file_gives_every_default)
{
    struct config_errors errs;
    struct config *cfg = parse("", &errs);

    cr_assert_not_null(cfg);
    cr_assert_str_eq(cfg->proxy.listen.text, "127.0.0.1:8080");
    cr_assert_eq(cfg->proxy.max_body_size, 16u * 1024 * 1024);
    cr_assert_eq(cfg->proxy.max_header_size, 64u * 1024);
    cr_assert_eq(cfg->proxy.request_timeout_ms, 60000);
    cr_assert_eq(cfg->proxy.client_timeout_ms, 60000);
    cr_assert_eq(cfg->proxy.max_connections, 4096);
    cr_assert_eq(cfg->proxy.drain_timeout_ms, 30000);
    cr_assert_float_eq(cfg->proxy.retry_budget, 0.2, 1e-9);
    cr_assert_float_eq(cfg->proxy.retry_budget_min, 10.0, 1e-9);
    cr_assert_str_eq(cfg->admin.listen.text, "127.0.0.1:3002");
    cr_assert_eq(cfg->fallback.mode, FALLBACK_AUTO);
    cr_assert_eq(cfg->fallback.workers, 1);
    cr_assert_eq(cfg->fallback.queue_size, 1024);
    cr_assert_eq(cfg->fallback.dimensions, 384);
    cr_assert_str_eq(cfg->telemetry.service_name, "akosha");
    cr_assert(cfg->telemetry.sample_rate < 0, "unset sample_rate is negative");
    cr_assert_eq(cfg->telemetry.shutdown_timeout_ms, 5000);
    cr_assert_eq(cfg->nupstreams, 0);
    config_free(cfg);
}

Test(config, cache_section_defaults_values_and_stale_not_below_ttl)
{
    struct config_errors errs;
    struct config *cfg = parse("", &errs);

    cr_assert_not_null(cfg);
    cr_assert_eq(cfg->cache.memory, 0, "off unless set");
    cr_assert_eq(cfg->cache.ttl_ms, 7ull * 86400000);
    cr_assert_eq(cfg->cache.stale_if_error_ms, 30ull * 86400000);
    cr_assert_eq(cfg->cache.per_caller, false);
    config_free(cfg);

    cfg = parse("[cache]\nmemory = 64M\nttl = 1h\nstale_if_error = 1h\nper_caller = yes\n"
                "[model m]\nrevision = 2024-06\n[model n]\n",
                &errs);
    cr_assert_not_null(cfg, "%s", errs.n > 0 ? errs.msgs[0] : "?");
    cr_assert_eq(cfg->cache.memory, 64u * 1024 * 1024);
    cr_assert_eq(cfg->cache.ttl_ms, 3600000);
    cr_assert_eq(cfg->cache.stale_if_error_ms, 3600000, "equal to ttl is allowed");
    cr_assert(cfg->cache.per_caller);
    cr_assert_str_eq(cfg->models[0].revision, "2024-06");
    cr_assert_str_eq(cfg->models[1].revision, "", "revision defaults to empty");
    config_free(cfg);

    expect_error("[cache]\nttl = 2d\nstale_if_error = 1d\n",
                 "[cache] stale_if_error: shorter than ttl");
    /* The default stale_if_error (30d) is checked against a raised ttl as well. */
    expect_error("[cache]\nttl = 31d\n", "stale_if_error: shorter than ttl");
    expect_error("[cache]\nmemory = lots\n", "[cache] memory");
}

Test(config, cache_redis_keys_defaults_values_and_secrets)
{
    char dir[] = "/tmp/akosha-cred-XXXXXX";
    char path[128];
    FILE *f;
    struct config_errors errs;
    struct config *cfg = parse("", &errs);
    struct buf dump;
    char which[128];

    cr_assert_not_null(cfg);
    cr_assert_null(cfg->cache.redis, "no Redis unless set");
    cr_assert_eq(cfg->cache.redis_timeout_ms, 20);
    cr_assert_str_eq(cfg->cache.redis_prefix, "akosha:");
    cr_assert_str_eq(cfg->cache.redis_password, "");
    config_free(cfg);

    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/redis_password", dir);
    f = fopen(path, "w");
    fputs("pw-from-file\n", f);
    fclose(f);
    fake_env_dir = dir;
    cfg = parse("[cache]\nredis = redis://127.0.0.1:6380/3\nredis_timeout = 5ms\n"
                "redis_prefix = svc:\nredis_password = ${file:redis_password}\n",
                &errs);
    cr_assert_not_null(cfg, "%s", errs.n > 0 ? errs.msgs[0] : "?");
    cr_assert_str_eq(cfg->cache.redis, "redis://127.0.0.1:6380/3");
    cr_assert_eq(cfg->cache.redis_timeout_ms, 5);
    cr_assert_str_eq(cfg->cache.redis_prefix, "svc:");
    cr_assert_str_eq(cfg->cache.redis_password, "pw-from-file");
    cr_expect_not(config_literal_secret(cfg, which, sizeof(which)));
    buf_init(&dump);
    config_dump_json(cfg, &dump);
    cr_assert_null(strstr(dump.data, "pw-from-file"), "%s", dump.data);
    cr_assert_not_null(strstr(dump.data, "\"redis_password\":\"<redacted>\""), "%s", dump.data);
    buf_free(&dump);
    config_free(cfg);
    fake_env_dir = NULL;
    unlink(path);
    rmdir(dir);

    /* A password in the URL is redacted in the dump like any URL's userinfo. */
    cfg = parse("[cache]\nredis = redis://:pw-in-url@[::1]:6379\n", &errs);
    cr_assert_not_null(cfg, "%s", errs.n > 0 ? errs.msgs[0] : "?");
    buf_init(&dump);
    config_dump_json(cfg, &dump);
    cr_assert_null(strstr(dump.data, "pw-in-url"), "%s", dump.data);
    buf_free(&dump);
    config_free(cfg);
    cfg = parse("[cache]\nredis = unix:/run/redis/redis.sock?db=2\nredis_password = x\n", &errs);
    cr_assert_not_null(cfg, "%s", errs.n > 0 ? errs.msgs[0] : "?");
    cr_assert(config_literal_secret(cfg, which, sizeof(which)));
    cr_expect_str_eq(which, "[cache] redis_password");
    config_free(cfg);

    expect_error("[cache]\nredis = redis://cache.internal:6379\n",
                 "[cache] redis: redis:// host must be a numeric IP address or localhost");
    expect_error("[cache]\nredis = tcp://127.0.0.1\n", "[cache] redis: address must be");
    expect_error("[cache]\nredis_timeout = 0ms\n", "[cache] redis_timeout");
    expect_error("[cache]\nredis_timeout = 11s\n", "[cache] redis_timeout");
}

Test(config, redis_address_parses_urls_and_unix_paths)
{
    struct redis_addr a;
    const char *cause = NULL;

    cr_assert_eq(config_parse_redis_addr("redis://127.0.0.1:6380/2", &a, &cause), 0);
    cr_assert(!a.is_unix);
    cr_assert_str_eq(a.host, "127.0.0.1");
    cr_assert_eq(a.port, 6380);
    cr_assert_eq(a.db, 2);
    cr_assert_null(a.password);
    config_redis_addr_free(&a);

    cr_assert_eq(config_parse_redis_addr("redis://:p@ss:w@[::1]:7000", &a, &cause), 0);
    cr_assert_str_eq(a.host, "::1");
    cr_assert_eq(a.port, 7000);
    cr_assert_null(a.user);
    cr_assert_str_eq(a.password, "p@ss:w");
    config_redis_addr_free(&a);

    cr_assert_eq(config_parse_redis_addr("redis://cache:secret@localhost", &a, &cause), 0);
    cr_assert_str_eq(a.host, "127.0.0.1");
    cr_assert_eq(a.port, 6379);
    cr_assert_eq(a.db, 0);
    cr_assert_str_eq(a.user, "cache");
    cr_assert_str_eq(a.password, "secret");
    config_redis_addr_free(&a);

    cr_assert_eq(config_parse_redis_addr("unix:/run/redis/redis.sock?db=3", &a, &cause), 0);
    cr_assert(a.is_unix);
    cr_assert_str_eq(a.path, "/run/redis/redis.sock");
    cr_assert_eq(a.db, 3);
    config_redis_addr_free(&a);
}

Test(config, redis_address_refuses_names_that_would_block_and_bad_forms)
{
    static const char *bad[] = {
        "redis://redis.internal:6379", /* a name: getaddrinfo would block the loop */
        "redis://127.0.0.1:0",         "redis://127.0.0.1:65536", "redis://127.0.0.1/x",
        "redis://user@127.0.0.1",      "redis://[::1",            "redis://",
        "http://127.0.0.1:6379",       "unix:relative.sock",      "unix:/a.sock?database=1",
        "",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct redis_addr a;
        const char *cause = NULL;
        cr_assert_eq(config_parse_redis_addr(bad[i], &a, &cause), -1, "%s accepted", bad[i]);
        cr_assert_not_null(cause);
        cr_assert_null(a.password);
    }
}

Test(config, upstream_section_defaults_and_values)
{
    struct config_errors errs;
    struct config *cfg = parse("# comment\n; another\n[upstream tei]\n"
                               "url = https://gpu.example:8443/v1/\n"
                               "priority = 2\nweight = 3\nconnect_timeout = 250ms\n"
                               "call_timeout = 5m\ntls_verify = off\nretries = 0\n"
                               "backoff_multiplier = 1.5\n",
                               &errs);
    const struct upstream_config *u;

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_assert_eq(cfg->nupstreams, 1);
    u = &cfg->upstreams[0];
    cr_assert_str_eq(u->name, "tei");
    cr_assert(u->url.tls);
    cr_assert_str_eq(u->url.host, "gpu.example");
    cr_assert_eq(u->url.port, 8443);
    cr_assert_str_eq(u->url.authority, "gpu.example:8443");
    cr_assert_str_eq(u->url.prefix, "/v1");
    cr_assert_eq(u->priority, 2);
    cr_assert_eq(u->weight, 3);
    cr_assert_eq(u->connect_timeout_ms, 250);
    cr_assert_eq(u->call_timeout_ms, 300000);
    cr_assert_not(u->tls_verify);
    cr_assert_eq(u->retries, 0);
    cr_assert_float_eq(u->backoff_multiplier, 1.5, 1e-9);
    /* defaults of the rows not set */
    cr_assert_eq(u->failure_threshold, 5);
    cr_assert_eq(u->open_timeout_ms, 60000);
    cr_assert_eq(u->half_open_max_calls, 3);
    cr_assert_eq(u->success_threshold, 2);
    cr_assert_eq(u->backoff_base_ms, 100);
    cr_assert_eq(u->backoff_max_ms, 2000);
    cr_assert_eq(u->max_retry_after_ms, 30000);
    cr_assert_eq(u->max_connections, 64);
    config_free(cfg);
}

Test(config, durations)
{
    uint64_t ms;
    const char *cause;

    cr_assert_eq(config_parse_duration("250ms", &ms, &cause), 0);
    cr_assert_eq(ms, 250);
    cr_assert_eq(config_parse_duration("30s", &ms, &cause), 0);
    cr_assert_eq(ms, 30000);
    cr_assert_eq(config_parse_duration("5m", &ms, &cause), 0);
    cr_assert_eq(ms, 300000);
    cr_assert_eq(config_parse_duration("1h", &ms, &cause), 0);
    cr_assert_eq(ms, 3600000);
    cr_assert_eq(config_parse_duration("1.5s", &ms, &cause), 0);
    cr_assert_eq(ms, 1500);
    cr_assert_eq(config_parse_duration("30", &ms, &cause), -1);
    cr_assert_not_null(strstr(cause, "unit"));
    cr_assert_eq(config_parse_duration("7d", &ms, &cause), 0);
    cr_assert_eq(ms, 7ull * 86400000);
    cr_assert_eq(config_parse_duration("1.5d", &ms, &cause), 0);
    cr_assert_eq(ms, 129600000);
    cr_assert_eq(config_parse_duration("3w", &ms, &cause), -1);
    cr_assert_not_null(strstr(cause, "d)"), "the error lists d: %s", cause);
    cr_assert_eq(config_parse_duration("3dd", &ms, &cause), -1);
    cr_assert_eq(config_parse_duration("-1s", &ms, &cause), -1);
    cr_assert_eq(config_parse_duration("s", &ms, &cause), -1);
}

Test(config, sizes)
{
    uint64_t b;
    const char *cause;

    cr_assert_eq(config_parse_size("512", &b, &cause), 0);
    cr_assert_eq(b, 512);
    cr_assert_eq(config_parse_size("64K", &b, &cause), 0);
    cr_assert_eq(b, 65536);
    cr_assert_eq(config_parse_size("16M", &b, &cause), 0);
    cr_assert_eq(b, 16u << 20);
    cr_assert_eq(config_parse_size("1G", &b, &cause), 0);
    cr_assert_eq(b, 1ull << 30);
    cr_assert_eq(config_parse_size("1T", &b, &cause), -1);
    cr_assert_eq(config_parse_size("K", &b, &cause), -1);
    cr_assert_eq(config_parse_size("99999999999999999999", &b, &cause), -1);
}

Test(config, booleans)
{
    bool v;
    const char *cause;
    const char *yes[] = {"yes", "true", "on", "YES"};
    const char *no[] = {"no", "false", "off", "Off"};

    for (size_t i = 0; i < 4; i++) {
        cr_assert_eq(config_parse_bool(yes[i], &v, &cause), 0);
        cr_assert(v);
        cr_assert_eq(config_parse_bool(no[i], &v, &cause), 0);
        cr_assert_not(v);
    }
    cr_assert_eq(config_parse_bool("maybe", &v, &cause), -1);
}

Test(config, listen_forms)
{
    struct listen_addr la;
    const char *cause;

    cr_assert_eq(config_parse_listen("127.0.0.1:8080", &la, &cause), 0);
    cr_assert_eq(la.ss.ss_family, AF_INET);
    free(la.text);
    cr_assert_eq(config_parse_listen("[::1]:9000", &la, &cause), 0);
    cr_assert_eq(la.ss.ss_family, AF_INET6);
    free(la.text);
    cr_assert_eq(config_parse_listen("unix:/run/akosha.sock", &la, &cause), 0);
    cr_assert(la.is_unix);
    free(la.text);
    cr_assert_eq(config_parse_listen("127.0.0.1:0", &la, &cause), -1);
    cr_assert_eq(config_parse_listen("127.0.0.1:70000", &la, &cause), -1);
    cr_assert_eq(config_parse_listen("example.com:80", &la, &cause), -1);
    cr_assert_eq(config_parse_listen("unix:relative", &la, &cause), -1);
    cr_assert_eq(config_parse_listen("[::1:80", &la, &cause), -1);
}

Test(config, url_forms)
{
    struct upstream_url u;
    const char *cause;

    cr_assert_eq(config_parse_url("http://127.0.0.1:11434", &u, &cause), 0);
    cr_assert_not(u.tls);
    cr_assert_eq(u.port, 11434);
    cr_assert_str_eq(u.prefix, "");
    free(u.text), free(u.host), free(u.authority), free(u.prefix);
    cr_assert_eq(config_parse_url("https://api.openai.com", &u, &cause), 0);
    cr_assert_eq(u.port, 443);
    cr_assert_str_eq(u.authority, "api.openai.com");
    free(u.text), free(u.host), free(u.authority), free(u.prefix);
    cr_assert_eq(config_parse_url("http://[::1]:8081/base", &u, &cause), 0);
    cr_assert_str_eq(u.host, "::1");
    cr_assert_str_eq(u.authority, "[::1]:8081");
    cr_assert_str_eq(u.prefix, "/base");
    free(u.text), free(u.host), free(u.authority), free(u.prefix);
    cr_assert_eq(config_parse_url("ftp://x", &u, &cause), -1);
    cr_assert_eq(config_parse_url("http://", &u, &cause), -1);
    cr_assert_eq(config_parse_url("http://h:0", &u, &cause), -1);
    cr_assert_eq(config_parse_url("http://h/x?q=1", &u, &cause), -1);
    cr_assert_eq(config_parse_url("http://user:pw@h/", &u, &cause), -1);
    cr_assert_not_null(strstr(cause, "credentials"));
}

Test(config, unknown_key_suggests_the_closest)
{
    expect_error("[proxy]\nmax_body_sise = 1M\n", "did you mean 'max_body_size'");
    expect_error("[upstream a]\nurl = http://h\nfailure_treshold = 3\n",
                 "did you mean 'failure_threshold'");
}

Test(config, key_in_wrong_section_names_the_right_one)
{
    expect_error("[proxy]\nretries = 3\n", "belongs in [upstream]");
}

Test(config, unknown_section_suggests)
{
    expect_error("[upstreem a]\n", "did you mean [upstream NAME]");
    expect_error("[nonsense]\n", "unknown section [nonsense]");
}

Test(config, errors_name_file_line_and_key)
{
    expect_error("\n\n[proxy]\nrequest_timeout = forever\n", "t.conf:4: [proxy] request_timeout");
}

Test(config, every_error_is_reported)
{
    struct config_errors errs;
    struct config *cfg = parse("[proxy]\nmax_connections = x\nclient_timeout = 3\n"
                               "[upstream a]\npriority = 1\n",
                               &errs);

    cr_assert_null(cfg);
    cr_assert_eq(errs.n, 3, "got %zu errors", errs.n);
    cr_assert_not_null(strstr(errs.msgs[0], ":2:"));
    cr_assert_not_null(strstr(errs.msgs[1], ":3:"));
    cr_assert_not_null(strstr(errs.msgs[2], "url: required"));
    config_errors_free(&errs);
}

Test(config, bounds_are_enforced)
{
    expect_error("[proxy]\nmax_connections = 0\n", "out of range");
    expect_error("[fallback]\ndimensions = 5000\n", "out of range");
    expect_error("[upstream a]\nurl = http://h\nretries = 101\n", "out of range");
    expect_error("[proxy]\nretry_budget = 20\n", "percentage");
}

Test(config, duplicates_are_errors)
{
    expect_error("[proxy]\n[proxy]\n", "duplicate section [proxy]");
    expect_error("[upstream a]\nurl = http://h\n[upstream a]\nurl = http://h\n",
                 "duplicate section [upstream a]");
    expect_error("[proxy]\nlisten = 127.0.0.1:1\nlisten = 127.0.0.1:2\n", "set twice");
}

Test(config, header_repeats_and_expands_env)
{
    struct config_errors errs;
    struct config *cfg = parse("[upstream a]\nurl = http://h\n"
                               "header = Authorization: Bearer ${API_KEY}\n"
                               "header = X-Team: search $$5\n",
                               &errs);
    struct buf dump;

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_assert_eq(cfg->upstreams[0].headers.n, 2);
    cr_assert_str_eq(cfg->upstreams[0].headers.lines[0], "Authorization: Bearer sk-secret");
    cr_assert_str_eq(cfg->upstreams[0].headers.lines[1], "X-Team: search $5");
    buf_init(&dump);
    config_dump_json(cfg, &dump);
    cr_assert_null(strstr(dump.data, "sk-secret"), "secret leaked into /config");
    cr_assert_not_null(strstr(dump.data, "Authorization: <redacted>"));
    buf_free(&dump);
    config_free(cfg);
}

Test(config, missing_env_var_is_an_error)
{
    expect_error("[upstream a]\nurl = http://h\nheader = Authorization: ${NOPE}\n",
                 "environment variable NOPE is not set");
    expect_error("[upstream a]\nurl = http://h\nheader = A: ${API_KEY\n", "unterminated");
}

Test(config, file_credentials_are_read)
{
    char dir[] = "/tmp/akosha-cred-XXXXXX";
    char path[128];
    FILE *f;
    struct config_errors errs;
    struct config *cfg;

    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/openai_key", dir);
    f = fopen(path, "w");
    fputs("sk-from-file\n", f);
    fclose(f);
    fake_env_dir = dir;
    cfg = parse("[upstream a]\nurl = http://h\nheader = Authorization: Bearer ${file:openai_key}\n",
                &errs);
    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_assert_str_eq(cfg->upstreams[0].headers.lines[0], "Authorization: Bearer sk-from-file");
    config_free(cfg);
    expect_error("[upstream a]\nurl = http://h\nheader = A: ${file:../etc/passwd}\n",
                 "plain file name");
    expect_error("[upstream a]\nurl = http://h\nheader = A: ${file:missing}\n", "cannot open");
    fake_env_dir = NULL;
    expect_error("[upstream a]\nurl = http://h\nheader = A: ${file:x}\n",
                 "CREDENTIALS_DIRECTORY is not set");
    unlink(path);
    rmdir(dir);
}

Test(config, reserved_headers_are_refused)
{
    expect_error("[upstream a]\nurl = http://h\nheader = Host: evil\n", "set by akosha");
    expect_error("[upstream a]\nurl = http://h\nheader = NoColon\n", "Name: value");
}

Test(config, enum_values)
{
    struct config_errors errs;
    struct config *cfg = parse("[fallback]\nmode = always\n", &errs);

    cr_assert_not_null(cfg);
    cr_assert_eq(cfg->fallback.mode, FALLBACK_ALWAYS);
    config_free(cfg);
    expect_error("[fallback]\nmode = sometimes\n", "not one of auto|always|off");
}

Test(config, syntax_errors)
{
    expect_error("listen = 1\n", "outside any section");
    expect_error("[proxy\n", "malformed section header");
    expect_error("[proxy]\njust words\n", "expected 'key = value'");
    expect_error("[upstream]\n", "needs a name");
    expect_error("[proxy x]\n", "takes no name");
    expect_error("[proxy]\nlisten =\n", "empty value");
}

Test(config, admin_and_proxy_must_differ)
{
    expect_error("[proxy]\nlisten = 127.0.0.1:9\n[admin]\nlisten = 127.0.0.1:9\n",
                 "must differ");
}

Test(config, every_default_in_the_table_parses)
{
    /* Each row's default goes through the same parser as the file. */
    struct config_errors errs;
    struct config *cfg = parse("[upstream a]\nurl = http://h\n[model m]\ndimensions = 8\n", &errs);

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_assert_eq(errs.n, 0);
    cr_assert_eq(cfg->models[0].dimensions, 8);
    config_free(cfg);
    /* A [model] section may only give aliases: its size is then learned, or the default. */
    cfg = parse("[model m]\naliases = mm\n", &errs);
    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_assert_eq(cfg->models[0].dimensions, 0);
    config_free(cfg);
}

/* ---- model names (issue 15) ------------------------------------------------ */

Test(config, model_lists_parse_names_and_renames)
{
    struct config_errors errs;
    struct config *cfg = parse("[upstream a]\nurl = http://h\nmodels = bge-small , "
                               "text-embedding-3-small=openai/te3s,nomic:latest\n"
                               "[model bge-small]\naliases = bge, BAAI/bge-small-en-v1.5\n",
                               &errs);
    const struct name_list *l;

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    l = &cfg->upstreams[0].models;
    cr_assert_eq(l->n, 3);
    cr_expect_str_eq(l->names[0], "bge-small");
    cr_expect_null(l->remotes[0]);
    cr_expect_str_eq(l->names[1], "text-embedding-3-small");
    cr_expect_str_eq(l->remotes[1], "openai/te3s");
    cr_expect_str_eq(l->names[2], "nomic:latest");
    cr_expect_eq(cfg->models[0].aliases.n, 2);
    cr_expect_str_eq(cfg->models[0].aliases.names[1], "BAAI/bge-small-en-v1.5");
    config_free(cfg);
}

Test(config, model_lists_refuse_bad_names)
{
    expect_error("[upstream a]\nurl = http://h\nmodels = a,,b\n", "empty name");
    expect_error("[upstream a]\nurl = http://h\nmodels = a b\n", "a name must be");
    expect_error("[upstream a]\nurl = http://h\nmodels = a=\n", "a name must be");
    expect_error("[upstream a]\nurl = http://h\nmodels = \"a\"\n", "a name must be");
    expect_error("[model m]\naliases = x=y\n", "an alias takes no '='");
}

Test(config, model_check_reports_collisions_repeats_and_an_unknown_default)
{
    /* an alias naming another model, or another model's alias */
    expect_error("[model a]\n[model b]\naliases = a\n", "aliases: a already names a");
    expect_error("[model a]\naliases = x\n[model b]\naliases = x\n", "aliases: x already names a");
    expect_error("[model a]\naliases = a\n", "aliases: a already names a");
    /* an upstream listing one model twice, by two names or with two renames */
    expect_error("[upstream u]\nurl = http://h\nmodels = a=x, a=y\n", "are the same model (a)");
    expect_error("[model a]\naliases = b\n[upstream u]\nurl = http://h\nmodels = a, b=z\n",
                 "a and b are the same model (a)");
    /* a default nobody serves */
    expect_error("[proxy]\ndefault_model = ghost\n[upstream u]\nurl = http://h\nmodels = a\n",
                 "default_model: ghost is named by no upstream");
}

Test(model, canonical_names_aliases_and_what_each_upstream_serves)
{
    struct config_errors errs;
    struct config *cfg = parse("[proxy]\ndefault_model = small\n"
                               "[upstream tei]\nurl = http://h\nmodels = bge\n"
                               "[upstream openai]\nurl = https://o\nmodels = te3=text-embedding-3-small\n"
                               "[upstream any]\nurl = http://a\n"
                               "[model bge-small]\naliases = bge, small\ndimensions = 384\n",
                               &errs);
    const char *remote = "unset";

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_expect_str_eq(model_canonical(cfg, "bge"), "bge-small");
    cr_expect_str_eq(model_canonical(cfg, "small"), "bge-small");
    cr_expect_str_eq(model_canonical(cfg, "bge-small"), "bge-small");
    cr_expect_str_eq(model_canonical(cfg, "te3"), "te3");
    cr_expect_null(model_canonical(cfg, "text-embedding-3-small"), "a remote name is no caller's");
    cr_expect_null(model_canonical(cfg, "nope"));
    cr_expect_null(model_canonical(cfg, ""));
    cr_expect(model_names_configured(cfg));
    cr_expect(model_open_upstream(cfg));
    cr_expect_eq(model_section(cfg, "bge-small")->dimensions, 384);
    cr_expect_null(model_section(cfg, "te3"));

    cr_expect(model_upstream_serves(cfg, &cfg->upstreams[0], "bge-small", &remote));
    cr_expect_null(remote);
    cr_expect_not(model_upstream_serves(cfg, &cfg->upstreams[0], "te3", NULL));
    cr_expect_not(model_upstream_serves(cfg, &cfg->upstreams[0], NULL, NULL));
    cr_expect(model_upstream_serves(cfg, &cfg->upstreams[1], "te3", &remote));
    cr_expect_str_eq(remote, "text-embedding-3-small");
    cr_expect_not(model_upstream_serves(cfg, &cfg->upstreams[1], "bge-small", NULL));
    /* an upstream without a list serves every model, and requests naming none */
    cr_expect(model_upstream_serves(cfg, &cfg->upstreams[2], "bge-small", &remote));
    cr_expect_null(remote);
    cr_expect(model_upstream_serves(cfg, &cfg->upstreams[2], NULL, NULL));
    config_free(cfg);

    cfg = parse("[upstream a]\nurl = http://h\n", &errs);
    cr_assert_not_null(cfg);
    cr_expect_not(model_names_configured(cfg), "the embedded default names no model");
    cr_expect(model_open_upstream(cfg));
    config_free(cfg);
}

Test(model, learned_sizes_evict_the_least_used)
{
    char name[32];

    model_learned_reset();
    for (int i = 0; i < MODEL_LEARNED_MAX; i++) {
        snprintf(name, sizeof(name), "made-up-%d", i);
        model_learn_dim(name, 8, 1000 + (uint64_t)i);
    }
    model_learn_dim("real", 1536, 5000);
    cr_expect_eq(model_learned_dim("made-up-0", 5001), 0, "the oldest made-up name gave way");
    cr_expect_eq(model_learned_dim("real", 5002), 1536);
    for (int i = MODEL_LEARNED_MAX; i < 2 * MODEL_LEARNED_MAX; i++) {
        snprintf(name, sizeof(name), "made-up-%d", i);
        model_learn_dim(name, 8, 6000 + (uint64_t)i);
    }
    cr_expect_eq(model_learned_dim("real", 9000), 1536, "a model in use outlives the flood");
    /* due: unknown, then claimed once per MODEL_LEARNED_REFRESH_MS */
    cr_expect(model_dim_due("new", 100));
    model_learn_dim("new", 4, 100);
    cr_expect_not(model_dim_due("new", 100 + MODEL_LEARNED_REFRESH_MS - 1));
    cr_expect(model_dim_due("new", 100 + MODEL_LEARNED_REFRESH_MS));
    cr_expect_not(model_dim_due("new", 100 + MODEL_LEARNED_REFRESH_MS + 1));
    model_learned_reset();
}

Test(config, restart_needed_lists_non_reloadable_changes)
{
    struct config_errors errs;
    struct config *a = parse("[fallback]\nworkers = 1\n", &errs);
    struct config *b = parse("[fallback]\nworkers = 2\n", &errs);
    struct buf out;

    buf_init(&out);
    config_restart_needed(a, b, &out);
    cr_assert_not_null(out.data);
    cr_assert_not_null(strstr(out.data, "[fallback] workers"));
    buf_free(&out);
    config_free(a);
    config_free(b);
}

Test(util, json_strings_replace_invalid_utf8)
{
    struct buf b;

    buf_init(&b);
    buf_json_string(&b, "a\xff" "b\xc3\xa9" "c\xcd", 7);
    cr_assert_str_eq(b.data, "\"a\\ufffdb\xc3\xa9" "c\\ufffd\"");
    buf_free(&b);
    buf_init(&b);
    buf_json_string(&b, "\xed\xa0\x80\xc0\xaf\"\n", 7); /* a surrogate, an overlong form */
    cr_assert_str_eq(b.data, "\"\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\\"\\n\"");
    buf_free(&b);
}

Test(config, error_messages_never_show_expanded_values)
{
    struct config_errors errs;
    struct config *cfg = parse("[upstream u]\nurl = http://h\ntls_ca_file = ${API_KEY}\n", &errs);

    cr_assert_null(cfg);
    cr_assert_eq(errs.n, 1);
    cr_assert_null(strstr(errs.msgs[0], "sk-secret"), "%s", errs.msgs[0]);
    cr_assert_not_null(strstr(errs.msgs[0], "${API_KEY}"), "%s", errs.msgs[0]);
    config_errors_free(&errs);
}

Test(config, enum_and_bound_errors_quote_the_value_as_written)
{
    struct config_errors errs;
    struct config *cfg = parse("[fallback]\nmode = x${API_KEY}\nworkers = ${EMPTY}0\n", &errs);

    cr_assert_null(cfg);
    cr_assert_eq(errs.n, 2);
    for (size_t i = 0; i < errs.n; i++) {
        cr_assert_null(strstr(errs.msgs[i], "sk-secret"), "%s", errs.msgs[i]);
        cr_assert_not_null(strstr(errs.msgs[i], "${"), "%s", errs.msgs[i]);
    }
    config_errors_free(&errs);
}

Test(config, listen_mode_is_octal_with_a_leading_zero)
{
    struct config_errors errs;
    struct config *cfg = parse("[proxy]\nlisten_mode = 0660\n", &errs);

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_expect_eq(cfg->proxy.listen_mode, 0660);
    cr_expect_eq(cfg->admin.listen_mode, 0600);
    config_free(cfg);
    cfg = parse("", &errs);
    cr_assert_not_null(cfg);
    cr_expect_eq(cfg->proxy.listen_mode, 0666);
    config_free(cfg);
    expect_error("[proxy]\nlisten_mode = 660\n", "leading 0");
    expect_error("[admin]\nlisten_mode = 0689\n", "octal");
    expect_error("[admin]\nlisten_mode = 01777\n", "out of range");
}

Test(config, admin_token_is_secret_in_the_dump)
{
    struct config_errors errs;
    struct config *cfg = parse("[admin]\ntoken = ${API_KEY}\n", &errs);
    struct buf dump;

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_assert_str_eq(cfg->admin.token, "sk-secret");
    buf_init(&dump);
    config_dump_json(cfg, &dump);
    cr_assert_null(strstr(dump.data, "sk-secret"), "%s", dump.data);
    cr_assert_null(strstr(dump.data, "API_KEY"), "%s", dump.data);
    cr_assert_not_null(strstr(dump.data, "\"token\":\"<redacted>\""), "%s", dump.data);
    buf_free(&dump);
    config_free(cfg);
    cfg = parse("", &errs);
    cr_assert_str_eq(cfg->admin.token, "");
    config_free(cfg);
}

Test(config, dump_drops_userinfo_from_any_url_value)
{
    struct config_errors errs;
    struct config *cfg =
        parse("[telemetry]\notlp_endpoint = https://u:pw-123@collector:4318/x\n", &errs);
    struct buf dump;

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    buf_init(&dump);
    config_dump_json(cfg, &dump);
    cr_assert_null(strstr(dump.data, "pw-123"), "%s", dump.data);
    cr_assert_not_null(strstr(dump.data, "https://***@collector:4318/x"), "%s", dump.data);
    buf_free(&dump);
    config_free(cfg);
}

Test(config, literal_secrets_are_found_expanded_ones_are_not)
{
    struct config_errors errs;
    struct config *cfg;
    char which[128];

    cfg = parse("[admin]\ntoken = ${API_KEY}\n[upstream a]\nurl = http://h\n"
                "header = Authorization: Bearer ${API_KEY}\n",
                &errs);
    cr_assert_not_null(cfg);
    cr_expect_not(config_literal_secret(cfg, which, sizeof(which)));
    config_free(cfg);
    cfg = parse("[admin]\ntoken = abc\n", &errs);
    cr_assert(config_literal_secret(cfg, which, sizeof(which)));
    cr_expect_str_eq(which, "[admin] token");
    config_free(cfg);
    cfg = parse("[upstream a]\nurl = http://h\nheader = A: ${API_KEY}\nheader = X-Key: v\n", &errs);
    cr_assert(config_literal_secret(cfg, which, sizeof(which)));
    cr_expect_str_eq(which, "[upstream a] header");
    config_free(cfg);
}

Test(config, health_check_keys_default_off_and_parse)
{
    struct config_errors errs;
    struct config *cfg = parse("[proxy]\nbalance = ewma\n[upstream a]\nurl = http://h:1\n"
                               "[upstream b]\nurl = http://h:2\nhealth_check = /v1/models\n"
                               "health_interval = 250ms\nhealth_timeout = 100ms\n"
                               "healthy_threshold = 1\nunhealthy_threshold = 3\n",
                               &errs);
    const struct upstream_config *a, *b;

    cr_assert_not_null(cfg, "%s", errs.n ? errs.msgs[0] : "");
    cr_assert_eq(cfg->proxy.balance, BALANCE_EWMA);
    a = &cfg->upstreams[0];
    b = &cfg->upstreams[1];
    cr_assert_null(a->health_check, "no checks unless asked for");
    cr_assert_eq(a->health_interval_ms, 5000);
    cr_assert_eq(a->health_timeout_ms, 1000);
    cr_assert_eq(a->healthy_threshold, 2);
    cr_assert_eq(a->unhealthy_threshold, 2);
    cr_assert_str_eq(b->health_check, "/v1/models");
    cr_assert_eq(b->health_interval_ms, 250);
    cr_assert_eq(b->health_timeout_ms, 100);
    cr_assert_eq(b->healthy_threshold, 1);
    cr_assert_eq(b->unhealthy_threshold, 3);
    config_free(cfg);

    cfg = parse("", &errs);
    cr_assert_eq(cfg->proxy.balance, BALANCE_WEIGHTED);
    config_free(cfg);
}

Test(config, health_check_must_be_a_path_and_interval_not_tiny)
{
    expect_error("[upstream a]\nurl = http://h:1\nhealth_check = health\n",
                 "health_check: not a path");
    expect_error("[upstream a]\nurl = http://h:1\nhealth_check = /a b\n",
                 "health_check: not a path");
    expect_error("[upstream a]\nurl = http://h:1\nhealth_interval = 10ms\n", "health_interval");
    expect_error("[upstream a]\nurl = http://h:1\nunhealthy_threshold = 0\n",
                 "unhealthy_threshold");
    expect_error("[proxy]\nbalance = random\n", "not one of weighted|ewma");
}
