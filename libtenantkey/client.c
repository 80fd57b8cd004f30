/* The client: configuration, a small pool of mutual-TLS connections to kmsd, deadlines, retries with backoff, failover. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "kms_conf.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "kms_time.h"
#include "kms_wire.h"
#include "tk_internal.h"

#define TK_ENDPOINTS_MAX 8
#define TK_POOL_MAX 32
#define TK_PATH_MAX 512
#define TK_RESPONSE_MAX (1024u * 1024u)

struct tk_endpoint {
  char host[256];
  char port[8];
};

/*
 * Access attributes applied to every request of a client
 * (tk_client_set_attributes). A snapshot is immutable once published and
 * reference counted under the client's mutex, so a call in flight keeps the
 * set it started with while another thread replaces it.
 */
struct tk_attrs {
  unsigned refs;
  size_t n;
  Tkms__ContextEntry entries[KMS_CONTEXT_MAX_ENTRIES];
  Tkms__ContextEntry *ptrs[KMS_CONTEXT_MAX_ENTRIES];
};

/* One pooled connection. Only the thread that borrowed it (busy) touches ssl/fd. */
struct tk_conn {
  SSL *ssl; /* NULL when not connected */
  int fd;
  size_t endpoint;
  int busy;
};

struct tk_client {
  struct tk_endpoint endpoints[TK_ENDPOINTS_MAX];
  size_t n_endpoints;
  char ca[TK_PATH_MAX], cert[TK_PATH_MAX], key[TK_PATH_MAX];
  unsigned connect_timeout_ms, request_timeout_ms, retries, backoff_ms, backoff_max_ms,
      deadline_ms, pool_size;
  SSL_CTX *ctx;

  pthread_mutex_t mu; /* guards everything below except last_message */
  pthread_cond_t cv;  /* a connection was returned to the pool */
  struct tk_conn conns[TK_POOL_MAX];
  size_t preferred; /* endpoint that last worked: new connections start there */
  uint64_t next_id;
  struct tk_attrs *attrs; /* NULL: none */

  pthread_mutex_t msg_mu;
  char last_message[256];
};

/* ---- Time ----------------------------------------------------------------- */

static uint64_t
now_ms(void)
{
  return (uint64_t)kms_mono_ms();
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

static void
sleep_ms(uint64_t ms)
{
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

__attribute__((format(printf, 2, 3))) static void
set_message(tk_client *c, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&c->msg_mu);
  vsnprintf(c->last_message, sizeof(c->last_message), fmt, ap);
  pthread_mutex_unlock(&c->msg_mu);
  va_end(ap);
}

/* ---- Configuration ------------------------------------------------------- */

static int
set_path(char *dst, const char *value, char *why, size_t why_len)
{
  if (value[0] == '\0' || strlen(value) >= TK_PATH_MAX) {
    snprintf(why, why_len, "path empty or too long");
    return KMS_ERR_CONFIG;
  }
  memcpy(dst, value, strlen(value) + 1);
  return KMS_OK;
}

static int
set_uint(unsigned *dst, const char *value, unsigned long long lo, unsigned long long hi,
         char *why, size_t why_len)
{
  unsigned long long v;
  if (kms_conf_uint(value, lo, hi, &v) != KMS_OK) {
    snprintf(why, why_len, "expected a number in [%llu, %llu]", lo, hi);
    return KMS_ERR_CONFIG;
  }
  *dst = (unsigned)v;
  return KMS_OK;
}

static int
add_endpoint(tk_client *c, const char *value, char *why, size_t why_len)
{
  unsigned long long v;
  if (c->n_endpoints >= TK_ENDPOINTS_MAX) {
    snprintf(why, why_len, "more than %d endpoints", TK_ENDPOINTS_MAX);
    return KMS_ERR_CONFIG;
  }
  const char *colon = strrchr(value, ':');
  struct tk_endpoint *e = &c->endpoints[c->n_endpoints];
  if (colon == NULL || colon == value || (size_t)(colon - value) >= sizeof(e->host) ||
      kms_conf_uint(colon + 1, 1, 65535, &v) != KMS_OK) {
    snprintf(why, why_len, "expected HOST:PORT with a port in 1-65535");
    return KMS_ERR_CONFIG;
  }
  const char *h = value;
  size_t hl = (size_t)(colon - value);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [v6]:port */
    h++;
    hl -= 2;
  }
  memcpy(e->host, h, hl);
  e->host[hl] = '\0';
  snprintf(e->port, sizeof(e->port), "%llu", v);
  c->n_endpoints++;
  return KMS_OK;
}

