/*
 * notify.c - sd_notify without libsystemd.
 *
 * The socket is opened once and kept: a sandboxed service may lose access to
 * the path later. WATCHDOG=1 is sent from a timer on the event loop at half
 * the interval, so a wedged loop stops the pings and systemd restarts us.
 */
#include "notify.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_addrlen;
static uint64_t watchdog_usec;
static struct event *watchdog_ev;

uint64_t
notify_watchdog_usec(void)
{
    return watchdog_usec;
}

static void
watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    notify_send("WATCHDOG=1");
}

void
notify_init(struct event_base *base)
{
    const char *path = getenv("NOTIFY_SOCKET");
    const char *wd = getenv("WATCHDOG_USEC");
    const char *wdpid = getenv("WATCHDOG_PID");
    size_t len;

    if (path != NULL && *path != '\0') {
        len = strlen(path);
        if ((path[0] != '/' && path[0] != '@') || len >= sizeof(notify_addr.sun_path)) {
            log_warn("NOTIFY_SOCKET is not a usable socket address; not notifying");
        } else {
            memset(&notify_addr, 0, sizeof(notify_addr));
            notify_addr.sun_family = AF_UNIX;
            memcpy(notify_addr.sun_path, path, len);
            if (path[0] == '@') {
                notify_addr.sun_path[0] = '\0'; /* abstract namespace */
            }
            notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
            notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            if (notify_fd < 0) {
                log_warn("notify socket: %s", strerror(errno));
            }
        }
    }
    if (wd != NULL && *wd != '\0') {
        char *end;
        unsigned long long v = strtoull(wd, &end, 10);
        bool ours = wdpid == NULL || *wdpid == '\0' || strtol(wdpid, NULL, 10) == (long)getpid();
        if (*end == '\0' && v > 0 && ours) {
            struct timeval tv;
            uint64_t half = v / 2;
            watchdog_usec = v;
            watchdog_ev = event_new(base, -1, EV_PERSIST, watchdog_cb, NULL);
            tv.tv_sec = (time_t)(half / 1000000);
            tv.tv_usec = (suseconds_t)(half % 1000000);
            event_add(watchdog_ev, &tv);
            notify_send("WATCHDOG=1");
        }
    }
}

bool
notify_send(const char *msg)
{
    if (notify_fd < 0) {
        return false;
    }
    /* Non-blocking: systemd reads promptly; a full queue loses one message, never the loop. */
    if (sendto(notify_fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&notify_addr,
               notify_addrlen) < 0) {
        log_debug("notify: %s", strerror(errno));
        return false;
    }
    return true;
}

void
notify_reloading(void)
{
    struct timespec ts;
    char msg[96];

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    notify_send(msg);
}

void
notify_shutdown(void)
{
    if (watchdog_ev != NULL) {
        event_free(watchdog_ev);
        watchdog_ev = NULL;
    }
    if (notify_fd >= 0) {
        close(notify_fd);
        notify_fd = -1;
    }
}
