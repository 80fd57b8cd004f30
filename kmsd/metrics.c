/* Metrics (Prometheus text) and health checks over HTTP on a loopback port, on kmsd's event loop. */
#include "metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "audit.h"
#include "keystore.h"
#include "kms_err.h"
#include "log.h"
#include "rpc.h"
#include "workers.h"

#define MAX_OPS 64
#define N_STATUS 17 /* wire status numbers 0..16 */
#define N_BUCKETS 14

/* Upper bounds of the latency buckets, in microseconds (seconds on the wire). */
static const int64_t bucket_us[N_BUCKETS] = {
    250,    500,    1000,   2500,    5000,    10000,   25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 10000000,
};

struct histogram {
  uint64_t bucket[N_BUCKETS]; /* not cumulative here; summed when rendered */
  uint64_t count;
  int64_t sum_us;
};

struct op_stats {
  const char *name; /* static: a method name or "unknown" */
  uint64_t by_status[N_STATUS];
  struct histogram latency;
};

/* Process-wide counters, touched by the loop thread only. */
static struct op_stats ops[MAX_OPS];
static size_t n_ops;
static struct histogram audit_commit;

struct metrics {
  struct evhttp *http;
  struct metrics_sources src;
  keystore *ks; /* the loop's own handle, for /readyz */
};

int64_t
metrics_now_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
observe(struct histogram *h, int64_t us)
{
  if (us < 0) {
    us = 0;
  }
  size_t i = 0;
  while (i < N_BUCKETS && us > bucket_us[i]) {
    i++;
  }
  if (i < N_BUCKETS) {
    h->bucket[i]++;
  }
  h->count++;
  h->sum_us += us;
}

void
metrics_request_done(const char *op, int status, int64_t latency_us)
{
  struct op_stats *s = NULL;
  if (op == NULL) {
    op = "unknown";
  }
  for (size_t i = 0; i < n_ops; i++) {
    if (strcmp(ops[i].name, op) == 0) {
      s = &ops[i];
      break;
    }
  }
  if (s == NULL) {
    if (n_ops == MAX_OPS) {
      return;
    }
    s = &ops[n_ops++];
    s->name = op;
  }
  /* A status outside the known set counts as INTERNAL (it would be a bug). */
  s->by_status[status >= 0 && status < N_STATUS && kms_status_name(status) != NULL ? status : 13]++;
  observe(&s->latency, latency_us);
}

void
metrics_audit_commit(int64_t latency_us)
{
  observe(&audit_commit, latency_us);
}

static void
render_histogram(struct evbuffer *b, const char *name, const char *label,
                 const struct histogram *h)
{
  uint64_t cum = 0;
  const char *sep = label[0] != '\0' ? "," : "";
  for (size_t i = 0; i < N_BUCKETS; i++) {
    cum += h->bucket[i];
    evbuffer_add_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, label, sep,
                        (double)bucket_us[i] / 1e6, (unsigned long long)cum);
  }
  evbuffer_add_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, label, sep,
                      (unsigned long long)h->count);
  if (label[0] != '\0') {
    evbuffer_add_printf(b, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, label,
                        (double)h->sum_us / 1e6, name, label, (unsigned long long)h->count);
  } else {
    evbuffer_add_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, (double)h->sum_us / 1e6, name,
                        (unsigned long long)h->count);
  }
}

