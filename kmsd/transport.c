/* TLS 1.3 with client certificates on libevent; frames in, frames out, limits enforced. */
#include "transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "identity.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "limiter.h"
#include "log.h"
#include "rpc.h"

struct server {
  struct event_base *base;
  SSL_CTX *ctx;
  struct evconnlistener *listener;
  const struct kmsd_config *cfg;
  struct rpc *rpc;
  unsigned nconns;
  unsigned nhandshakes; /* connections still in the TLS handshake (max_handshakes) */
  limits *peers;        /* open connections per peer address (max_connections_per_peer) */
  limits *hs_peers;     /* handshaking connections per peer address (a quarter of max_handshakes) */
  conn *conns; /* all open connections, for shutdown */
  struct event *flush_ev; /* hands coalesced responses to libevent (conn_send) */
  conn *flush_head;       /* connections with a pending response block */
};

struct conn {
  server *srv;
  struct bufferevent *bev; /* NULL once closed */
  conn *prev, *next;
  char principal[IDENTITY_MAX];
  char peer[64];
  char ip[INET6_ADDRSTRLEN]; /* the peer's address alone: what max_connections_per_peer counts */
  unsigned inflight;
  int authenticated;
  int handshaking; /* counted in srv->nhandshakes */
  /*
   * One absolute deadline at a time (timeouts restarted by every byte would let
   * a peer trickling bytes hold the connection forever): the handshake from
   * accept on, a frame from its first byte on, or idleness from the last
   * complete frame on.
   */
  struct event *timer;
  int deadline; /* DEADLINE_*: what |timer| is armed for */
  int paused;      /* reading disabled: too many requests in flight */
  int closing;     /* close once the output is flushed */
  uint8_t *obuf;   /* pending response block (conn_send), CONN_OBUF_CAP bytes */
  size_t olen;
  conn *flush_prev, *flush_next;
  int flush_queued;
};

enum { DEADLINE_NONE, DEADLINE_HANDSHAKE, DEADLINE_FRAME, DEADLINE_IDLE };

static void process_input(conn *c);
static void conn_flush(conn *c);

/* ---- TLS context ------------------------------------------------------------ */

static void
tls_error(char *err, size_t err_len, const char *what, const char *path)
{
  unsigned long e = ERR_get_error();
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  snprintf(err, err_len, "%s %s: %s", what, path, e != 0 ? buf : "failed");
  ERR_clear_error();
}

/* 1 if |crl| is signed by a CA certificate in |st| (the tls_ca file). */
static int
crl_signed_by_store(X509_STORE *st, X509_CRL *crl)
{
  STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(st);
  for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
    X509 *ca = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
    if (ca != NULL && X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) == 0 &&
        X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1) {
      return 1;
    }
  }
  ERR_clear_error();
  return 0;
}

/*
 * Adds every CRL in the PEM file |path| to |ctx|'s store and turns on
 * revocation checking of client certificates. With checking on, a stale or
 * foreign CRL would make every handshake fail with an obscure alert, so such a
 * CRL is refused here, where the message can say why.
 */
static int
load_crl(SSL_CTX *ctx, const char *path, char *err, size_t err_len)
{
  X509_STORE *st = SSL_CTX_get_cert_store(ctx);
  X509_CRL *crl = NULL;
  int n = 0, r = KMS_ERR_TLS;
  BIO *bio = BIO_new_file(path, "r");
  if (bio == NULL) {
    tls_error(err, err_len, "loading CRL", path);
    return r;
  }
  while ((crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)) != NULL) {
    const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
    if (next == NULL || X509_cmp_current_time(next) <= 0) {
      snprintf(err, err_len, "CRL %s: no next update or past it: publish a fresh CRL", path);
      goto out;
    }
    if (!crl_signed_by_store(st, crl)) {
      snprintf(err, err_len, "CRL %s: not signed by a CA in tls_ca", path);
      goto out;
    }
    if (X509_STORE_add_crl(st, crl) != 1) {
      tls_error(err, err_len, "adding CRL", path);
      goto out;
    }
    X509_CRL_free(crl);
    crl = NULL;
    n++;
  }
  /* The loop ends at the first thing that is not a CRL: fine only at the end. */
  unsigned long e = ERR_peek_last_error();
  if (n == 0 || ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE) {
    tls_error(err, err_len, "loading CRL", path);
    goto out;
  }
  ERR_clear_error();
  /* The leaf's issuer must have a CRL in the file: no CRL, no handshake. */
  X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
  r = KMS_OK;
