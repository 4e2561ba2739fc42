/*
 * notify.h - the systemd notify protocol, spoken directly: one datagram per
 * message to $NOTIFY_SOCKET (a path, or an abstract name starting with '@').
 * Without NOTIFY_SOCKET every call is a no-op.
 */
#ifndef AKOSHA_NOTIFY_H
#define AKOSHA_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;

/* Reads NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID; arms the watchdog timer on base. */
void notify_init(struct event_base *base);
/* Send one message ("READY=1", "STATUS=..."); false when not sent. */
bool notify_send(const char *msg);
/* "RELOADING=1" with MONOTONIC_USEC, as systemd's Type=notify-reload expects. */
void notify_reloading(void);
void notify_shutdown(void);
/* Watchdog interval in microseconds from WATCHDOG_USEC, 0 when off (exposed for tests). */
uint64_t notify_watchdog_usec(void);

#endif
