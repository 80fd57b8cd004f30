/* kms-bench --baseline-tls: a forked server that answers requests inline on a kmsd-like TLS loop. */
#include "bench.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "kms_err.h"
#include "kms_frame.h"

/*
 * The point is the transport ceiling of the machine, measured with kmsd's own
 * transport choices: the same SSL_CTX options (TLS 1.3 only, client
 * certificate required and verified, no tickets), bufferevent_openssl with
 * deferred callbacks, the same frame reassembly and protobuf-c unpack/pack,
 * one response frame per request. What it leaves out is exactly what kmsd adds
 * on top: validation, authorisation, the worker hand-off, HSM and keystore.
 */

static SSL_CTX *
echo_ctx(const struct kmsd_config *cfg)
{
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET |
                               SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL) != 1) {
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  SSL_CTX_set_verify_depth(ctx, 4);
  X509_VERIFY_PARAM_set_purpose(SSL_CTX_get0_param(ctx), X509_PURPOSE_SSL_CLIENT);
  return ctx;
}

/* Responses are coalesced per read like kmsd's conn_send: one chain, one TLS record per batch. */
#define OBUF_CAP 16384

struct econn {
  struct bufferevent *bev;
  uint8_t *obuf;
  size_t olen;
};

static void
free_frame(const void *data, size_t len, void *extra)
{
  free((void *)data);
}

static void
flush(struct econn *ec)
{
  if (ec->olen > 0 && evbuffer_add_reference(bufferevent_get_output(ec->bev), ec->obuf,
                                             ec->olen, free_frame, NULL) == 0) {
    ec->obuf = NULL;
  }
  free(ec->obuf);
  ec->obuf = NULL;
  ec->olen = 0;
}

static void
econn_free(struct econn *ec)
{
  bufferevent_free(ec->bev);
  free(ec->obuf);
  free(ec);
}

static void
answer(struct econn *ec, const uint8_t *payload, size_t len)
{
  static const uint8_t blob[65] = {1};
  static const uint8_t key[32] = {0};
  Tkms__Request *req = tkms__request__unpack(NULL, len, payload);
  Tkms__Response resp;
  Tkms__GenerateDataKeyResponse g;
  Tkms__DecryptResponse d;
  Tkms__CreateTenantResponse t;
  Tkms__ReEncryptResponse re;
  Tkms__GetSessionKeyResponse gs;
  Tkms__OpenSessionResponse os;
  Tkms__HealthResponse h;
  tkms__response__init(&resp);
  if (req == NULL) {
    resp.status = TKMS__STATUS_CODE__INVALID_ARGUMENT;
    resp.message = "malformed request";
  } else {
    resp.request_id = req->request_id;
    switch (req->op_case) {
    case TKMS__REQUEST__OP_GENERATE_DATA_KEY:
      tkms__generate_data_key_response__init(&g);
      g.kek_version = 1;
      g.wrapped_key.data = (uint8_t *)blob;
      g.wrapped_key.len = sizeof(blob);
      if (!req->generate_data_key->without_plaintext) {
        g.plaintext.data = (uint8_t *)key;
        g.plaintext.len = sizeof(key);
      }
      resp.result_case = TKMS__RESPONSE__RESULT_GENERATE_DATA_KEY;
      resp.generate_data_key = &g;
      break;
    case TKMS__REQUEST__OP_DECRYPT:
      tkms__decrypt_response__init(&d);
      d.kek_version = 1;
      d.plaintext.data = (uint8_t *)key;
      d.plaintext.len = sizeof(key);
      resp.result_case = TKMS__RESPONSE__RESULT_DECRYPT;
      resp.decrypt = &d;
      break;
    case TKMS__REQUEST__OP_RE_ENCRYPT:
      tkms__re_encrypt_response__init(&re);
      re.kek_version = 1;
      re.source_version = 1;
      re.wrapped_key.data = (uint8_t *)blob;
      re.wrapped_key.len = sizeof(blob);
      resp.result_case = TKMS__RESPONSE__RESULT_RE_ENCRYPT;
      resp.re_encrypt = &re;
      break;
    case TKMS__REQUEST__OP_GET_SESSION_KEY:
      tkms__get_session_key_response__init(&gs);
      gs.kek_version = 1;
      gs.plaintext.data = (uint8_t *)key;
      gs.plaintext.len = sizeof(key);
      gs.state = 1;
      gs.created_ms = 1;
      resp.result_case = TKMS__RESPONSE__RESULT_GET_SESSION_KEY;
      resp.get_session_key = &gs;
      break;
    case TKMS__REQUEST__OP_OPEN_SESSION:
      tkms__open_session_response__init(&os);
      os.kek_version = 1;
      os.plaintext.data = (uint8_t *)key;
      os.plaintext.len = sizeof(key);
      os.state = 1;
      os.created_ms = 1;
      resp.result_case = TKMS__RESPONSE__RESULT_OPEN_SESSION;
      resp.open_session = &os;
      break;
    case TKMS__REQUEST__OP_CREATE_TENANT:
      tkms__create_tenant_response__init(&t);
      t.tenant_id = req->create_tenant->tenant_id;
      t.kek_version = 1;
      resp.result_case = TKMS__RESPONSE__RESULT_CREATE_TENANT;
      resp.create_tenant = &t;
      break;
    default:
      tkms__health_response__init(&h);
      h.status = "serving";
      resp.result_case = TKMS__RESPONSE__RESULT_HEALTH;
      resp.health = &h;
      break;
    }
  }
  size_t n = protobuf_c_message_get_packed_size(&resp.base);
  if (ec->olen + KMS_FRAME_HDR_LEN + n > OBUF_CAP) {
    flush(ec);
  }
  if (ec->obuf == NULL) {
    ec->obuf = malloc(OBUF_CAP);
  }
  if (ec->obuf != NULL && KMS_FRAME_HDR_LEN + n <= OBUF_CAP) {
    kms_frame_put_header(ec->obuf + ec->olen, (uint32_t)n);
    protobuf_c_message_pack(&resp.base, ec->obuf + ec->olen + KMS_FRAME_HDR_LEN);
    ec->olen += KMS_FRAME_HDR_LEN + n;
  }
  if (req != NULL) {
    tkms__request__free_unpacked(req, NULL);
  }
}

