/* kms-bench's load engine: pipelined requests over many mutual-TLS connections, one epoll loop per thread. */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "kms_err.h"
#include "kms_frame.h"
#include "kms_wire.h"

#define SLOT_MAX 65000u  /* request ids carry the slot in their low 16 bits */
#define READ_CHUNK 65536
#define RESPONSE_MAX (1u << 20)
#define DRAIN_S 5.0

/* ---- Histogram and clocks ------------------------------------------------------ */

static unsigned
hist_index(uint64_t v)
{
  const uint64_t sub = 1u << HIST_SUB_BITS;
  if (v < 2 * sub) {
    return (unsigned)v;
  }
  unsigned msb = 63u - (unsigned)__builtin_clzll(v);
  unsigned shift = msb - HIST_SUB_BITS;
  unsigned idx = (unsigned)(2 * sub + (shift - 1) * sub + ((v >> shift) - sub));
  return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

static uint64_t
hist_upper(unsigned idx)
{
  const uint64_t sub = 1u << HIST_SUB_BITS;
  if (idx < 2 * sub) {
    return idx;
  }
  unsigned shift = (unsigned)((idx - 2 * sub) / sub + 1);
  uint64_t m = (idx - 2 * sub) % sub + sub;
  return ((m + 1) << shift) - 1;
}

void
hist_add(struct bench_hist *h, uint64_t ns)
{
  h->counts[hist_index(ns)]++;
  h->n++;
  h->sum_ns += (double)ns;
  if (ns > h->max_ns) {
    h->max_ns = ns;
  }
}

void
hist_merge(struct bench_hist *dst, const struct bench_hist *src)
{
  for (unsigned i = 0; i < HIST_BUCKETS; i++) {
    dst->counts[i] += src->counts[i];
  }
  dst->n += src->n;
  dst->sum_ns += src->sum_ns;
  if (src->max_ns > dst->max_ns) {
    dst->max_ns = src->max_ns;
  }
}

uint64_t
hist_quantile(const struct bench_hist *h, double q)
{
  if (h->n == 0) {
    return 0;
  }
  uint64_t want = (uint64_t)(q * (double)h->n);
  if (want >= h->n) {
    want = h->n - 1;
  }
  uint64_t seen = 0;
  for (unsigned i = 0; i < HIST_BUCKETS; i++) {
    seen += h->counts[i];
    if (seen > want) {
      uint64_t u = hist_upper(i);
      return u < h->max_ns ? u : h->max_ns;
    }
  }
  return h->max_ns;
}

uint64_t
bench_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double
bench_now(void)
{
  return (double)bench_now_ns() / 1e9;
}

double
bench_proc_cpu(pid_t pid)
{
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    return -1;
  }
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  unsigned long long ut = 0, st = 0;
  if (p == NULL ||
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) {
    return -1;
  }
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

long
bench_proc_status_kb(pid_t pid, const char *field)
{
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long v = -1;
  size_t fl = strlen(field);
  while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
      v = strtol(line + fl + 1, NULL, 10);
      break;
    }
  }
  if (f != NULL) {
    fclose(f);
  }
  return v;
}

const char *
bench_op_name(int op)
{
  switch (op) {
  case BOP_GENERATE:
    return "generate";
  case BOP_DECRYPT:
    return "decrypt";
  case BOP_REENCRYPT:
    return "re-encrypt";
  case BOP_SESSION_GET:
    return "session-get";
  case BOP_OPEN_SESSION:
    return "open-session";
  case BOP_CREATE_TENANT:
    return "create-tenant";
  default:
    return "?";
  }
}

/* ---- Connections ------------------------------------------------------------------ */

struct slot {
  uint64_t id; /* 0: free */
  uint64_t t0_ns;
  uint32_t tenant;
  uint8_t op;
};

struct lthread;

