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

/* Admin connections open at once; more are closed at accept. */
#define ADMIN_MAX_CONNECTIONS 64

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
