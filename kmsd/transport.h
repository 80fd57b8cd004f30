/* The transport: TLS 1.3 listener, connections and frames. The only code touching sockets and TLS. */
#ifndef KMSD_TRANSPORT_H
#define KMSD_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "config.h"

typedef struct server server;
typedef struct conn conn;
struct rpc;

/*
 * server_start loads the TLS material, binds |cfg->listen_host:listen_port|
 * and starts accepting. The address actually bound (port 0 picks one) is
 * written to |bound| as "HOST:PORT". Complete frames are handed to
 * rpc_on_frame.
 */
int server_start(server **out, struct event_base *base, const struct kmsd_config *cfg,
                 struct rpc *rpc, char *bound, size_t bound_len, char *err, size_t err_len);

/*
 * server_reload_tls builds a new TLS context from the configured files
 * (certificate, key, CA, CRL) and uses it for new connections; connections
 * already open keep theirs. On failure the old context stays in force and
 * |err| says why.
 */
int server_reload_tls(server *s, char *err, size_t err_len);

/* server_stop_accepting closes the listening socket (drain on SIGTERM). */
void server_stop_accepting(server *s);

/* server_close_all closes every connection now. */
void server_close_all(server *s);

/* server_output_pending returns the response bytes not yet handed to the kernel. */
size_t server_output_pending(const server *s);

/* server_connections returns the number of open connections. */
unsigned server_connections(const server *s);

void server_free(server *s);

/* The principal (identity.h) and peer address of an authenticated connection. */
const char *conn_principal(const conn *c);
const char *conn_peer(const conn *c);

/*
 * conn_inflight_begin/end bracket a request handed to a worker. While a
 * request is in flight the connection object outlives a closed socket, and
 * reading pauses when the per-connection limit is reached.
 */
void conn_inflight_begin(conn *c);
void conn_inflight_end(conn *c);

/*
 * conn_send takes ownership of |frame| (header and payload, from malloc) and
 * queues it. The bytes are wiped before they are freed, since a response may
 * carry a plaintext data key. If the connection is gone they are wiped now.
 */
void conn_send(conn *c, uint8_t *frame, size_t len);

/* conn_close_after_send stops reading and closes once the output is flushed. */
void conn_close_after_send(conn *c);

#endif