out:
  X509_CRL_free(crl);
  BIO_free(bio);
  return r;
}

static SSL_CTX *
make_tls_ctx(const struct kmsd_config *cfg, char *err, size_t err_len)
{
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    tls_error(err, err_len, "SSL_CTX_new", "");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  /* No session resumption: every connection presents and verifies its
   * certificate, so revocation and expiry take effect on reconnect. */
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET |
                               SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
    tls_error(err, err_len, "loading certificate", cfg->tls_cert);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    tls_error(err, err_len, "loading private key", cfg->tls_key);
    goto fail;
  }
  if (SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL) != 1) {
    tls_error(err, err_len, "loading CA", cfg->tls_ca);
    goto fail;
  }
  STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_ca);
  if (names != NULL) {
    SSL_CTX_set_client_CA_list(ctx, names);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  SSL_CTX_set_verify_depth(ctx, 4);
  X509_VERIFY_PARAM_set_purpose(SSL_CTX_get0_param(ctx), X509_PURPOSE_SSL_CLIENT);
  if (cfg->tls_crl[0] != '\0' && load_crl(ctx, cfg->tls_crl, err, err_len) != KMS_OK) {
    goto fail;
  }
  return ctx;
fail:
  SSL_CTX_free(ctx);
  return NULL;
}

/* ---- Connections ------------------------------------------------------------ */

static void
conn_free_if_done(conn *c)
{
  if (c->bev == NULL && c->inflight == 0) {
    free(c);
  }
}

static void
conn_close(conn *c)
{
  if (c->bev == NULL) {
    return;
  }
  SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
  if (ssl != NULL && c->authenticated) {
    (void)SSL_shutdown(ssl); /* best effort close_notify; libevent won't send it */
  }
  bufferevent_free(c->bev);
  c->bev = NULL;
  if (c->timer != NULL) {
    event_free(c->timer);
    c->timer = NULL;
  }
  if (c->handshaking) {
    c->handshaking = 0;
    c->srv->nhandshakes--;
    limits_peer_release(c->srv->hs_peers, c->ip);
  }
  limits_peer_release(c->srv->peers, c->ip);
  conn_flush(c); /* no connection left: wipes and frees the pending block */
  if (c->prev != NULL) {
    c->prev->next = c->next;
  } else {
    c->srv->conns = c->next;
  }
  if (c->next != NULL) {
    c->next->prev = c->prev;
  }
  c->srv->nconns--;
  conn_free_if_done(c);
}

/* ---- Deadlines ---------------------------------------------------------------- */

static void
arm(conn *c, int kind)
{
  const struct kmsd_config *cfg = c->srv->cfg;
  unsigned ms = kind == DEADLINE_HANDSHAKE ? cfg->handshake_timeout_ms
                : kind == DEADLINE_FRAME   ? cfg->frame_timeout_ms
                                           : cfg->idle_timeout_ms;
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  c->deadline = kind;
  evtimer_add(c->timer, &tv); /* re-adding reschedules */
}

/* want_deadline keeps a running deadline of the same kind: bytes never push it back. */
static void
want_deadline(conn *c, int kind)
{
  if (c->deadline != kind) {
    arm(c, kind);
  }
}

static size_t
output_pending(const conn *c)
{
  return evbuffer_get_length(bufferevent_get_output(c->bev)) + c->olen;
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
  conn *c = arg;
  int kind = c->deadline;
  static const char *const stage[] = {"-", "handshake", "frame", "idle"};

  c->deadline = DEADLINE_NONE;
  if (c->bev == NULL) {
    return;
  }
  /* Waiting for us is not idling, and a frame we stopped reading is not the peer's fault. */
  if ((kind == DEADLINE_IDLE && (c->inflight > 0 || output_pending(c) > 0)) ||
      (kind == DEADLINE_FRAME && c->paused)) {
    arm(c, kind);
    return;
  }
  log_msg(LOG_INFO, "event=timeout peer=%s principal=%s stage=%s", c->peer, c->principal,
          stage[kind]);
  conn_close(c);
}

