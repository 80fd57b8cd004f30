/* Metrics (Prometheus text) and health checks over HTTP on a loopback port, on kmsd's event loop. */
#ifndef KMSD_METRICS_H
#define KMSD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "hsm.h"
#include "transport.h"

struct rpc;

/*
 * docs/OPERATIONS.md, "Metrics and health". Labels are operation names (the
 * method table's, or "unknown") and status names only: never a tenant, a
 * principal, a session id or anything a client chose.
 *
 * The counting hooks and the HTTP server run on the event-loop thread only
 * (rpc.c calls the hooks where an answer is settled), so nothing is locked.
 */
typedef struct metrics metrics;

struct metrics_sources {
  hsm *h;                   /* hsm_status: up, errors, recoveries */
  struct rpc *rpc;          /* worker queue, audit log, draining */
  server *srv;              /* open connections; may be NULL */
  const char *keystore_url; /* /readyz opens its own handle (the loop's) */
};

/*
 * metrics_start binds |host|:|port| (port 0: the kernel picks; |bound| gets
 * "HOST:PORT") and serves GET /metrics, /healthz and /readyz on |base|.
 * Returns KMS_OK, or an error with the reason in |err|.
 */
int metrics_start(metrics **out, struct event_base *base, const char *host, uint16_t port,
                  const struct metrics_sources *src, char *bound, size_t bound_len, char *err,
                  size_t err_len);

/* metrics_free stops serving and frees |m|. NULL is a no-op. */
void metrics_free(metrics *m);

/* metrics_now_us: the monotonic clock in microseconds (request start times). */
int64_t metrics_now_us(void);

/*
 * metrics_request_done counts one answer of operation |op| (a static name)
 * with wire status |status|, |latency_us| after its frame arrived.
 */
void metrics_request_done(const char *op, int status, int64_t latency_us);

/* metrics_audit_commit records how long an answer waited for its audit record. */
void metrics_audit_commit(int64_t latency_us);

/*
 * metrics_render writes the Prometheus text exposition of the counters and of
 * |src| (any member may be NULL) to a malloc'd string (*out, *out_len).
 */
int metrics_render(const struct metrics_sources *src, char **out, size_t *out_len);

#endif