struct bconn {
  struct lthread *th;
  int fd;
  SSL *ssl;
  uint8_t *wbuf;
  size_t wlen, woff, wcap;
  uint8_t *rbuf;
  size_t rlen, rcap;
  struct slot *slots;
  uint32_t *free_slots;
  unsigned nfree, cap, inflight;
  uint64_t seq;
  int want_out;
  int dirty;
};

struct lthread {
  const struct load_cfg *cfg;
  pthread_t tid;
  unsigned index;
  struct bconn *conns;
  unsigned nconns;
  int ep;
  uint64_t rng;
  uint64_t t_measure, t_end; /* ns */
  unsigned rr;                /* open loop: next connection */
  struct bconn **dirty;
  unsigned ndirty;
  struct load_result res;
  char err[200];
  int failed;
};

static _Atomic unsigned count_next; /* count mode: next tenant index to send */

static uint64_t
rng_next(uint64_t *s)
{
  /* xorshift64*: uniform enough to spread tenants and ops. */
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 2685821657736338717ULL;
}

static int
ensure_cap(uint8_t **buf, size_t *cap, size_t need)
{
  if (need <= *cap) {
    return 0;
  }
  size_t n = *cap > 0 ? *cap : 4096;
  while (n < need) {
    n *= 2;
  }
  uint8_t *p = realloc(*buf, n);
  if (p == NULL) {
    return -1;
  }
  *buf = p;
  *cap = n;
  return 0;
}

static void
fail(struct lthread *t, const char *what)
{
  if (!t->failed) {
    snprintf(t->err, sizeof(t->err), "%s", what);
  }
  t->failed = 1;
}

static void
set_out_interest(struct bconn *c, int on)
{
  if (c->want_out == on) {
    return;
  }
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(c->th->ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->want_out = on;
}

static int
conn_flush(struct bconn *c)
{
  while (c->woff < c->wlen) {
    int n = SSL_write(c->ssl, c->wbuf + c->woff, (int)(c->wlen - c->woff));
    if (n > 0) {
      c->woff += (size_t)n;
      continue;
    }
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
      set_out_interest(c, e == SSL_ERROR_WANT_WRITE);
      return 0;
    }
    ERR_clear_error();
    return -1;
  }
  c->woff = c->wlen = 0;
  set_out_interest(c, 0);
  return 0;
}

static void
tenant_name(char *out, size_t cap, const char *prefix, uint32_t i)
{
  snprintf(out, cap, "%s%07u", prefix, i);
}

