/*
 * admin.h - the admin listener's connections (see admin.c for the routes).
 */
#ifndef AKOSHA_ADMIN_H
#define AKOSHA_ADMIN_H

#include <event2/util.h>

struct server;

/* Admin connections open at once; more are closed at accept. */
#define ADMIN_MAX_CONNECTIONS 64

/* Serve one admin request on fd (takes ownership). */
void admin_accept(struct server *srv, evutil_socket_t fd);
void admin_close_all(struct server *srv);

#endif