static void
log_tls_failure(conn *c)
{
  unsigned long e;
  char buf[256] = "";
  /* bufferevent_get_openssl_error may yield a spurious entry with library 0. */
  while ((e = bufferevent_get_openssl_error(c->bev)) != 0) {
    if (ERR_GET_LIB(e) != 0) {
      ERR_error_string_n(e, buf, sizeof(buf));
    }
  }
  /* "certificate verify failed" alone hides why: revoked, expired, unknown CA... */
  SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
  long v = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
  log_msg(LOG_INFO, "event=tls_failure peer=%s reason=\"%s\" verify=\"%s\"", c->peer,
          buf[0] != '\0' ? buf : "connection error",
          v != X509_V_OK ? X509_verify_cert_error_string(v) : "-");
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
  conn *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (identity_from_cert(c->principal, peer) != KMS_OK) {
      log_msg(LOG_INFO, "event=unauthenticated peer=%s reason=no_usable_identity", c->peer);
      conn_close(c);
      return;
    }
    c->authenticated = 1;
    c->handshaking = 0;
    c->srv->nhandshakes--;
    limits_peer_release(c->srv->hs_peers, c->ip);
    /* Reading is timed by our deadlines; this one catches a peer that stops taking answers. */
    struct timeval idle = {c->srv->cfg->idle_timeout_ms / 1000,
                           (c->srv->cfg->idle_timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(bev, NULL, &idle);
    arm(c, DEADLINE_IDLE);
    log_msg(LOG_DEBUG, "event=connected peer=%s principal=%s", c->peer, c->principal);
    return;
  }
  if (what & BEV_EVENT_TIMEOUT) {
    log_msg(LOG_INFO, "event=timeout peer=%s principal=%s stage=write", c->peer, c->principal);
  } else if (what & BEV_EVENT_ERROR) {
    log_tls_failure(c);
  } else if (what & BEV_EVENT_EOF) {
    size_t left = evbuffer_get_length(bufferevent_get_input(bev));
    if (left > 0 && !c->closing) {
      log_msg(LOG_INFO, "event=truncated_frame peer=%s principal=%s bytes=%zu", c->peer,
              c->principal, left);
    }
  }
  conn_close(c);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
  process_input(arg);
}

/*
 * A connection stops being read while it has too many requests in flight or
 * too many response bytes its peer hasn't taken: a client that sends but
 * never reads can't make kmsd buffer without bound (responses may hold
 * plaintext data keys, and memory is finite).
 */
#define CONN_OUTPUT_MAX (256u * 1024u)

static int
must_pause(const conn *c)
{
  return c->inflight >= c->srv->cfg->max_inflight ||
         evbuffer_get_length(bufferevent_get_output(c->bev)) + c->olen > CONN_OUTPUT_MAX;
}

static void
maybe_resume(conn *c)
{
  if (c->paused && !c->closing && !must_pause(c)) {
    c->paused = 0;
    bufferevent_enable(c->bev, EV_READ);
    process_input(c);
  }
}

static void
on_write(struct bufferevent *bev, void *arg)
{
  conn *c = arg;
  if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    conn_close(c);
    return;
  }
  maybe_resume(c);
}

/*
 * Hands every complete frame in the input buffer to the RPC layer. Returns 0
 * if |c| may have been freed (it was closed), else 1.
 */
static int
process_frames(conn *c)
{
  const struct kmsd_config *cfg = c->srv->cfg;
  while (c->bev != NULL && !c->closing) {
    if (must_pause(c)) {
      if (!c->paused) {
        bufferevent_disable(c->bev, EV_READ);
        c->paused = 1;
      }
      return 1;
    }
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);
    uint8_t hdr[KMS_FRAME_HDR_LEN];
    size_t plen = 0;
    if (avail < KMS_FRAME_HDR_LEN) {
      return 1;
    }
    evbuffer_copyout(in, hdr, sizeof(hdr));
    int r = kms_frame_peek(hdr, sizeof(hdr), cfg->max_frame, &plen);
    if (r == KMS_ERR_FRAME_TOO_LARGE) {
      log_msg(LOG_INFO, "event=frame_too_large peer=%s principal=%s limit=%zu", c->peer,
              c->principal, cfg->max_frame);
      rpc_send_error(c, 0, r, "frame exceeds the size limit");
      conn_close_after_send(c);
      return 0;
    }
    if (avail < KMS_FRAME_HDR_LEN + plen) {
      return 1; /* wait for the rest; the cap bounds what we buffer */
    }
    evbuffer_drain(in, KMS_FRAME_HDR_LEN);
    static const uint8_t empty[1];
    const uint8_t *payload = plen > 0 ? evbuffer_pullup(in, (ev_ssize_t)plen) : empty;
    if (payload == NULL) {
      conn_close(c);
      return 0;
    }
    /* Hold the connection: the handler may close it (malformed request). */
    c->inflight++;
    rpc_on_frame(c->srv->rpc, c, payload, plen);
    c->inflight--;
    if (c->bev == NULL) {
      conn_free_if_done(c);
      return 0;
    }
    evbuffer_drain(bufferevent_get_input(c->bev), plen);
    c->deadline = DEADLINE_NONE; /* a whole frame: the next deadline starts afresh */
  }
  return 1;
}