/* Appends one request frame to the connection's write buffer. */
static int
conn_send(struct lthread *t, struct bconn *c, int op, uint32_t tenant, uint64_t t0_ns)
{
  const struct load_cfg *cfg = t->cfg;
  if (c->nfree == 0) {
    return -1;
  }
  uint32_t s = c->free_slots[--c->nfree];
  uint64_t id = (++c->seq << 16) | (s + 1);
  char tname[96], sname[96];
  tenant_name(tname, sizeof(tname), cfg->tenant_prefix, tenant);

  Tkms__Request req;
  Tkms__GenerateDataKeyRequest g;
  Tkms__DecryptRequest d;
  Tkms__ReEncryptRequest re;
  Tkms__OpenSessionRequest os;
  Tkms__GetSessionKeyRequest gs;
  Tkms__CreateTenantRequest ct;
  tkms__request__init(&req);
  req.request_id = id;
  switch (op) {
  case BOP_GENERATE:
    tkms__generate_data_key_request__init(&g);
    g.tenant_id = tname;
    g.n_context = cfg->n_context;
    g.context = cfg->context;
    req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
    req.generate_data_key = &g;
    break;
  case BOP_DECRYPT: {
    const struct bench_blob *b = &cfg->blobs[tenant];
    tkms__decrypt_request__init(&d);
    d.tenant_id = tname;
    d.wrapped_key.data = (uint8_t *)b->wrapped;
    d.wrapped_key.len = b->wrapped_len;
    d.n_context = cfg->n_context;
    d.context = cfg->context;
    req.op_case = TKMS__REQUEST__OP_DECRYPT;
    req.decrypt = &d;
    break;
  }
  case BOP_REENCRYPT: {
    const struct bench_blob *b = &cfg->blobs[tenant];
    tkms__re_encrypt_request__init(&re);
    re.tenant_id = tname;
    re.wrapped_key.data = (uint8_t *)b->wrapped;
    re.wrapped_key.len = b->wrapped_len;
    re.n_context = cfg->n_context;
    re.context = cfg->context;
    re.target_version = 0; /* the newest */
    req.op_case = TKMS__REQUEST__OP_RE_ENCRYPT;
    req.re_encrypt = &re;
    break;
  }
  case BOP_OPEN_SESSION:
    tenant_name(sname, sizeof(sname), cfg->session_prefix, tenant);
    tkms__open_session_request__init(&os);
    os.tenant_id = tname;
    os.session_id = sname;
    req.op_case = TKMS__REQUEST__OP_OPEN_SESSION;
    req.open_session = &os;
    break;
  case BOP_SESSION_GET:
    tenant_name(sname, sizeof(sname), cfg->session_prefix, tenant);
    tkms__get_session_key_request__init(&gs);
    gs.tenant_id = tname;
    gs.session_id = sname;
    gs.purpose = (char *)(cfg->purpose != NULL ? cfg->purpose : "");
    req.op_case = TKMS__REQUEST__OP_GET_SESSION_KEY;
    req.get_session_key = &gs;
    break;
  default:
    tkms__create_tenant_request__init(&ct);
    ct.tenant_id = tname;
    req.op_case = TKMS__REQUEST__OP_CREATE_TENANT;
    req.create_tenant = &ct;
    break;
  }
  size_t n = protobuf_c_message_get_packed_size(&req.base);
  if (ensure_cap(&c->wbuf, &c->wcap, c->wlen + KMS_FRAME_HDR_LEN + n) != 0) {
    c->free_slots[c->nfree++] = s;
    return -1;
  }
  kms_frame_put_header(c->wbuf + c->wlen, (uint32_t)n);
  protobuf_c_message_pack(&req.base, c->wbuf + c->wlen + KMS_FRAME_HDR_LEN);
  c->wlen += KMS_FRAME_HDR_LEN + n;
  c->slots[s].id = id;
  c->slots[s].t0_ns = t0_ns;
  c->slots[s].tenant = tenant;
  c->slots[s].op = (uint8_t)op;
  c->inflight++;
  if (!c->dirty) {
    c->dirty = 1;
    t->dirty[t->ndirty++] = c;
  }
  return 0;
}

static Tkms__Request__OpCase
op_case(int op)
{
  switch (op) {
  case BOP_GENERATE:
    return TKMS__REQUEST__OP_GENERATE_DATA_KEY;
  case BOP_DECRYPT:
    return TKMS__REQUEST__OP_DECRYPT;
  case BOP_REENCRYPT:
    return TKMS__REQUEST__OP_RE_ENCRYPT;
  case BOP_OPEN_SESSION:
    return TKMS__REQUEST__OP_OPEN_SESSION;
  case BOP_SESSION_GET:
    return TKMS__REQUEST__OP_GET_SESSION_KEY;
  default:
    return TKMS__REQUEST__OP_CREATE_TENANT;
  }
}

static void
note_error(struct lthread *t, int op, const Tkms__Response *resp, const char *what)
{
  t->res.errors[op]++;
  if (t->res.first_error[0] == '\0') {
    snprintf(t->res.first_error, sizeof(t->res.first_error), "%s: %s%s%.120s",
             bench_op_name(op), what,
             resp != NULL && resp->message != NULL && resp->message[0] != '\0' ? ": " : "",
             resp != NULL && resp->message != NULL ? resp->message : "");
  }
}