static int
on_entry(void *arg, const char *key, const char *value, char *why, size_t why_len)
{
  tk_client *c = arg;
  if (strcmp(key, "endpoint") == 0) {
    return add_endpoint(c, value, why, why_len);
  }
  if (strcmp(key, "ca") == 0) {
    return set_path(c->ca, value, why, why_len);
  }
  if (strcmp(key, "cert") == 0) {
    return set_path(c->cert, value, why, why_len);
  }
  if (strcmp(key, "key") == 0) {
    return set_path(c->key, value, why, why_len);
  }
  if (strcmp(key, "connect_timeout_ms") == 0) {
    return set_uint(&c->connect_timeout_ms, value, 10, 600000, why, why_len);
  }
  if (strcmp(key, "request_timeout_ms") == 0) {
    return set_uint(&c->request_timeout_ms, value, 10, 600000, why, why_len);
  }
  if (strcmp(key, "retries") == 0) {
    return set_uint(&c->retries, value, 0, 10, why, why_len);
  }
  if (strcmp(key, "retry_backoff_ms") == 0) {
    return set_uint(&c->backoff_ms, value, 1, 60000, why, why_len);
  }
  if (strcmp(key, "retry_backoff_max_ms") == 0) {
    return set_uint(&c->backoff_max_ms, value, 1, 600000, why, why_len);
  }
  if (strcmp(key, "deadline_ms") == 0) {
    return set_uint(&c->deadline_ms, value, 10, 3600000, why, why_len);
  }
  if (strcmp(key, "connections") == 0) {
    return set_uint(&c->pool_size, value, 1, TK_POOL_MAX, why, why_len);
  }
  snprintf(why, why_len, "unknown key");
  return KMS_ERR_CONFIG;
}

static SSL_CTX *
make_ctx(const tk_client *c, char *err, size_t err_len)
{
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) {
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  const char *what = NULL, *path = NULL;
  if (SSL_CTX_load_verify_locations(ctx, c->ca, NULL) != 1) {
    what = "CA", path = c->ca;
  } else if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
    what = "certificate", path = c->cert;
  } else if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1 ||
             SSL_CTX_check_private_key(ctx) != 1) {
    what = "private key", path = c->key;
  }
  if (what != NULL) {
    if (err != NULL) {
      char buf[200];
      ERR_error_string_n(ERR_peek_last_error(), buf, sizeof(buf));
      snprintf(err, err_len, "loading %s %s: %s", what, path, buf);
    }
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  return ctx;
}

TK_EXPORT int
tk_client_new_from_file(tk_client **out_client, const char *path, char *err, size_t err_len)
{
  char local[512];
  if (err == NULL || err_len == 0) {
    err = local;
    err_len = sizeof(local);
  }
  err[0] = '\0';
  *out_client = NULL;
  if (path == NULL) {
    snprintf(err, err_len, "no configuration file given");
    return KMS_ERR_CONFIG;
  }
  tk_client *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    return KMS_ERR_ALLOC;
  }
  c->connect_timeout_ms = 5000;
  c->request_timeout_ms = 10000;
  c->retries = 3;
  c->backoff_ms = 50;
  c->backoff_max_ms = 2000;
  c->deadline_ms = 30000;
  c->pool_size = 4;
  for (size_t i = 0; i < TK_POOL_MAX; i++) {
    c->conns[i].fd = -1;
  }
  int r = kms_conf_parse(path, on_entry, c, err, err_len);
  if (r == KMS_OK && (c->n_endpoints == 0 || c->ca[0] == '\0' || c->cert[0] == '\0' ||
                      c->key[0] == '\0')) {
    snprintf(err, err_len, "%s: endpoint, ca, cert and key are required", path);
    r = KMS_ERR_CONFIG;
  }
  if (r == KMS_OK) {
    c->ctx = make_ctx(c, err, err_len);
    if (c->ctx == NULL) {
      r = KMS_ERR_CONFIG;
    }
  }
  if (r != KMS_OK) {
    free(c);
    return r;
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&c->mu, NULL);
  pthread_mutex_init(&c->msg_mu, NULL);
  *out_client = c;
  return KMS_OK;
}