/*
 * The minimum data rate: a frame once begun must arrive whole within
 * frame_timeout_ms, and a connection with nothing to say closes after
 * idle_timeout_ms, however the bytes trickle in.
 */
static void
process_input(conn *c)
{
  if (!process_frames(c) || c->bev == NULL || c->closing || !c->authenticated || c->paused) {
    return;
  }
  size_t avail = evbuffer_get_length(bufferevent_get_input(c->bev));
  want_deadline(c, avail > 0 ? DEADLINE_FRAME : DEADLINE_IDLE);
}

/* One refusal line per second at most: a flood must not turn into a flood of log lines. */
static void
log_refusal(const char *peer, const char *reason)
{
  static time_t last;
  static unsigned suppressed;
  time_t now = time(NULL);
  if (now == last) {
    suppressed++;
    return;
  }
  log_msg(LOG_WARN, "event=connection_refused peer=%s reason=%s suppressed=%u", peer, reason,
          suppressed);
  last = now;
  suppressed = 0;
}

static void
on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
          void *arg)
{
  server *s = arg;
  char peer[64] = "?";
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    snprintf(peer, sizeof(peer), "%s:%u", ip, ntohs(in->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    snprintf(peer, sizeof(peer), "[%s]:%u", ip, ntohs(in6->sin6_port));
  }
  /*
   * Half-open TLS connections have their own, lower limit, and each peer
   * address may hold only a quarter of it and max_connections_per_peer in
   * all: a flood from one place can neither take every slot nor keep other
   * clients from finishing their handshakes.
   */
  const char *refused = NULL;
  unsigned hs_per_peer = s->cfg->max_handshakes / 4 > 0 ? s->cfg->max_handshakes / 4 : 1;
  if (s->nconns >= s->cfg->max_connections) {
    refused = "max_connections";
  } else if (s->nhandshakes >= s->cfg->max_handshakes) {
    refused = "max_handshakes";
  } else if (!limits_peer_acquire(s->peers, ip, s->cfg->max_conns_per_peer)) {
    refused = "max_connections_per_peer";
  } else if (!limits_peer_acquire(s->hs_peers, ip, hs_per_peer)) {
    limits_peer_release(s->peers, ip);
    refused = "max_handshakes_per_peer";
  }
  if (refused != NULL) {
    log_refusal(peer, refused);
    evutil_closesocket(fd);
    return;
  }
  /*
   * No Nagle: a response is written whole as soon as it is ready. With Nagle,
   * a response that follows another still unacknowledged waits for the
   * peer's (delayed) ACK, which a pipelining client sends only with its next
   * request: at a low rate per connection that added the whole gap between
   * requests to every answer (docs/PERFORMANCE.md, "Nagle").
   */
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  conn *c = calloc(1, sizeof(*c));
  SSL *ssl = SSL_new(s->ctx);
  struct event *timer = c != NULL ? evtimer_new(s->base, on_deadline, c) : NULL;
  if (c == NULL || ssl == NULL || timer == NULL) {
    if (timer != NULL) {
      event_free(timer);
    }
    free(c);
    SSL_free(ssl);
    limits_peer_release(s->peers, ip);
    limits_peer_release(s->hs_peers, ip);
    evutil_closesocket(fd);
    return;
  }
  c->srv = s;
  c->timer = timer;
  memcpy(c->peer, peer, sizeof(c->peer));
  memcpy(c->ip, ip, sizeof(c->ip));
  snprintf(c->principal, sizeof(c->principal), "-");
  c->bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
  if (c->bev == NULL) {
    event_free(c->timer);
    free(c);
    limits_peer_release(s->peers, ip);
    limits_peer_release(s->hs_peers, ip);
    evutil_closesocket(fd);
    return;
  }
  c->next = s->conns;
  if (s->conns != NULL) {
    s->conns->prev = c;
  }
  s->conns = c;
  s->nconns++;
  s->nhandshakes++;
  c->handshaking = 1;
  /* From accept on, however slowly the peer talks. */
  arm(c, DEADLINE_HANDSHAKE);
  /* Never buffer more than one maximal frame plus a TLS record of the next. */
  bufferevent_setwatermark(c->bev, EV_READ, 0, KMS_FRAME_HDR_LEN + s->cfg->max_frame + 16384);
  bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

const char *
conn_principal(const conn *c)
{
  return c->principal;
}

const char *
conn_peer(const conn *c)
{
  return c->peer;
}

void
conn_inflight_begin(conn *c)
{
  c->inflight++;
}

void
conn_inflight_end(conn *c)
{
  c->inflight--;
  if (c->bev == NULL) {
    conn_free_if_done(c);
    return;
  }
  maybe_resume(c);
}

static void
wipe_and_free(const void *data, size_t len, void *extra)
{
  OPENSSL_cleanse((void *)data, len);
  free((void *)data);
}

/*
 * Responses are coalesced per connection. bufferevent_openssl gives every
 * evbuffer chain its own SSL_write, that is one TLS record and one send()
 * each: with one chain per response, the syscalls were a tenth of kmsd's CPU
 * under pipelined load. conn_send copies a frame into the connection's
 * pending block (at most one TLS record of plaintext), and the block goes to
 * libevent as one chain when it is full or at the end of the loop iteration
 * (flush_ev, activated by the first pending connection), so the completions
 * a batch of worker results brings become one record. Blocks are wiped
 * before they are freed, like the frames, since responses carry data keys.
 */
#define CONN_OBUF_CAP 16384

static void
flush_unlink(conn *c)
{
  if (!c->flush_queued) {
    return;
  }
  if (c->flush_prev != NULL) {
    c->flush_prev->flush_next = c->flush_next;
  } else {
    c->srv->flush_head = c->flush_next;
  }
  if (c->flush_next != NULL) {
    c->flush_next->flush_prev = c->flush_prev;
  }
  c->flush_prev = c->flush_next = NULL;
  c->flush_queued = 0;
}

/* Hands the pending block to libevent (or wipes it if the connection is gone). */
static void
conn_flush(conn *c)
{
  flush_unlink(c);
  uint8_t *b = c->obuf;
  size_t n = c->olen;
  c->obuf = NULL;
  c->olen = 0;
  if (b == NULL) {
    return;
  }
  if (n == 0 || c->bev == NULL ||
      evbuffer_add_reference(bufferevent_get_output(c->bev), b, n, wipe_and_free,
                             NULL) != 0) {
    wipe_and_free(b, n, NULL);
  }
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
  server *s = arg;
  while (s->flush_head != NULL) {
    conn_flush(s->flush_head);
  }
}

void
conn_send(conn *c, uint8_t *frame, size_t len)
{
  if (c == NULL || c->bev == NULL) {
    wipe_and_free(frame, len, NULL);
    return;
  }
  if (c->olen + len > CONN_OBUF_CAP) {
    conn_flush(c); /* keeps the order: what is pending goes first */
  }
  if (c->obuf == NULL && len <= CONN_OBUF_CAP) {
    c->obuf = malloc(CONN_OBUF_CAP);
  }
  if (c->obuf == NULL || len > CONN_OBUF_CAP) {
    /* A large frame (or no memory for a block): a chain of its own. */
    if (evbuffer_add_reference(bufferevent_get_output(c->bev), frame, len, wipe_and_free,
                               NULL) != 0) {
      wipe_and_free(frame, len, NULL);
    }
    return;
  }
  memcpy(c->obuf + c->olen, frame, len);
  c->olen += len;
  wipe_and_free(frame, len, NULL);
  if (!c->flush_queued) {
    server *s = c->srv;
    if (s->flush_head == NULL) {
      event_active(s->flush_ev, EV_WRITE, 0);
    }
    c->flush_next = s->flush_head;
    if (s->flush_head != NULL) {
      s->flush_head->flush_prev = c;
    }
    s->flush_head = c;
    c->flush_queued = 1;
  }
}

void
conn_close_after_send(conn *c)
{
  if (c->bev == NULL) {
    return;
  }
  c->closing = 1;
  bufferevent_disable(c->bev, EV_READ);
  conn_flush(c);
  if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
    conn_close(c);
  }
}

/* ---- Server ------------------------------------------------------------------ */

int
server_start(server **out, struct event_base *base, const struct kmsd_config *cfg,
             struct rpc *rpc, char *bound, size_t bound_len, char *err, size_t err_len)
{
  *out = NULL;
  server *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return KMS_ERR_ALLOC;
  }
  s->base = base;
  s->cfg = cfg;
  s->rpc = rpc;
  s->peers = limits_new(0, 0);
  s->hs_peers = limits_new(0, 0);
  if (s->peers == NULL || s->hs_peers == NULL) {
    limits_free(s->peers);
    limits_free(s->hs_peers);
    free(s);
    return KMS_ERR_ALLOC;
  }
  s->ctx = make_tls_ctx(cfg, err, err_len);
  if (s->ctx == NULL) {
    limits_free(s->peers);
    limits_free(s->hs_peers);
    free(s);
    return KMS_ERR_TLS;
  }
  s->flush_ev = event_new(base, -1, 0, on_flush, s);
  if (s->flush_ev == NULL) {
    SSL_CTX_free(s->ctx);
    limits_free(s->peers);
    limits_free(s->hs_peers);
    free(s);
    return KMS_ERR_ALLOC;
  }
  struct sockaddr_storage ss;
  int sslen = sizeof(ss);
  char addr[128];
  snprintf(addr, sizeof(addr), "%s:%u", cfg->listen_host, cfg->listen_port);
  memset(&ss, 0, sizeof(ss));
  /* libevent refuses port 0 in "host:port": parse the host alone, set the port. */
  if (evutil_parse_sockaddr_port(cfg->listen_host, (struct sockaddr *)&ss, &sslen) != 0) {
    snprintf(err, err_len, "listen: cannot parse address %s", addr);
    server_free(s);
    return KMS_ERR_CONFIG;
  }
  if (ss.ss_family == AF_INET6) {
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons(cfg->listen_port);
  } else {
    ((struct sockaddr_in *)&ss)->sin_port = htons(cfg->listen_port);
  }
  s->listener = evconnlistener_new_bind(base, on_accept, s,
                                        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                            LEV_OPT_CLOSE_ON_EXEC,
                                        512, (struct sockaddr *)&ss, sslen);
  if (s->listener == NULL) {
    snprintf(err, err_len, "listen: cannot bind %s", addr);
    server_free(s);
    return KMS_ERR_IO;
  }
  struct sockaddr_storage got;
  socklen_t gotlen = sizeof(got);
  getsockname(evconnlistener_get_fd(s->listener), (struct sockaddr *)&got, &gotlen);
  uint16_t port = got.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&got)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&got)->sin_port);
  snprintf(bound, bound_len, "%s:%u", cfg->listen_host, port);
  *out = s;
  return KMS_OK;
}