static void
on_response(struct lthread *t, struct bconn *c, const uint8_t *p, size_t n, uint64_t now)
{
  const struct load_cfg *cfg = t->cfg;
  Tkms__Response *resp = tkms__response__unpack(NULL, n, p);
  if (resp == NULL) {
    fail(t, "undecodable response");
    return;
  }
  uint32_t s = (uint32_t)(resp->request_id & 0xffff);
  if (s == 0 || s > c->cap || c->slots[s - 1].id != resp->request_id) {
    char why[200];
    snprintf(why, sizeof(why), "response with unknown request id %llu (status %s: %.100s)",
             (unsigned long long)resp->request_id, (kms_status_name(resp->status) != NULL ? kms_status_name(resp->status) : "UNKNOWN"),
             resp->message != NULL ? resp->message : "");
    fail(t, why);
    tkms__response__free_unpacked(resp, NULL);
    return;
  }
  struct slot *sl = &c->slots[s - 1];
  int op = sl->op;
  int in_window = cfg->count_mode || (now >= t->t_measure && now < t->t_end);
  if (resp->status != TKMS__STATUS_CODE__OK) {
    if (cfg->count_mode && op == BOP_CREATE_TENANT &&
        resp->status == TKMS__STATUS_CODE__ALREADY_EXISTS) {
      t->res.ok[op]++;
    } else if (in_window || cfg->count_mode) {
      note_error(t, op, resp, (kms_status_name(resp->status) != NULL ? kms_status_name(resp->status) : "UNKNOWN"));
    }
  } else if (kms_wire_response_check(resp, op_case(op)) != KMS_OK) {
    note_error(t, op, resp, "malformed response");
  } else {
    if (cfg->count_mode && op == BOP_GENERATE && cfg->blobs != NULL) {
      struct bench_blob *b = &cfg->blobs[sl->tenant];
      const Tkms__GenerateDataKeyResponse *g = resp->generate_data_key;
      if (g->wrapped_key.len <= sizeof(b->wrapped) && g->plaintext.len == 32) {
        memcpy(b->wrapped, g->wrapped_key.data, g->wrapped_key.len);
        b->wrapped_len = g->wrapped_key.len;
        memcpy(b->plaintext, g->plaintext.data, 32);
        b->kek_version = g->kek_version;
        b->ok = true;
      }
    }
    if (cfg->count_mode && op == BOP_OPEN_SESSION && cfg->sessions != NULL) {
      struct bench_blob *b = &cfg->sessions[sl->tenant];
      memcpy(b->plaintext, resp->open_session->plaintext.data, 32);
      b->kek_version = resp->open_session->kek_version;
      b->ok = true;
    }
    if (cfg->count_mode && op == BOP_REENCRYPT && cfg->rewrapped != NULL) {
      const Tkms__ReEncryptResponse *e = resp->re_encrypt;
      struct bench_blob *b = &cfg->rewrapped[sl->tenant];
      if (e->wrapped_key.len <= sizeof(b->wrapped)) {
        memcpy(b->wrapped, e->wrapped_key.data, e->wrapped_key.len);
        b->wrapped_len = e->wrapped_key.len;
        memcpy(b->plaintext, cfg->blobs[sl->tenant].plaintext, 32);
        b->kek_version = e->kek_version;
        b->ok = true;
      }
    }
    if (op == BOP_DECRYPT && cfg->verify &&
        memcmp(resp->decrypt->plaintext.data, cfg->blobs[sl->tenant].plaintext, 32) != 0) {
      t->res.mismatches++;
    }
    if (op == BOP_REENCRYPT && cfg->verify) {
      /* No plaintext comes back: the versions are what can be checked here (kms-bench
       * decrypts each tenant's re-wrapped key once before the window). */
      const Tkms__ReEncryptResponse *e = resp->re_encrypt;
      if (e->source_version != cfg->blobs[sl->tenant].kek_version ||
          e->kek_version < e->source_version || e->wrapped_key.len == 0) {
        t->res.mismatches++;
      }
    }
    if (op == BOP_SESSION_GET && cfg->verify &&
        (memcmp(resp->get_session_key->plaintext.data, cfg->sessions[sl->tenant].plaintext,
                32) != 0 ||
         resp->get_session_key->state != 1)) {
      t->res.mismatches++;
    }
    if (in_window) {
      t->res.ok[op]++;
      uint64_t lat = now > sl->t0_ns ? now - sl->t0_ns : 0;
      hist_add(&t->res.hist[op], lat);
      hist_add(&t->res.all, lat);
    }
  }
  tkms__response__free_unpacked(resp, NULL);
  sl->id = 0;
  c->free_slots[c->nfree++] = s - 1;
  c->inflight--;
}

