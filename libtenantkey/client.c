/* The client connection: configuration, mutual TLS to kmsd, one request at a time. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "kms_conf.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "kms_wire.h"
#include "tk_internal.h"

#define TK_ENDPOINTS_MAX 8
#define TK_PATH_MAX 512
#define TK_RESPONSE_MAX (1024u * 1024u)

struct tk_endpoint {
  char host[256];
  char port[8];
};

struct tk_client {
  pthread_mutex_t mu; /* one request at a time on the one connection */
  struct tk_endpoint endpoints[TK_ENDPOINTS_MAX];
  size_t n_endpoints;
  size_t current; /* endpoint of the live connection / next to try */
  char ca[TK_PATH_MAX], cert[TK_PATH_MAX], key[TK_PATH_MAX];
  unsigned connect_timeout_ms, request_timeout_ms;
  SSL_CTX *ctx;
  SSL *ssl; /* NULL when not connected */
  int fd;
  uint64_t next_id;
  char last_message[256];
};

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
on_entry(void *arg, const char *key, const char *value, char *why, size_t why_len)
{
  tk_client *c = arg;
  unsigned long long v;
  if (strcmp(key, "endpoint") == 0) {
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
  if (strcmp(key, "ca") == 0) {
    return set_path(c->ca, value, why, why_len);
  }
  if (strcmp(key, "cert") == 0) {
    return set_path(c->cert, value, why, why_len);
  }
  if (strcmp(key, "key") == 0) {
    return set_path(c->key, value, why, why_len);
  }
  if (strcmp(key, "connect_timeout_ms") == 0 || strcmp(key, "request_timeout_ms") == 0) {
    if (kms_conf_uint(value, 10, 600000, &v) != KMS_OK) {
      snprintf(why, why_len, "expected milliseconds in [10, 600000]");
      return KMS_ERR_CONFIG;
    }
    if (key[0] == 'c') {
      c->connect_timeout_ms = (unsigned)v;
    } else {
      c->request_timeout_ms = (unsigned)v;
    }
    return KMS_OK;
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
  tk_client *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    return KMS_ERR_ALLOC;
  }
  c->connect_timeout_ms = 5000;
  c->request_timeout_ms = 10000;
  c->fd = -1;
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
  pthread_mutex_init(&c->mu, NULL);
  *out_client = c;
  return KMS_OK;
}

static void
disconnect(tk_client *c)
{
  if (c->ssl != NULL) {
    (void)SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    c->ssl = NULL;
  }
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
}

TK_EXPORT void
tk_client_free(tk_client *client)
{
  if (client == NULL) {
    return;
  }
  disconnect(client);
  SSL_CTX_free(client->ctx);
  pthread_mutex_destroy(&client->mu);
  free(client);
}

TK_EXPORT void
tk_client_last_message(tk_client *client, char *buf, size_t len)
{
  if (len == 0) {
    return;
  }
  pthread_mutex_lock(&client->mu);
  snprintf(buf, len, "%s", client->last_message);
  pthread_mutex_unlock(&client->mu);
}

/* ---- Connecting -------------------------------------------------------------- */

static int
tcp_connect(const struct tk_endpoint *e, unsigned timeout_ms, int *out_fd)
{
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  if (getaddrinfo(e->host, e->port, &hints, &res) != 0) {
    return KMS_ERR_UNAVAILABLE;
  }
  int r = KMS_ERR_UNAVAILABLE;
  for (struct addrinfo *ai = res; ai != NULL && r != KMS_OK; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      continue;
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int c = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (c != 0 && errno == EINPROGRESS) {
      struct pollfd p = {fd, POLLOUT, 0};
      int soerr = 0;
      socklen_t sl = sizeof(soerr);
      if (poll(&p, 1, (int)timeout_ms) == 1 &&
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
        c = 0;
      }
    }
    if (c != 0) {
      close(fd);
      continue;
    }
    fcntl(fd, F_SETFL, fl);
    *out_fd = fd;
    r = KMS_OK;
  }
  freeaddrinfo(res);
  return r;
}

static void
set_io_timeout(int fd, unsigned ms)
{
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int
connect_one(tk_client *c, const struct tk_endpoint *e)
{
  int fd = -1;
  int r = tcp_connect(e, c->connect_timeout_ms, &fd);
  if (r != KMS_OK) {
    return r;
  }
  set_io_timeout(fd, c->connect_timeout_ms);
  SSL *ssl = SSL_new(c->ctx);
  if (ssl == NULL) {
    close(fd);
    return KMS_ERR_ALLOC;
  }
  SSL_set_fd(ssl, fd);
  unsigned char ip[16];
  X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
  if (inet_pton(AF_INET, e->host, ip) == 1 || inet_pton(AF_INET6, e->host, ip) == 1) {
    X509_VERIFY_PARAM_set1_ip_asc(vp, e->host);
  } else {
    SSL_set_tlsext_host_name(ssl, e->host);
    SSL_set1_host(ssl, e->host);
  }
  if (SSL_connect(ssl) != 1) {
    long vr = SSL_get_verify_result(ssl);
    snprintf(c->last_message, sizeof(c->last_message), "TLS handshake with %.100s:%s failed%s%.80s",
             e->host, e->port, vr != X509_V_OK ? ": " : "",
             vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return KMS_ERR_TLS;
  }
  set_io_timeout(fd, c->request_timeout_ms);
  c->ssl = ssl;
  c->fd = fd;
  return KMS_OK;
}

/* Tries each endpoint once, starting with the last one that worked. */
static int
ensure_connected(tk_client *c)
{
  if (c->ssl != NULL) {
    return KMS_OK;
  }
  int r = KMS_ERR_UNAVAILABLE;
  for (size_t i = 0; i < c->n_endpoints; i++) {
    size_t idx = (c->current + i) % c->n_endpoints;
    r = connect_one(c, &c->endpoints[idx]);
    if (r == KMS_OK) {
      c->current = idx;
      return KMS_OK;
    }
  }
  return r;
}

/* ---- Frames ------------------------------------------------------------------ */

static int
io_error(SSL *ssl, int ret)
{
  int e = SSL_get_error(ssl, ret);
  ERR_clear_error();
  if ((e == SSL_ERROR_SYSCALL || e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) &&
      (errno == EAGAIN || errno == EWOULDBLOCK)) {
    return KMS_ERR_TIMEOUT;
  }
  if (e == SSL_ERROR_SSL) {
    return KMS_ERR_TLS; /* e.g. kmsd refused our certificate (TLS 1.3: seen on first read) */
  }
  return KMS_ERR_UNAVAILABLE;
}

static int
write_all(SSL *ssl, const uint8_t *p, size_t n)
{
  while (n > 0) {
    int w = SSL_write(ssl, p, (int)n);
    if (w <= 0) {
      return io_error(ssl, w);
    }
    p += w;
    n -= (size_t)w;
  }
  return KMS_OK;
}

static int
read_all(SSL *ssl, uint8_t *p, size_t n)
{
  while (n > 0) {
    int got = SSL_read(ssl, p, (int)n);
    if (got <= 0) {
      return io_error(ssl, got);
    }
    p += got;
    n -= (size_t)got;
  }
  return KMS_OK;
}

/* One exchange on the live connection. */
static int
exchange(tk_client *c, const uint8_t *frame, size_t frame_len, Tkms__Response **out)
{
  uint8_t hdr[KMS_FRAME_HDR_LEN];
  size_t plen = 0;
  uint8_t *payload = NULL;
  int r = write_all(c->ssl, frame, frame_len);
  if (r == KMS_OK) {
    r = read_all(c->ssl, hdr, sizeof(hdr));
  }
  if (r == KMS_OK) {
    r = kms_frame_peek(hdr, sizeof(hdr), TK_RESPONSE_MAX, &plen);
    r = r == KMS_OK ? KMS_OK : KMS_ERR_PROTOCOL;
  }
  if (r == KMS_OK) {
    payload = malloc(plen > 0 ? plen : 1);
    r = payload != NULL ? read_all(c->ssl, payload, plen) : KMS_ERR_ALLOC;
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

int
tk_client_call(tk_client *c, Tkms__Request *req, Tkms__Response **out_resp)
{
  int r = KMS_ERR_INTERNAL;
  uint8_t *frame = NULL;
  size_t frame_len = 0;
  Tkms__Response *resp = NULL;
  const char *why = NULL;
  *out_resp = NULL;

  pthread_mutex_lock(&c->mu);
  c->last_message[0] = '\0';
  req->request_id = ++c->next_id;
  r = kms_wire_request_check(req, &why);
  if (r != KMS_OK) {
    snprintf(c->last_message, sizeof(c->last_message), "%s", why);
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

  /* A reused connection may have died (kmsd restarted): then reconnect once. */
  for (int attempt = 0; attempt < 2; attempt++) {
    int reused = c->ssl != NULL;
    r = ensure_connected(c);
    if (r != KMS_OK) {
      goto out;
    }
    r = exchange(c, frame, frame_len, &resp);
    if (r == KMS_OK) {
      break;
    }
    disconnect(c);
    if (!reused || r == KMS_ERR_TIMEOUT) {
      goto out;
    }
  }
  if (r != KMS_OK) {
    goto out;
  }
  if (resp->request_id != req->request_id && resp->request_id != 0) {
    r = KMS_ERR_PROTOCOL;
    disconnect(c);
    goto out;
  }
  if (resp->status != TKMS__STATUS_CODE__OK) {
    snprintf(c->last_message, sizeof(c->last_message), "%s",
             resp->message != NULL ? resp->message : "");
    r = kms_status_to_err(resp->status);
    if (resp->request_id == 0) {
      disconnect(c); /* kmsd closes after a connection-level error */
    }
    goto out;
  }
  r = kms_wire_response_check(resp, req->op_case);
  if (r != KMS_OK) {
    disconnect(c);
    goto out;
  }
  *out_resp = resp;
  resp = NULL;
out:
  pthread_mutex_unlock(&c->mu);
  tk_client_response_free(resp);
  if (frame != NULL) {
    OPENSSL_cleanse(frame, frame_len);
    free(frame);
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