static void
on_read(struct bufferevent *bev, void *arg)
{
  struct econn *ec = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  for (;;) {
    uint8_t hdr[KMS_FRAME_HDR_LEN];
    size_t plen = 0;
    size_t avail = evbuffer_get_length(in);
    if (avail < KMS_FRAME_HDR_LEN) {
      break;
    }
    evbuffer_copyout(in, hdr, sizeof(hdr));
    if (kms_frame_peek(hdr, sizeof(hdr), KMS_FRAME_MAX_DEFAULT, &plen) != KMS_OK) {
      econn_free(ec);
      return;
    }
    if (avail < KMS_FRAME_HDR_LEN + plen) {
      break;
    }
    evbuffer_drain(in, KMS_FRAME_HDR_LEN);
    static const uint8_t empty[1];
    const uint8_t *payload = plen > 0 ? evbuffer_pullup(in, (ev_ssize_t)plen) : empty;
    answer(ec, payload, plen);
    evbuffer_drain(in, plen);
  }
  flush(ec);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
  if (what & BEV_EVENT_CONNECTED) {
    return;
  }
  econn_free(arg);
}

static void
on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
          void *arg)
{
  SSL_CTX *ctx = arg;
  SSL *ssl = SSL_new(ctx);
  struct econn *ec = calloc(1, sizeof(*ec));
  struct bufferevent *bev =
      ssl != NULL && ec != NULL
          ? bufferevent_openssl_socket_new(evconnlistener_get_base(lis), fd, ssl,
                                           BUFFEREVENT_SSL_ACCEPTING,
                                           BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
          : NULL;
  if (bev == NULL) {
    SSL_free(ssl);
    free(ec);
    evutil_closesocket(fd);
    return;
  }
  ec->bev = bev;
  bufferevent_setcb(bev, on_read, NULL, on_event, ec);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void
child_main(const struct kmsd_config *cfg, int wfd)
{
  uint32_t port = 0;
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  SSL_CTX *ctx = echo_ctx(cfg);
  struct event_base *base = event_base_new();
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct evconnlistener *lis =
      ctx != NULL && base != NULL
          ? evconnlistener_new_bind(base, on_accept, ctx,
                                    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 512,
                                    (struct sockaddr *)&sa, sizeof(sa))
          : NULL;
  if (lis != NULL) {
    struct sockaddr_in got;
    socklen_t gl = sizeof(got);
    getsockname(evconnlistener_get_fd(lis), (struct sockaddr *)&got, &gl);
    port = ntohs(got.sin_port);
  }
  if (write(wfd, &port, sizeof(port)) != (ssize_t)sizeof(port) || port == 0) {
    _exit(1);
  }
  close(wfd);
  event_base_dispatch(base);
  _exit(0);
}

int
echo_server_start(const struct kmsd_config *cfg, pid_t *out_pid, unsigned *out_port,
                  char *err, size_t err_len)
{
  int pfd[2];
  if (pipe(pfd) != 0) {
    snprintf(err, err_len, "pipe failed");
    return -1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(err, err_len, "fork failed");
    close(pfd[0]);
    close(pfd[1]);
    return -1;
  }
  if (pid == 0) {
    close(pfd[0]);
    child_main(cfg, pfd[1]);
  }
  close(pfd[1]);
  uint32_t port = 0;
  ssize_t n = read(pfd[0], &port, sizeof(port));
  close(pfd[0]);
  if (n != (ssize_t)sizeof(port) || port == 0) {
    snprintf(err, err_len, "TLS echo server did not start (certificates in the kmsd config?)");
    echo_server_stop(pid);
    return -1;
  }
  *out_pid = pid;
  *out_port = port;
  return 0;
}

void
echo_server_stop(pid_t pid)
{
  if (pid <= 0) {
    return;
  }
  kill(pid, SIGTERM);
  int st;
  waitpid(pid, &st, 0);
}
