/*
 * admin.h - the admin listener's connections (see admin.c for the routes).
 */
#ifndef AKOSHA_ADMIN_H
#define AKOSHA_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <event2/util.h>

struct server;

/*
 * Admin connections open at once. When the table is full, a new connection
 * closes the one that has been reading its head the longest; it is refused
 * only when every open connection is being answered.
 */
#define ADMIN_MAX_CONNECTIONS 64

/*
 * Seconds from accept for the whole request head to arrive. A total, not an
 * idle timeout: bytes trickling in do not extend it.
 */
#define ADMIN_HEAD_TIMEOUT_S 5

/* Seconds from the answer being queued for it to be written out. */
#define ADMIN_WRITE_TIMEOUT_S 10

/* Serve one admin request on fd (takes ownership); sa is the peer's address. */
void admin_accept(struct server *srv, evutil_socket_t fd, const struct sockaddr *sa,
                  socklen_t salen);

/*
 * Whether an Authorization field value carries the bearer token: scheme
 * "Bearer" (any case), then the token. Compares SHA-256 digests of both in
 * constant time, so neither the token's bytes nor its length leak through
 * timing. Pure; exposed for tests.
 */
bool admin_bearer_matches(const char *value, size_t value_len, const char *token);
void admin_close_all(struct server *srv);

#endif
