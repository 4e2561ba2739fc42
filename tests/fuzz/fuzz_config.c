/*
 * fuzz_config.c - libFuzzer harness for config_parse: the whole file from
 * memory with an injected getenv, so no real environment leaks in and the
 * run is repeatable. ${file:NAME} reads from a private temporary
 * CREDENTIALS_DIRECTORY holding one credential.
 *
 * Checks beyond memory safety: a failed parse reports at least one error, a
 * successful one dumps valid JSON, a config never needs a restart against
 * itself, and neither the dump nor any error message shows a value that came
 * from the environment or a credential file.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz_common.h"
#include "util.h"

/* Unlikely in fuzz input and free of characters the parser treats specially. */
#define ENV_SECRET "zq7Env0Secret4Vx"
#define FILE_SECRET "kw9File2Secret8Jy"

static char cred_dir[] = "/tmp/akosha-fuzz-cred-XXXXXX";
static char cred_path[sizeof(cred_dir) + 16];

static const char *
fuzz_getenv(const char *name)
{
    if (strcmp(name, "API_KEY") == 0 || strcmp(name, "TOKEN") == 0) {
        return ENV_SECRET;
    }
    if (strcmp(name, "EMPTY") == 0) {
        return "";
    }
    if (strcmp(name, "PORT") == 0) {
        return "8081";
    }
    if (strcmp(name, "CREDENTIALS_DIRECTORY") == 0) {
        return cred_dir;
    }
    return NULL;
}

static void
remove_credentials(void)
{
    unlink(cred_path);
    rmdir(cred_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    FILE *f;

    (void)argc;
    (void)argv;
    if (mkdtemp(cred_dir) == NULL) {
        fuzz_fail("mkdtemp %s failed", cred_dir);
    }
    snprintf(cred_path, sizeof(cred_path), "%s/token", cred_dir);
    f = fopen(cred_path, "w");
    if (f == NULL) {
        fuzz_fail("cannot create %s", cred_path);
    }
    fputs(FILE_SECRET "\n", f);
    fclose(f);
    atexit(remove_credentials);
    return 0;
}

static bool
holds(const char *hay, size_t len, const char *needle)
{
    return memmem(hay, len, needle, strlen(needle)) != NULL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_copy(data, size);
    struct config_errors errs = {0};
    struct config *cfg = config_parse("fuzz.conf", text, size, &errs, fuzz_getenv);
    /* A secret the input spells out itself is no longer secret; only check the others. */
    bool env_secret = !holds(text, size, ENV_SECRET);
    bool file_secret = !holds(text, size, FILE_SECRET);

    if (cfg == NULL) {
        FUZZ_CHECK(errs.n > 0, "config_parse failed without an error message");
    } else {
        struct buf dump, restart;

        FUZZ_CHECK(errs.n == 0, "config parsed with %zu errors", errs.n);
        FUZZ_CHECK(cfg->proxy.listen.text != NULL && cfg->admin.listen.text != NULL,
                   "parsed config has no listeners");
        for (size_t i = 0; i < cfg->nupstreams; i++) {
            FUZZ_CHECK(cfg->upstreams[i].url.text != NULL && cfg->upstreams[i].url.host != NULL,
                       "upstream %zu without a url", i);
        }
        buf_init(&dump);
        config_dump_json(cfg, &dump);
        FUZZ_CHECK(fuzz_is_json(dump.data, dump.len), "config dump is not JSON: %.*s",
                   (int)dump.len, dump.data);
        FUZZ_CHECK(!(env_secret && holds(dump.data, dump.len, ENV_SECRET)),
                   "environment value shown in the config dump");
        FUZZ_CHECK(!(file_secret && holds(dump.data, dump.len, FILE_SECRET)),
                   "credential file value shown in the config dump");
        buf_free(&dump);
        buf_init(&restart);
        config_restart_needed(cfg, cfg, &restart);
        FUZZ_CHECK(restart.len == 0, "config needs a restart against itself: %.*s",
                   (int)restart.len, restart.data);
        buf_free(&restart);
        config_free(cfg);
    }
    for (size_t i = 0; i < errs.n; i++) {
        size_t n = strlen(errs.msgs[i]);
        FUZZ_CHECK(!(env_secret && holds(errs.msgs[i], n, ENV_SECRET)),
                   "environment value in an error: %s", errs.msgs[i]);
        FUZZ_CHECK(!(file_secret && holds(errs.msgs[i], n, FILE_SECRET)),
                   "credential file value in an error: %s", errs.msgs[i]);
    }
    config_errors_free(&errs);
    free(text);
    return 0;
}