static void
render(const struct metrics_sources *src, struct evbuffer *b)
{
  evbuffer_add_printf(b, "# HELP kmsd_requests_total Requests answered, by operation and "
                         "status.\n# TYPE kmsd_requests_total counter\n");
  for (size_t i = 0; i < n_ops; i++) {
    for (int st = 0; st < N_STATUS; st++) {
      const char *sn = kms_status_name(st);
      if (ops[i].by_status[st] != 0 && sn != NULL) {
        evbuffer_add_printf(b, "kmsd_requests_total{operation=\"%s\",status=\"%s\"} %llu\n",
                            ops[i].name, sn,
                            (unsigned long long)ops[i].by_status[st]);
      }
    }
  }
  evbuffer_add_printf(b, "# HELP kmsd_request_duration_seconds From a request's arrival to "
                         "its answer (after its audit record).\n"
                         "# TYPE kmsd_request_duration_seconds histogram\n");
  for (size_t i = 0; i < n_ops; i++) {
    char label[96];
    snprintf(label, sizeof(label), "operation=\"%s\"", ops[i].name);
    render_histogram(b, "kmsd_request_duration_seconds", label, &ops[i].latency);
  }
  evbuffer_add_printf(b, "# HELP kmsd_audit_commit_duration_seconds How long an answer waited "
                         "for its audit record to be durable.\n"
                         "# TYPE kmsd_audit_commit_duration_seconds histogram\n");
  render_histogram(b, "kmsd_audit_commit_duration_seconds", "", &audit_commit);
  if (src == NULL) {
    return;
  }
  if (src->h != NULL) {
    uint64_t errors = 0, recoveries = 0;
    bool up = hsm_status(src->h, NULL, 0, &errors, &recoveries);
    evbuffer_add_printf(b,
                        "# HELP kmsd_hsm_up 1 if the HSM serves, 0 while it is down.\n"
                        "# TYPE kmsd_hsm_up gauge\nkmsd_hsm_up %d\n"
                        "# HELP kmsd_hsm_errors_total HSM calls that marked it down.\n"
                        "# TYPE kmsd_hsm_errors_total counter\nkmsd_hsm_errors_total %llu\n"
                        "# HELP kmsd_hsm_recoveries_total Recoveries without a restart.\n"
                        "# TYPE kmsd_hsm_recoveries_total counter\n"
                        "kmsd_hsm_recoveries_total %llu\n",
                        up ? 1 : 0, (unsigned long long)errors, (unsigned long long)recoveries);
  }
  if (src->rpc != NULL) {
    if (src->rpc->pool != NULL) {
      evbuffer_add_printf(b, "# HELP kmsd_worker_queue_depth Jobs queued or running on the "
                             "workers.\n# TYPE kmsd_worker_queue_depth gauge\n"
                             "kmsd_worker_queue_depth %zu\n",
                          workers_pending(src->rpc->pool));
    }
    if (src->rpc->audit != NULL) {
      bool ok = audit_healthy(src->rpc->audit, NULL, 0);
      evbuffer_add_printf(b,
                          "# HELP kmsd_audit_up 1 while audit records are being written.\n"
                          "# TYPE kmsd_audit_up gauge\nkmsd_audit_up %d\n"
                          "# HELP kmsd_audit_pending Records queued, being written or "
                          "awaiting their answer.\n# TYPE kmsd_audit_pending gauge\n"
                          "kmsd_audit_pending %zu\n"
                          "# HELP kmsd_audit_records Durable records (the Merkle tree size).\n"
                          "# TYPE kmsd_audit_records gauge\nkmsd_audit_records %llu\n",
                          ok ? 1 : 0, audit_pending(src->rpc->audit),
                          (unsigned long long)audit_size(src->rpc->audit));
    }
    evbuffer_add_printf(b, "# HELP kmsd_draining 1 after SIGTERM.\n# TYPE kmsd_draining gauge\n"
                           "kmsd_draining %d\n",
                        src->rpc->draining ? 1 : 0);
  }
  if (src->srv != NULL) {
    evbuffer_add_printf(b, "# HELP kmsd_open_connections Open client connections.\n"
                           "# TYPE kmsd_open_connections gauge\nkmsd_open_connections %u\n",
                        server_connections(src->srv));
  }
}

int
metrics_render(const struct metrics_sources *src, char **out, size_t *out_len)
{
  int r = KMS_ERR_ALLOC;
  struct evbuffer *b = evbuffer_new();
  *out = NULL;
  *out_len = 0;
  if (b == NULL) {
    goto out;
  }
  render(src, b);
  size_t n = evbuffer_get_length(b);
  char *s = malloc(n + 1);
  if (s == NULL) {
    goto out;
  }
  evbuffer_remove(b, s, n);
  s[n] = '\0';
  *out = s;
  *out_len = n;
  r = KMS_OK;
out:
  if (b != NULL) {
    evbuffer_free(b);
  }
  return r;
}

/* One line, no control characters: reasons come from errno texts and file names. */
static void
one_line(char *s)
{
  for (; *s != '\0'; s++) {
    if ((unsigned char)*s < 0x20 || *s == 0x7f) {
      *s = ' ';
    }
  }
}