static void
disconnect(struct tk_conn *cn)
{
  if (cn->ssl != NULL) {
    /* No SSL_shutdown: it could block on a dead peer, and kmsd needs no close_notify. */
    SSL_free(cn->ssl);
    cn->ssl = NULL;
  }
  if (cn->fd >= 0) {
    close(cn->fd);
    cn->fd = -1;
  }
}

static void
attrs_free(struct tk_attrs *a)
{
  if (a == NULL) {
    return;
  }
  for (size_t i = 0; i < a->n; i++) {
    free(a->entries[i].key);
    free(a->entries[i].value);
  }
  free(a);
}

/* attrs_release drops one reference; the caller holds c->mu. */
static void
attrs_release(struct tk_attrs *a)
{
  if (a != NULL && --a->refs == 0) {
    attrs_free(a);
  }
}

TK_EXPORT int
tk_client_set_attributes(tk_client *client, const tk_context *attrs)
{
  Tkms__ContextEntry **src = NULL;
  size_t n = tk_context_entries(attrs, &src);
  struct tk_attrs *a = NULL;
  const char *why = NULL;

  if (client == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (n > 0) {
    if ((a = calloc(1, sizeof(*a))) == NULL) {
      return KMS_ERR_ALLOC;
    }
    a->refs = 1;
    for (size_t i = 0; i < n; i++) {
      tkms__context_entry__init(&a->entries[i]);
      a->entries[i].key = strdup(src[i]->key);
      a->entries[i].value = strdup(src[i]->value != NULL ? src[i]->value : "");
      a->ptrs[i] = &a->entries[i];
      a->n++;
      if (a->entries[i].key == NULL || a->entries[i].value == NULL) {
        attrs_free(a);
        return KMS_ERR_ALLOC;
      }
    }
    if (!kms_wire_context_ok(a->n, a->ptrs, &why)) {
      attrs_free(a);
      return KMS_ERR_INVALID_ARGUMENT;
    }
  }
  pthread_mutex_lock(&client->mu);
  struct tk_attrs *old = client->attrs;
  client->attrs = a;
  attrs_release(old);
  pthread_mutex_unlock(&client->mu);
  return KMS_OK;
}

/* The attributes field of a request that carries one; NULL for the others. */
static int
request_attributes(Tkms__Request *req, size_t **out_n, Tkms__ContextEntry ****out_e)
{
  switch (req->op_case) {
  case TKMS__REQUEST__OP_GENERATE_DATA_KEY:
    *out_n = &req->generate_data_key->n_attributes;
    *out_e = &req->generate_data_key->attributes;
    return 1;
  case TKMS__REQUEST__OP_DECRYPT:
    *out_n = &req->decrypt->n_attributes;
    *out_e = &req->decrypt->attributes;
    return 1;
  case TKMS__REQUEST__OP_RE_ENCRYPT:
    *out_n = &req->re_encrypt->n_attributes;
    *out_e = &req->re_encrypt->attributes;
    return 1;
  case TKMS__REQUEST__OP_RE_ENCRYPT_BATCH:
    *out_n = &req->re_encrypt_batch->n_attributes;
    *out_e = &req->re_encrypt_batch->attributes;
    return 1;
  case TKMS__REQUEST__OP_OPEN_SESSION:
    *out_n = &req->open_session->n_attributes;
    *out_e = &req->open_session->attributes;
    return 1;
  case TKMS__REQUEST__OP_GET_SESSION_KEY:
    *out_n = &req->get_session_key->n_attributes;
    *out_e = &req->get_session_key->attributes;
    return 1;
  default:
    return 0;
  }
}

int
tk_client_attributes_clash(tk_client *c, Tkms__ContextEntry **ctx, size_t n_ctx)
{
  int clash = 0;
  const char *why = NULL;
  if (c == NULL) {
    return 0;
  }
  pthread_mutex_lock(&c->mu);
  if (c->attrs != NULL &&
      !kms_wire_attributes_ok(c->attrs->n, c->attrs->ptrs, n_ctx, ctx, NULL, &why)) {
    clash = 1;
  }
  pthread_mutex_unlock(&c->mu);
  if (clash) {
    set_message(c, "%s", why);
  }
  return clash;
}

TK_EXPORT void
tk_client_free(tk_client *client)
{
  if (client == NULL) {
    return;
  }
  attrs_free(client->attrs);
  for (size_t i = 0; i < TK_POOL_MAX; i++) {
    disconnect(&client->conns[i]);
  }
  SSL_CTX_free(client->ctx);
  pthread_cond_destroy(&client->cv);
  pthread_mutex_destroy(&client->mu);
  pthread_mutex_destroy(&client->msg_mu);
  free(client);
}

TK_EXPORT void
tk_client_last_message(tk_client *client, char *buf, size_t len)
{
  if (buf == NULL || len == 0) {
    return;
  }
  buf[0] = '\0';
  if (client == NULL) {
    return;
  }
  pthread_mutex_lock(&client->msg_mu);
  snprintf(buf, len, "%s", client->last_message);
  pthread_mutex_unlock(&client->msg_mu);
}

/* ---- A socket BIO that never raises SIGPIPE ---------------------------------- */

/*
 * OpenSSL's socket BIO writes with write(2), which kills a process that does
 * not ignore SIGPIPE when kmsd has closed the connection. A library must not
 * change process-wide signal dispositions, so we send with MSG_NOSIGNAL.
 */
static BIO_METHOD *nosig_method;
static pthread_once_t nosig_once = PTHREAD_ONCE_INIT;

static int
nosig_fd(BIO *b)
{
  return (int)(intptr_t)BIO_get_data(b);
}

static int
nosig_write(BIO *b, const char *buf, int len)
{
  BIO_clear_retry_flags(b);
  ssize_t n = send(nosig_fd(b), buf, (size_t)len, MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      BIO_set_retry_write(b);
    }
    return -1;
  }
  return (int)n;
}