static int
conn_read(struct lthread *t, struct bconn *c)
{
  for (;;) {
    if (ensure_cap(&c->rbuf, &c->rcap, c->rlen + READ_CHUNK) != 0) {
      return -1;
    }
    int n = SSL_read(c->ssl, c->rbuf + c->rlen, (int)(c->rcap - c->rlen));
    if (n <= 0) {
      int e = SSL_get_error(c->ssl, n);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        return 0;
      }
      ERR_clear_error();
      return -1;
    }
    c->rlen += (size_t)n;
    uint64_t now = bench_now_ns();
    size_t off = 0;
    while (c->rlen - off >= KMS_FRAME_HDR_LEN) {
      size_t plen = 0;
      if (kms_frame_peek(c->rbuf + off, c->rlen - off, RESPONSE_MAX, &plen) != KMS_OK) {
        return -1;
      }
      if (c->rlen - off < KMS_FRAME_HDR_LEN + plen) {
        break;
      }
      on_response(t, c, c->rbuf + off + KMS_FRAME_HDR_LEN, plen, now);
      off += KMS_FRAME_HDR_LEN + plen;
    }
    if (off > 0) {
      memmove(c->rbuf, c->rbuf + off, c->rlen - off);
      c->rlen -= off;
    }
    if (t->failed) {
      return -1;
    }
  }
}

static int
pick_op(struct lthread *t)
{
  const struct load_cfg *cfg = t->cfg;
  return cfg->mix[rng_next(&t->rng) % cfg->mix_n];
}

static uint32_t
pick_tenant(struct lthread *t)
{
  return (uint32_t)(rng_next(&t->rng) % t->cfg->tenants);
}

/* Closed loop and count mode: keep the connection's pipeline full. */
static void
top_up(struct lthread *t, struct bconn *c, uint64_t now)
{
  const struct load_cfg *cfg = t->cfg;
  if (cfg->count_mode) {
    while (c->inflight < cfg->inflight) {
      unsigned i = atomic_fetch_add(&count_next, 1);
      if (i >= cfg->tenants) {
        return;
      }
      if (conn_send(t, c, cfg->count_op, i, now) != 0) {
        fail(t, "out of memory");
        return;
      }
    }
    return;
  }
  if (cfg->rate > 0 || now >= t->t_end) {
    return;
  }
  while (c->inflight < cfg->inflight) {
    if (conn_send(t, c, pick_op(t), pick_tenant(t), now) != 0) {
      fail(t, "out of memory");
      return;
    }
  }
}

static void
flush_dirty(struct lthread *t)
{
  for (unsigned i = 0; i < t->ndirty; i++) {
    struct bconn *c = t->dirty[i];
    c->dirty = 0;
    if (conn_flush(c) != 0) {
      fail(t, "connection failed while writing");
    }
  }
  t->ndirty = 0;
}

static unsigned
total_inflight(const struct lthread *t)
{
  unsigned n = 0;
  for (unsigned i = 0; i < t->nconns; i++) {
    n += t->conns[i].inflight;
  }
  return n;
}

