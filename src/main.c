/*
 * main.c - parse options, load the config, run the server, tear down.
 */
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/ssl.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG SYSCONFDIR "/akosha/akosha.conf"

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: akosha [-c FILE] [-t] [--version] [--help]\n"
            "  -c, --config FILE    configuration file (default %s)\n"
            "  -t, --check-config   validate the file, print every error, and exit\n"
            "  -V, --version        print the version and exit\n"
            "  -h, --help           print this help and exit\n",
            DEFAULT_CONFIG);
}

/*
 * A file other users can read must not hold credentials. The advice fits the
 * shipped unit: with DynamicUser=yes the service runs as a user made up for
 * each run, so "chmod o-r" would lock akosha out of its own file; a systemd
 * credential (LoadCredential= and ${file:NAME}) is readable by the service
 * alone whoever owns the config.
 */
static void
warn_if_readable(const struct config *cfg)
{
    struct stat st;
    char which[192];

    if (config_literal_secret(cfg, which, sizeof(which)) && stat(cfg->path, &st) == 0 &&
        (st.st_mode & S_IROTH)) {
        log_warn("%s is readable by other users and %s is written in it; move the secret to a "
                 "credential: LoadCredential=NAME:/etc/akosha/credentials/NAME in a drop-in for "
                 "the unit and ${file:NAME} in the file (or ${VAR} from the environment); do not "
                 "chmod o-r it, the unit's DynamicUser could then not read it",
                 cfg->path, which);
    }
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"check-config", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = DEFAULT_CONFIG;
    bool check = false;
    struct config_errors errs = {0};
    struct config *cfg;
    struct server srv;
    int opt, rc;

    while ((opt = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check = true;
            break;
        case 'V':
            printf("akosha %s\n", PACKAGE_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "akosha: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    cfg = config_load(path, &errs, NULL);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++) {
            fprintf(stderr, "%s\n", errs.msgs[i]);
        }
        fprintf(stderr, "akosha: %zu error(s) in %s; not starting\n", errs.n, path);
        config_errors_free(&errs);
        return 1;
    }
    if (check) {
        printf("%s: configuration ok (%zu upstream(s))\n", path, cfg->nupstreams);
        config_free(cfg);
        return 0;
    }
    warn_if_readable(cfg);
    /*
     * Read buffers come and go with every request; glibc's default of giving
     * back the heap's top past 128 KiB made each burst of them a round of
     * brk(2) and page faults. Keep up to 4 MiB of freed top for reuse.
     */
    mallopt(M_TRIM_THRESHOLD, 4 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
    metrics_init();
    server_init(&srv, cfg);
    rc = server_run(&srv);
    server_free(&srv);
    metrics_free();
    OPENSSL_cleanup();
    return rc;
}