static int
nosig_read(BIO *b, char *buf, int len)
{
  BIO_clear_retry_flags(b);
  ssize_t n = recv(nosig_fd(b), buf, (size_t)len, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      BIO_set_retry_read(b);
    }
    return -1;
  }
  return (int)n;
}

static long
nosig_ctrl(BIO *b, int cmd, long num, void *ptr)
{
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int
nosig_create(BIO *b)
{
  BIO_set_init(b, 1);
  return 1;
}

static void
nosig_init(void)
{
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tk-socket");
  if (m == NULL || BIO_meth_set_write(m, nosig_write) != 1 ||
      BIO_meth_set_read(m, nosig_read) != 1 || BIO_meth_set_ctrl(m, nosig_ctrl) != 1 ||
      BIO_meth_set_create(m, nosig_create) != 1) {
    BIO_meth_free(m);
    return;
  }
  nosig_method = m;
}

/* ---- Connecting -------------------------------------------------------------- */

/* Waits until |fd| is ready for |events| or |deadline| (ms, monotonic) passes. */
static int
wait_fd(int fd, short events, uint64_t deadline)
{
  for (;;) {
    uint64_t now = now_ms();
    if (now >= deadline) {
      return KMS_ERR_TIMEOUT;
    }
    struct pollfd p = {fd, events, 0};
    int n = poll(&p, 1, (int)min_u64(deadline - now, 60000));
    if (n > 0) {
      return KMS_OK;
    }
    if (n < 0 && errno != EINTR) {
      return KMS_ERR_UNAVAILABLE;
    }
  }
}

/* A non-blocking TCP connection to |e| by |deadline|. */
static int
tcp_connect(const struct tk_endpoint *e, uint64_t deadline, int *out_fd)
{
  struct addrinfo hints, *res = NULL;
  *out_fd = -1;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  if (getaddrinfo(e->host, e->port, &hints, &res) != 0) {
    return KMS_ERR_UNAVAILABLE;
  }
  int r = KMS_ERR_UNAVAILABLE;
  for (struct addrinfo *ai = res; ai != NULL && r != KMS_OK; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0) {
      continue;
    }
    int c = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (c != 0 && errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == KMS_OK) {
      int soerr = 0;
      socklen_t sl = sizeof(soerr);
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
        c = 0;
      }
    }
    if (c != 0) {
      close(fd);
      continue;
    }
    /* Requests go out at once, not behind an unacknowledged one (Nagle). */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *out_fd = fd;
    r = KMS_OK;
  }
  freeaddrinfo(res);
  return r;
}