int
server_reload_tls(server *s, char *err, size_t err_len)
{
  SSL_CTX *ctx = make_tls_ctx(s->cfg, err, err_len);
  if (ctx == NULL) {
    return KMS_ERR_TLS;
  }
  /* Each SSL holds its own reference: open connections keep the old context. */
  SSL_CTX_free(s->ctx);
  s->ctx = ctx;
  return KMS_OK;
}

void
server_stop_accepting(server *s)
{
  if (s->listener != NULL) {
    evconnlistener_free(s->listener);
    s->listener = NULL;
  }
}

void
server_close_all(server *s)
{
  while (s->conns != NULL) {
    conn_close(s->conns);
  }
}

size_t
server_output_pending(const server *s)
{
  size_t n = 0;
  for (const conn *c = s->conns; c != NULL; c = c->next) {
    n += evbuffer_get_length(bufferevent_get_output(c->bev)) + c->olen;
  }
  return n;
}

unsigned
server_connections(const server *s)
{
  return s->nconns;
}

void
server_free(server *s)
{
  if (s == NULL) {
    return;
  }
  server_stop_accepting(s);
  server_close_all(s);
  if (s->flush_ev != NULL) {
    event_free(s->flush_ev);
  }
  SSL_CTX_free(s->ctx);
  limits_free(s->peers);
  limits_free(s->hs_peers);
  free(s);
}