static void *
thread_main(void *arg)
{
  struct lthread *t = arg;
  const struct load_cfg *cfg = t->cfg;
  struct epoll_event evs[256];
  uint64_t interval_ns = 0, next_ns = 0;
  uint64_t drain_deadline = t->t_end + (uint64_t)(DRAIN_S * 1e9);

  if (cfg->rate > 0) {
    interval_ns = (uint64_t)(1e9 * (double)cfg->threads / cfg->rate);
    /* Stagger the threads' schedules so their sends interleave. */
    next_ns = t->t_measure - (uint64_t)(cfg->warmup_s * 1e9) +
              interval_ns * t->index / (cfg->threads > 0 ? cfg->threads : 1);
  }
  uint64_t now = bench_now_ns();
  for (unsigned i = 0; i < t->nconns; i++) {
    top_up(t, &t->conns[i], now);
  }
  flush_dirty(t);

  while (!t->failed) {
    now = bench_now_ns();
    if (cfg->count_mode) {
      if (atomic_load(&count_next) >= cfg->tenants && total_inflight(t) == 0) {
        break;
      }
    } else if (now >= t->t_end) {
      if (total_inflight(t) == 0 || now >= drain_deadline) {
        break;
      }
    }
    if (cfg->rate > 0 && now < t->t_end) {
      /* Open loop: everything due goes out now; latency counts from the schedule. */
      while (next_ns <= now && next_ns < t->t_end) {
        struct bconn *c = NULL;
        for (unsigned k = 0; k < t->nconns; k++) {
          struct bconn *cand = &t->conns[(t->rr + k) % t->nconns];
          if (cand->inflight < cfg->inflight) {
            c = cand;
            t->rr = (t->rr + k + 1) % t->nconns;
            break;
          }
        }
        if (c == NULL) {
          break; /* every pipeline full: retry when a response frees a slot */
        }
        if (now > next_ns + 1000000) {
          t->res.late++;
        }
        if (conn_send(t, c, pick_op(t), pick_tenant(t), next_ns) != 0) {
          fail(t, "out of memory");
          break;
        }
        next_ns += interval_ns;
      }
      flush_dirty(t);
    }
    /* Sleep until the next scheduled send, or until a response arrives (which
     * also frees a slot when every pipeline was full). */
    struct timespec ts = {0, 100 * 1000 * 1000};
    if (cfg->rate > 0 && now < t->t_end && next_ns > now) {
      uint64_t wait = next_ns - now;
      ts.tv_sec = (time_t)(wait / 1000000000u);
      ts.tv_nsec = (long)(wait % 1000000000u);
    }
    int n = epoll_pwait2(t->ep, evs, 256, &ts, NULL);
    if (n < 0 && errno != EINTR) {
      fail(t, "epoll_pwait2 failed");
      break;
    }
    for (int i = 0; i < n; i++) {
      struct bconn *c = evs[i].data.ptr;
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (conn_read(t, c) != 0) {
          fail(t, t->failed ? t->err : "connection closed by the server");
          break;
        }
      }
      if ((evs[i].events & EPOLLOUT) && conn_flush(c) != 0) {
        fail(t, "connection failed while writing");
        break;
      }
      top_up(t, c, bench_now_ns());
    }
    flush_dirty(t);
  }
  return NULL;
}

/* ---- Set-up --------------------------------------------------------------------------- */

static int
tcp_connect(const char *host, const char *port, int *out_fd)
{
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  if (getaddrinfo(host, port, &hints, &res) != 0) {
    return -1;
  }
  int r = -1;
  for (struct addrinfo *ai = res; ai != NULL && r != 0; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *out_fd = fd;
    r = 0;
  }
  freeaddrinfo(res);
  return r;
}