/*
 * Drives one SSL operation on a non-blocking socket until it completes, fails
 * or |deadline| passes. |ret| is the operation's return value.
 */
static int
ssl_wait(SSL *ssl, int fd, int ret, uint64_t deadline, int *out_done)
{
  *out_done = 0;
  int e = SSL_get_error(ssl, ret);
  if (e == SSL_ERROR_WANT_READ) {
    return wait_fd(fd, POLLIN, deadline);
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    return wait_fd(fd, POLLOUT, deadline);
  }
  *out_done = 1;
  ERR_clear_error();
  if (e == SSL_ERROR_SSL) {
    return KMS_ERR_TLS; /* e.g. kmsd refused our certificate (TLS 1.3: seen on first read) */
  }
  return KMS_ERR_UNAVAILABLE; /* EOF, reset: kmsd went away */
}

static int
connect_one(tk_client *c, struct tk_conn *cn, size_t idx, uint64_t deadline)
{
  const struct tk_endpoint *e = &c->endpoints[idx];
  uint64_t cdl = min_u64(deadline, now_ms() + c->connect_timeout_ms);
  int fd = -1, done = 0;
  int r = tcp_connect(e, cdl, &fd);
  if (r != KMS_OK) {
    set_message(c, "cannot connect to %.100s:%s", e->host, e->port);
    return r;
  }
  pthread_once(&nosig_once, nosig_init);
  SSL *ssl = SSL_new(c->ctx);
  BIO *bio = nosig_method != NULL ? BIO_new(nosig_method) : NULL;
  if (ssl == NULL || bio == NULL) {
    BIO_free(bio);
    SSL_free(ssl);
    close(fd);
    return KMS_ERR_ALLOC;
  }
  BIO_set_data(bio, (void *)(intptr_t)fd);
  SSL_set_bio(ssl, bio, bio);
  unsigned char ip[16];
  X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
  if (inet_pton(AF_INET, e->host, ip) == 1 || inet_pton(AF_INET6, e->host, ip) == 1) {
    X509_VERIFY_PARAM_set1_ip_asc(vp, e->host);
  } else {
    SSL_set_tlsext_host_name(ssl, e->host);
    SSL_set1_host(ssl, e->host);
  }
  for (;;) {
    ERR_clear_error(); /* SSL_get_error reads the queue: stale errors would pose as ours */
    int ret = SSL_connect(ssl);
    if (ret == 1) {
      r = KMS_OK;
      break;
    }
    r = ssl_wait(ssl, fd, ret, cdl, &done);
    if (r == KMS_ERR_TIMEOUT) {
      r = KMS_ERR_UNAVAILABLE; /* no handshake in time: try elsewhere */
    }
    if (r != KMS_OK || done) {
      if (r == KMS_OK) {
        r = KMS_ERR_UNAVAILABLE;
      }
      break;
    }
  }
  if (r != KMS_OK) {
    long vr = SSL_get_verify_result(ssl);
    if (r == KMS_ERR_TLS || vr != X509_V_OK) {
      r = KMS_ERR_TLS;
      set_message(c, "TLS handshake with %.100s:%s failed%s%.80s", e->host, e->port,
                  vr != X509_V_OK ? ": " : "",
                  vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
    } else {
      set_message(c, "%.100s:%s closed the connection during the TLS handshake", e->host,
                  e->port);
    }
    ERR_clear_error();
    SSL_free(ssl); /* frees the BIO */
    close(fd);
    return r;
  }
  cn->ssl = ssl;
  cn->fd = fd;
  cn->endpoint = idx;
  return KMS_OK;
}

/* Tries each endpoint once, starting with the one that last worked. */
static int
connect_any(tk_client *c, struct tk_conn *cn, uint64_t deadline)
{
  pthread_mutex_lock(&c->mu);
  size_t start = c->preferred;
  pthread_mutex_unlock(&c->mu);
  int r = KMS_ERR_UNAVAILABLE;
  for (size_t i = 0; i < c->n_endpoints && now_ms() < deadline; i++) {
    size_t idx = (start + i) % c->n_endpoints;
    r = connect_one(c, cn, idx, deadline);
    if (r == KMS_OK) {
      pthread_mutex_lock(&c->mu);
      c->preferred = idx;
      pthread_mutex_unlock(&c->mu);
      return KMS_OK;
    }
    if (r != KMS_ERR_UNAVAILABLE) {
      return r; /* TLS refusal or no memory: another endpoint won't help */
    }
  }
  return r;
}

/* Moves the preference past |idx| after kmsd there failed, so the next try goes elsewhere. */
static void
avoid_endpoint(tk_client *c, size_t idx)
{
  pthread_mutex_lock(&c->mu);
  if (c->preferred == idx) {
    c->preferred = (idx + 1) % c->n_endpoints;
  }
  pthread_mutex_unlock(&c->mu);
}

/*
 * A pooled connection that kmsd has closed (restart, idle timeout) is readable
 * (EOF or an alert) while we have nothing outstanding: drop it before use.
 */
static int
conn_looks_dead(const struct tk_conn *cn)
{
  struct pollfd p = {cn->fd, POLLIN, 0};
  return poll(&p, 1, 0) != 0;
}

/* ---- The pool ----------------------------------------------------------------- */

static int
pool_get(tk_client *c, struct tk_conn **out, uint64_t deadline)
{
  int r = KMS_OK;
  *out = NULL;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    struct tk_conn *idle = NULL, *unused = NULL;
    for (size_t i = 0; i < c->pool_size; i++) {
      struct tk_conn *cn = &c->conns[i];
      if (cn->busy) {
        continue;
      }
      if (cn->ssl != NULL && idle == NULL) {
        idle = cn;
      } else if (cn->ssl == NULL && unused == NULL) {
        unused = cn;
      }
    }
    struct tk_conn *pick = idle != NULL ? idle : unused;
    if (pick != NULL) {
      pick->busy = 1;
      *out = pick;
      break;
    }
    uint64_t now = now_ms();
    if (now >= deadline) {
      r = KMS_ERR_TIMEOUT;
      break;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t wait = min_u64(deadline - now, 60000);
    ts.tv_sec += (time_t)(wait / 1000);
    ts.tv_nsec += (long)(wait % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
  }
  pthread_mutex_unlock(&c->mu);
  return r;
}

static void
pool_put(tk_client *c, struct tk_conn *cn)
{
  pthread_mutex_lock(&c->mu);
  cn->busy = 0;
  pthread_cond_signal(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

/* ---- Frames ------------------------------------------------------------------ */

static int
write_all(struct tk_conn *cn, const uint8_t *p, size_t n, uint64_t deadline)
{
  int done = 0;
  while (n > 0) {
    ERR_clear_error();
    int w = SSL_write(cn->ssl, p, (int)(n > INT32_MAX ? INT32_MAX : n));
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    int r = ssl_wait(cn->ssl, cn->fd, w, deadline, &done);
    if (r != KMS_OK) {
      return r;
    }
    if (done) {
      return KMS_ERR_UNAVAILABLE;
    }
  }
  return KMS_OK;
}

static int
read_all(struct tk_conn *cn, uint8_t *p, size_t n, uint64_t deadline)
{
  int done = 0;
  while (n > 0) {
    ERR_clear_error();
    int got = SSL_read(cn->ssl, p, (int)(n > INT32_MAX ? INT32_MAX : n));
    if (got > 0) {
      p += got;
      n -= (size_t)got;
      continue;
    }
    int r = ssl_wait(cn->ssl, cn->fd, got, deadline, &done);
    if (r != KMS_OK) {
      return r;
    }
    if (done) {
      return KMS_ERR_UNAVAILABLE;
    }
  }
  return KMS_OK;
}

/*
 * One exchange on a live connection. A failure before any byte of the answer
 * arrived while writing is KMS_ERR_UNAVAILABLE; no answer in time is
 * KMS_ERR_TIMEOUT.
 */
static int
exchange(struct tk_conn *cn, const uint8_t *frame, size_t frame_len, uint64_t deadline,
         Tkms__Response **out)
{
  uint8_t hdr[KMS_FRAME_HDR_LEN];
  size_t plen = 0;
  uint8_t *payload = NULL;
  int r = write_all(cn, frame, frame_len, deadline);
  if (r == KMS_OK) {
    r = read_all(cn, hdr, sizeof(hdr), deadline);
  }
  if (r == KMS_OK) {
    r = kms_frame_peek(hdr, sizeof(hdr), TK_RESPONSE_MAX, &plen);
    r = r == KMS_OK ? KMS_OK : KMS_ERR_PROTOCOL;
  }
  if (r == KMS_OK) {
    payload = malloc(plen > 0 ? plen : 1);
    r = payload != NULL ? read_all(cn, payload, plen, deadline) : KMS_ERR_ALLOC;
  }
  if (r == KMS_OK) {
    *out = tkms__response__unpack(NULL, plen, payload);
    r = *out != NULL ? KMS_OK : KMS_ERR_PROTOCOL;
  }
  if (payload != NULL) {
    OPENSSL_cleanse(payload, plen); /* may hold a plaintext data key */
    free(payload);
  }
  return r;
}

/*
 * One try: borrow a connection, (re)connect if needed, exchange, and check
 * the answer's envelope (request id, status). A pooled connection found dead
 * is replaced at once, without counting as a try.
 */
static int
try_once(tk_client *c, const uint8_t *frame, size_t frame_len, uint64_t req_id,
         Tkms__Request__OpCase op, uint64_t deadline, Tkms__Response **out_resp)
{
  struct tk_conn *cn = NULL;
  Tkms__Response *resp = NULL;
  *out_resp = NULL;
  int r = pool_get(c, &cn, deadline);
  if (r != KMS_OK) {
    set_message(c, "no free connection before the deadline");
    return r;
  }
  for (int attempt = 0; attempt < 2; attempt++) {
    int reused = cn->ssl != NULL;
    if (reused && conn_looks_dead(cn)) {
      disconnect(cn);
      reused = 0;
    }
    if (cn->ssl == NULL) {
      r = connect_any(c, cn, deadline);
      if (r != KMS_OK) {
        goto out;
      }
    }
    uint64_t rdl = min_u64(deadline, now_ms() + c->request_timeout_ms);
    r = exchange(cn, frame, frame_len, rdl, &resp);
    if (r == KMS_OK) {
      break;
    }
    size_t ep = cn->endpoint;
    disconnect(cn);
    if (r == KMS_ERR_TIMEOUT) {
      set_message(c, "no answer from %.100s:%s within the request timeout",
                  c->endpoints[ep].host, c->endpoints[ep].port);
      goto out;
    }
    if (!reused || r != KMS_ERR_UNAVAILABLE) {
      if (r == KMS_ERR_UNAVAILABLE) {
        avoid_endpoint(c, ep);
        set_message(c, "connection to %.100s:%s lost", c->endpoints[ep].host,
                    c->endpoints[ep].port);
      }
      goto out;
    }
  }
  if (r != KMS_OK) {
    goto out;
  }
  if (resp->request_id != req_id && resp->request_id != 0) {
    r = KMS_ERR_PROTOCOL;
    disconnect(cn);
    goto out;
  }
  if (resp->status != TKMS__STATUS_CODE__OK) {
    set_message(c, "%s", resp->message != NULL ? resp->message : "");
    r = kms_status_to_err(resp->status);
    if (resp->request_id == 0) {
      disconnect(cn); /* kmsd closes after a connection-level error */
    } else if (r == KMS_ERR_UNAVAILABLE) {
      /* HSM down or draining on that kmsd: let the retry try another one. */
      avoid_endpoint(c, cn->endpoint);
      disconnect(cn);
    }
    goto out;
  }
  r = kms_wire_response_check(resp, op);
  if (r != KMS_OK) {
    disconnect(cn);
    goto out;
  }
  *out_resp = resp;
  resp = NULL;
out:
  pool_put(c, cn);
  tk_client_response_free(resp);
  return r;
}

/* Full jitter: uniform in [0, min(max, base * 2^attempt)]. */
static uint64_t
backoff_ms(const tk_client *c, unsigned attempt)
{
  uint64_t b = c->backoff_ms;
  for (unsigned i = 0; i < attempt && b < c->backoff_max_ms; i++) {
    b *= 2;
  }
  b = min_u64(b, c->backoff_max_ms);
  uint32_t rnd = 0;
  if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1) {
    rnd = (uint32_t)now_ms() * 2654435761u;
  }
  return rnd % (b + 1);
}

int
tk_client_call(tk_client *c, Tkms__Request *req, Tkms__Response **out_resp)
{
  int r = KMS_ERR_INTERNAL;
  uint8_t *frame = NULL;
  size_t frame_len = 0;
  const char *why = NULL;
  *out_resp = NULL;

  if (c == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  uint64_t deadline = now_ms() + c->deadline_ms;
  size_t *n_attr = NULL;
  Tkms__ContextEntry **attr_saved = NULL, ***attr_field = NULL;
  struct tk_attrs *attrs = NULL;
  pthread_mutex_lock(&c->mu);
  req->request_id = ++c->next_id;
  /* The client's attributes go with every request that carries some, unless it has its own. */
  if (c->attrs != NULL && request_attributes(req, &n_attr, &attr_field) && *n_attr == 0) {
    attrs = c->attrs;
    attrs->refs++;
    attr_saved = *attr_field;
    *attr_field = attrs->ptrs;
    *n_attr = attrs->n;
  }
  pthread_mutex_unlock(&c->mu);
  r = kms_wire_request_check(req, &why);
  if (r != KMS_OK) {
    set_message(c, "%s", why);
    goto out;
  }
  size_t n = protobuf_c_message_get_packed_size(&req->base);
  frame_len = KMS_FRAME_HDR_LEN + n;
  frame = malloc(frame_len);
  if (frame == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  kms_frame_put_header(frame, (uint32_t)n);
  protobuf_c_message_pack(&req->base, frame + KMS_FRAME_HDR_LEN);

  for (unsigned attempt = 0;; attempt++) {
    r = try_once(c, frame, frame_len, req->request_id, req->op_case, deadline, out_resp);
    if (r != KMS_ERR_UNAVAILABLE || attempt >= c->retries) {
      break;
    }
    uint64_t pause = backoff_ms(c, attempt), now = now_ms();
    if (now + pause >= deadline) {
      break;
    }
    sleep_ms(pause);
  }
out:
  if (frame != NULL) {
    OPENSSL_cleanse(frame, frame_len);
    free(frame);
  }
  if (attrs != NULL) {
    /* The caller's request points at its own fields again. */
    *attr_field = attr_saved;
    *n_attr = 0;
    pthread_mutex_lock(&c->mu);
    attrs_release(attrs);
    pthread_mutex_unlock(&c->mu);
  }
  return r;
}

void
tk_client_response_free(Tkms__Response *resp)
{
  if (resp == NULL) {
    return;
  }
  if (resp->result_case == TKMS__RESPONSE__RESULT_GENERATE_DATA_KEY &&
      resp->generate_data_key->plaintext.data != NULL) {
    OPENSSL_cleanse(resp->generate_data_key->plaintext.data,
                    resp->generate_data_key->plaintext.len);
  }
  if (resp->result_case == TKMS__RESPONSE__RESULT_DECRYPT &&
      resp->decrypt->plaintext.data != NULL) {
    OPENSSL_cleanse(resp->decrypt->plaintext.data, resp->decrypt->plaintext.len);
  }
  if (resp->result_case == TKMS__RESPONSE__RESULT_OPEN_SESSION &&
      resp->open_session->plaintext.data != NULL) {
    OPENSSL_cleanse(resp->open_session->plaintext.data, resp->open_session->plaintext.len);
  }
  if (resp->result_case == TKMS__RESPONSE__RESULT_GET_SESSION_KEY &&
      resp->get_session_key->plaintext.data != NULL) {
    OPENSSL_cleanse(resp->get_session_key->plaintext.data,
                    resp->get_session_key->plaintext.len);
  }
  tkms__response__free_unpacked(resp, NULL);
}

TK_EXPORT int
tk_health(tk_client *client, int *out_serving)
{
  *out_serving = 0;
  Tkms__Request req;
  Tkms__HealthRequest h;
  tkms__request__init(&req);
  tkms__health_request__init(&h);
  req.op_case = TKMS__REQUEST__OP_HEALTH;
  req.health = &h;
  Tkms__Response *resp = NULL;
  int r = tk_client_call(client, &req, &resp);
  if (r == KMS_OK) {
    *out_serving = resp->health->status != NULL && strcmp(resp->health->status, "serving") == 0;
  }
  tk_client_response_free(resp);
  return r;
}