/* not_ready writes why kmsd should get no traffic into |why|; false if it is ready. */
static bool
not_ready(struct metrics *m, char *why, size_t why_len)
{
  char r[256] = "";
  int v = 0;
  if (m->src.rpc != NULL && m->src.rpc->draining) {
    snprintf(why, why_len, "draining");
    return true;
  }
  if (m->src.h != NULL && !hsm_status(m->src.h, r, sizeof(r), NULL, NULL)) {
    snprintf(why, why_len, "hsm: %s", r[0] != '\0' ? r : "down");
    return true;
  }
  if (m->ks == NULL || keystore_schema_version(m->ks, &v) != KMS_OK) {
    snprintf(why, why_len, "keystore: not readable");
    return true;
  }
  if (m->src.rpc != NULL && m->src.rpc->audit != NULL &&
      !audit_healthy(m->src.rpc->audit, r, sizeof(r))) {
    snprintf(why, why_len, "audit: %s", r[0] != '\0' ? r : "not writable");
    return true;
  }
  return false;
}

static void
reply_text(struct evhttp_request *req, int code, const char *reason, struct evbuffer *body)
{
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Content-Type", code == 200 && body != NULL
                                           ? "text/plain; version=0.0.4; charset=utf-8"
                                           : "text/plain; charset=utf-8");
  evhttp_add_header(h, "Cache-Control", "no-store");
  evhttp_send_reply(req, code, reason, body);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
  struct metrics *m = arg;
  struct evbuffer *body = evbuffer_new();
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;

  if (body == NULL) {
    evhttp_send_error(req, HTTP_INTERNAL, NULL);
    return;
  }
  if (path == NULL || (strcmp(path, "/metrics") != 0 && strcmp(path, "/healthz") != 0 &&
                       strcmp(path, "/readyz") != 0)) {
    evbuffer_add_printf(body, "not found\n");
    reply_text(req, HTTP_NOTFOUND, "Not Found", body);
    goto out;
  }
  if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
    evbuffer_add_printf(body, "method not allowed\n");
    reply_text(req, 405, "Method Not Allowed", body);
    goto out;
  }
  if (strcmp(path, "/metrics") == 0) {
    render(&m->src, body);
    reply_text(req, HTTP_OK, "OK", body);
  } else if (strcmp(path, "/healthz") == 0) {
    evbuffer_add_printf(body, "ok\n");
    reply_text(req, HTTP_OK, "OK", body);
  } else {
    char why[320];
    if (not_ready(m, why, sizeof(why))) {
      one_line(why);
      evbuffer_add_printf(body, "not ready: %s\n", why);
      reply_text(req, 503, "Service Unavailable", body);
    } else {
      evbuffer_add_printf(body, "ready\n");
      reply_text(req, HTTP_OK, "OK", body);
    }
  }
out:
  evbuffer_free(body);
}

int
metrics_start(metrics **out, struct event_base *base, const char *host, uint16_t port,
              const struct metrics_sources *src, char *bound, size_t bound_len, char *err,
              size_t err_len)
{
  int r = KMS_ERR_ALLOC;
  struct metrics *m = calloc(1, sizeof(*m));
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  char addr[INET6_ADDRSTRLEN] = "?";
  unsigned bound_port = 0;

  *out = NULL;
  if (m == NULL) {
    snprintf(err, err_len, "out of memory");
    goto fail;
  }
  m->src = *src;
  r = keystore_open(&m->ks, src->keystore_url, err, err_len);
  if (r != KMS_OK) {
    goto fail;
  }
  r = KMS_ERR_IO;
  m->http = evhttp_new(base);
  if (m->http == NULL) {
    snprintf(err, err_len, "evhttp_new failed");
    goto fail;
  }
  evhttp_set_max_headers_size(m->http, 8192);
  evhttp_set_max_body_size(m->http, 1024);
  evhttp_set_timeout(m->http, 10);
  evhttp_set_gencb(m->http, on_request, m);
  struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(m->http, host, port);
  if (bs == NULL) {
    snprintf(err, err_len, "cannot listen on %s:%u", host, (unsigned)port);
    goto fail;
  }
  if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) != 0) {
    snprintf(err, err_len, "getsockname failed");
    goto fail;
  }
  if (ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof(addr));
    bound_port = ntohs(s6->sin6_port);
    snprintf(bound, bound_len, "[%s]:%u", addr, bound_port);
  } else {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof(addr));
    bound_port = ntohs(s4->sin_port);
    snprintf(bound, bound_len, "%s:%u", addr, bound_port);
  }
  *out = m;
  return KMS_OK;
fail:
  metrics_free(m);
  return r;
}

void
metrics_free(metrics *m)
{
  if (m == NULL) {
    return;
  }
  if (m->http != NULL) {
    evhttp_free(m->http);
  }
  keystore_close(m->ks);
  free(m);
}