static int
conn_open(const struct load_cfg *cfg, struct bconn *c, unsigned cap, char *err, size_t err_len)
{
  c->fd = -1;
  c->cap = cap;
  c->slots = calloc(cap, sizeof(*c->slots));
  c->free_slots = calloc(cap, sizeof(*c->free_slots));
  if (c->slots == NULL || c->free_slots == NULL) {
    snprintf(err, err_len, "out of memory");
    return -1;
  }
  for (unsigned i = 0; i < cap; i++) {
    c->free_slots[i] = cap - 1 - i;
  }
  c->nfree = cap;
  if (tcp_connect(cfg->host, cfg->port, &c->fd) != 0) {
    snprintf(err, err_len, "cannot connect to %s:%s: %s", cfg->host, cfg->port,
             strerror(errno));
    return -1;
  }
  c->ssl = SSL_new(cfg->ctx);
  if (c->ssl == NULL) {
    snprintf(err, err_len, "SSL_new failed");
    return -1;
  }
  SSL_set_fd(c->ssl, c->fd);
  unsigned char ip[16];
  if (inet_pton(AF_INET, cfg->host, ip) == 1 || inet_pton(AF_INET6, cfg->host, ip) == 1) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), cfg->host);
  } else {
    SSL_set_tlsext_host_name(c->ssl, cfg->host);
    SSL_set1_host(c->ssl, cfg->host);
  }
  if (SSL_connect(c->ssl) != 1) {
    char buf[160];
    ERR_error_string_n(ERR_peek_last_error(), buf, sizeof(buf));
    snprintf(err, err_len, "TLS handshake with %s:%s failed: %s", cfg->host, cfg->port, buf);
    ERR_clear_error();
    return -1;
  }
  SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  return 0;
}

static void
conn_close(struct bconn *c)
{
  if (c->ssl != NULL) {
    (void)SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    ERR_clear_error();
  }
  if (c->fd >= 0) {
    close(c->fd);
  }
  free(c->wbuf);
  free(c->rbuf);
  free(c->slots);
  free(c->free_slots);
}

static double
self_cpu(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void
sleep_until_ns(uint64_t when)
{
  for (;;) {
    uint64_t now = bench_now_ns();
    if (now >= when) {
      return;
    }
    uint64_t d = when - now;
    struct timespec ts = {(time_t)(d / 1000000000u), (long)(d % 1000000000u)};
    nanosleep(&ts, NULL);
  }
}

int
load_run(const struct load_cfg *cfg, struct load_result *out, char *err, size_t err_len)
{
  int r = -1;
  unsigned nth = cfg->threads > 0 ? cfg->threads : 1;
  if (nth > cfg->conns) {
    nth = cfg->conns;
  }
  unsigned cap = cfg->inflight;
  if (cap == 0 || cap > SLOT_MAX || cfg->conns == 0 || cfg->tenants == 0) {
    snprintf(err, err_len, "bad load parameters");
    return -1;
  }
  memset(out, 0, sizeof(*out));
  struct lthread *th = calloc(nth, sizeof(*th));
  struct bconn *conns = calloc(cfg->conns, sizeof(*conns));
  unsigned opened = 0, started = 0;
  if (th == NULL || conns == NULL) {
    snprintf(err, err_len, "out of memory");
    goto out;
  }
  atomic_store(&count_next, 0);
  for (unsigned i = 0; i < cfg->conns; i++) {
    if (conn_open(cfg, &conns[i], cap, err, err_len) != 0) {
      opened = i + 1;
      goto out;
    }
    opened = i + 1;
  }
  /* Split connections between threads. */
  unsigned base = 0;
  for (unsigned k = 0; k < nth; k++) {
    struct lthread *t = &th[k];
    t->cfg = cfg;
    t->index = k;
    t->nconns = cfg->conns / nth + (k < cfg->conns % nth ? 1 : 0);
    t->conns = &conns[base];
    base += t->nconns;
    t->rng = 0x9e3779b97f4a7c15ULL * (k + 1) ^ bench_now_ns();
    t->dirty = calloc(t->nconns, sizeof(*t->dirty));
    t->ep = epoll_create1(EPOLL_CLOEXEC);
    if (t->dirty == NULL || t->ep < 0) {
      snprintf(err, err_len, "out of memory or epoll");
      goto out;
    }
    for (unsigned i = 0; i < t->nconns; i++) {
      struct bconn *c = &t->conns[i];
      c->th = t;
      struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
      epoll_ctl(t->ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
  }
  uint64_t t0 = bench_now_ns() + 20 * 1000 * 1000;
  uint64_t t_measure = t0 + (uint64_t)(cfg->warmup_s * 1e9);
  uint64_t t_end = cfg->count_mode ? UINT64_MAX : t_measure + (uint64_t)(cfg->duration_s * 1e9);
  for (unsigned k = 0; k < nth; k++) {
    th[k].t_measure = cfg->count_mode ? 0 : t_measure;
    th[k].t_end = t_end;
  }
  sleep_until_ns(t0);
  double c0 = self_cpu();
  double s0 = cfg->server_pid > 0 ? bench_proc_cpu(cfg->server_pid) : -1;
  for (unsigned k = 0; k < nth; k++) {
    if (pthread_create(&th[k].tid, NULL, thread_main, &th[k]) != 0) {
      snprintf(err, err_len, "pthread_create failed");
      goto out;
    }
    started = k + 1;
  }
  double c1 = 0, s1 = -1;
  if (!cfg->count_mode) {
    sleep_until_ns(t_measure);
    c0 = self_cpu();
    s0 = cfg->server_pid > 0 ? bench_proc_cpu(cfg->server_pid) : -1;
    sleep_until_ns(t_end);
    c1 = self_cpu();
    s1 = cfg->server_pid > 0 ? bench_proc_cpu(cfg->server_pid) : -1;
  }
  /* Memory while every connection is still open. */
  out->server_rss_kb = cfg->server_pid > 0 ? bench_proc_status_kb(cfg->server_pid, "VmRSS") : -1;
  out->server_hwm_kb = cfg->server_pid > 0 ? bench_proc_status_kb(cfg->server_pid, "VmHWM") : -1;
  for (unsigned k = 0; k < started; k++) {
    pthread_join(th[k].tid, NULL);
  }
  started = 0;
  uint64_t t_done = bench_now_ns();
  if (cfg->count_mode) {
    c1 = self_cpu();
    s1 = cfg->server_pid > 0 ? bench_proc_cpu(cfg->server_pid) : -1;
  }
  out->window_s = cfg->count_mode ? (double)(t_done - t0) / 1e9 : cfg->duration_s;
  out->client_cpu_s = c1 - c0;
  out->server_cpu_s = s0 >= 0 && s1 >= 0 ? s1 - s0 : 0;
  r = 0;
  for (unsigned k = 0; k < nth; k++) {
    struct lthread *t = &th[k];
    for (int op = 0; op < BOP_COUNT_; op++) {
      out->ok[op] += t->res.ok[op];
      out->errors[op] += t->res.errors[op];
      hist_merge(&out->hist[op], &t->res.hist[op]);
    }
    hist_merge(&out->all, &t->res.all);
    out->mismatches += t->res.mismatches;
    out->late += t->res.late;
    if (out->first_error[0] == '\0' && t->res.first_error[0] != '\0') {
      memcpy(out->first_error, t->res.first_error, sizeof(out->first_error));
    }
    if (t->failed && r == 0) {
      snprintf(err, err_len, "%s", t->err);
      r = -1;
    }
  }
out:
  for (unsigned k = 0; k < started; k++) {
    pthread_join(th[k].tid, NULL);
  }
  for (unsigned i = 0; conns != NULL && i < opened; i++) {
    conn_close(&conns[i]);
  }
  for (unsigned k = 0; th != NULL && k < nth; k++) {
    if (th[k].ep > 0) {
      close(th[k].ep);
    }
    free(th[k].dirty);
  }
  free(th);
  free(conns);
  return r;
}
