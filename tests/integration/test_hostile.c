/* Integration tests: hostile clients (idle, half-open, slow-loris, flooding, too many) never starve a good one. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include "harness.h"
#include "kms.pb-c.h"
#include "kms_frame.h"
#include "tenantkey.h"

/*
 * Every attacker comes from its own loopback address (127.0.0.2 and up), the
 * good client from 127.0.0.1, so the per-peer limit can be shown too. The
 * limits are small so that the test reaches them quickly.
 */
#define MAX_PER_PEER 150
#define MAX_HANDSHAKES 24
#define RATE 100
#define BURST 200
#define EXTRA_CONF                                                                        \
  "log_level = info\nmax_connections = 600\nmax_connections_per_peer = 150\n"             \
  "max_handshakes = 24\nhandshake_timeout_ms = 1000\nframe_timeout_ms = 1000\n"           \
  "idle_timeout_ms = 120000\nrate_limit = 100\nrate_burst = 200\n"

#define RULE(id, who, ops)                                                                 \
  "{\"id\": \"" id "\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/" who \
  "\", \"operations\": [" ops "], \"tenants\": \"all\"}"
#define POLICY                                                                            \
  "{\"version\": 1, \"rules\": [" RULE("good", "recording", "\"GenerateDataKey\", \"Health\"") \
  ", " RULE("flood", "storage", "\"GenerateDataKey\", \"GenerateDataKeyWithoutPlaintext\"")  \
  ", " RULE("officer", "officer", "\"CreateTenant\", \"Health\"") ", "                      \
  RULE("idle", "auditor", "\"Health\"") "]}\n"

#define TRIES 400
#define TRY_PAUSE_MS 25

static int port;

/* A TCP connection to kmsd from 127.0.0.|host|. -1 if the connect itself failed. */
static int
tcp_from(int host)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in src, dst;
  struct timeval tv = {5, 0};
  memset(&src, 0, sizeof(src));
  src.sin_family = AF_INET;
  src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)host);
  memset(&dst, 0, sizeof(dst));
  dst.sin_family = AF_INET;
  dst.sin_port = htons((uint16_t)port);
  dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
      connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0) {
    if (fd >= 0) {
      close(fd);
    }
    return -1;
  }
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  return fd;
}

static SSL_CTX *
client_ctx(const char *name)
{
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  char path[512];
  snprintf(path, sizeof(path), "%s/pki/ca.crt", harness_dir());
  SSL_CTX_load_verify_locations(ctx, path, NULL);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  snprintf(path, sizeof(path), "%s/pki/clients/%s.crt", harness_dir(), name);
  SSL_CTX_use_certificate_chain_file(ctx, path);
  snprintf(path, sizeof(path), "%s/pki/clients/%s.key", harness_dir(), name);
  SSL_CTX_use_PrivateKey_file(ctx, path, SSL_FILETYPE_PEM);
  return ctx;
}

/*
 * A mutual-TLS connection as |name| from 127.0.0.|host|, checked to be alive
 * with a Health round trip when |name| may ask for it. NULL if refused.
 */
static SSL *
tls_from(SSL_CTX *ctx, int host)
{
  int fd = tcp_from(host);
  if (fd < 0) {
    return NULL;
  }
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) != 1) {
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return NULL;
  }
  return ssl;
}

static void
tls_close(SSL *ssl)
{
  if (ssl != NULL) {
    int fd = SSL_get_fd(ssl);
    SSL_free(ssl);
    close(fd);
  }
}

static size_t
pack(const Tkms__Request *req, uint8_t *out)
{
  size_t n = tkms__request__get_packed_size(req);
  kms_frame_put_header(out, (uint32_t)n);
  tkms__request__pack(req, out + KMS_FRAME_HDR_LEN);
  return KMS_FRAME_HDR_LEN + n;
}

static int
write_all(SSL *ssl, const uint8_t *p, size_t n)
{
  while (n > 0) {
    int w = SSL_write(ssl, p, (int)n);
    if (w <= 0) {
      ERR_clear_error();
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* 1 if a Health request on |ssl| is answered OK (the connection is alive and authenticated). */
static int
health_ok(SSL *ssl)
{
  Tkms__Request req;
  Tkms__HealthRequest h;
  uint8_t buf[64];
  size_t len = 0;
  tkms__request__init(&req);
  tkms__health_request__init(&h);
  req.request_id = 7;
  req.op_case = TKMS__REQUEST__OP_HEALTH;
  req.health = &h;
  if (write_all(ssl, buf, pack(&req, buf)) != 0) {
    return 0;
  }
  uint8_t *p = harness_raw_read_frame(ssl, &len);
  Tkms__Response *r = p != NULL ? tkms__response__unpack(NULL, len, p) : NULL;
  int ok = r != NULL && r->status == TKMS__STATUS_CODE__OK;
  tkms__response__free_unpacked(r, NULL);
  free(p);
  return ok;
}

static tk_client *
good_client(void)
{
  tk_client *c = NULL;
  char err[256];
  const char *path = harness_client_conf("clients", "recording");
  ck_assert_msg(tk_client_new_from_file(&c, path, err, sizeof(err)) == TK_OK, "%s", err);
  return c;
}

static void
create_tenant(const char *t)
{
  tk_client *o = harness_client("officer");
  uint32_t v = 0;
  ck_assert_ptr_nonnull(o);
  int r = tk_tenant_create(o, &v, t);
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create: %s", tk_strerror(r));
  tk_client_free(o);
}

static char *
read_log(void)
{
  char path[512];
  snprintf(path, sizeof(path), "%s/kmsd.log", harness_dir());
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = calloc(1, (size_t)n + 1);
  buf[fread(buf, 1, (size_t)n, f)] = '\0';
  fclose(f);
  return buf;
}

static int
log_has(const char *needle)
{
  char *log = read_log();
  int found = strstr(log, needle) != NULL;
  free(log);
  return found;
}

/* ---- The flooding client: pipelined data-key requests as fast as kmsd takes them ---- */

#define OK_IDS_MAX 100000

struct flood {
  pthread_t thread;
  atomic_int stop;
  atomic_long ok, exhausted, other, sent;
  uint64_t first_id;
  uint64_t *ok_ids; /* if not NULL: the ids answered OK (at most OK_IDS_MAX) */
  size_t n_ok_ids;
};

static void *
flood_main(void *arg)
{
  struct flood *f = arg;
  SSL_CTX *ctx = client_ctx("storage");
  SSL *ssl = tls_from(ctx, 5);
  enum { BATCH = 32 };
  uint8_t buf[BATCH * 64];
  uint64_t id = f->first_id > 0 ? f->first_id : 1;
  while (ssl != NULL && !atomic_load(&f->stop)) {
    size_t off = 0;
    for (int i = 0; i < BATCH; i++) {
      Tkms__Request req;
      Tkms__GenerateDataKeyRequest g;
      tkms__request__init(&req);
      tkms__generate_data_key_request__init(&g);
      g.tenant_id = "hostile";
      g.without_plaintext = 1;
      req.request_id = id++;
      req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
      req.generate_data_key = &g;
      off += pack(&req, buf + off);
    }
    if (write_all(ssl, buf, off) != 0) {
      break;
    }
    atomic_fetch_add(&f->sent, BATCH);
    for (int i = 0; i < BATCH; i++) {
      size_t len = 0;
      uint8_t *p = harness_raw_read_frame(ssl, &len);
      Tkms__Response *r = p != NULL ? tkms__response__unpack(NULL, len, p) : NULL;
      free(p);
      if (r == NULL) {
        atomic_store(&f->stop, 1);
        break;
      }
      if (r->status == TKMS__STATUS_CODE__OK) {
        atomic_fetch_add(&f->ok, 1);
        if (f->ok_ids != NULL && f->n_ok_ids < OK_IDS_MAX) {
          f->ok_ids[f->n_ok_ids++] = r->request_id;
        }
      } else if (r->status == TKMS__STATUS_CODE__RESOURCE_EXHAUSTED) {
        atomic_fetch_add(&f->exhausted, 1);
      } else {
        atomic_fetch_add(&f->other, 1);
      }
      tkms__response__free_unpacked(r, NULL);
    }
  }
  tls_close(ssl);
  SSL_CTX_free(ctx);
  return NULL;
}

/* ---- The slow-loris client: a frame begun and never finished, one byte at a time ---- */

struct loris {
  pthread_t thread;
  atomic_int closed_by_kmsd; /* kmsd closed it before the frame was complete */
  atomic_int done;
};

static void *
loris_main(void *arg)
{
  struct loris *l = arg;
  SSL_CTX *ctx = client_ctx("officer");
  SSL *ssl = tls_from(ctx, 4);
  /* Announces 200 bytes; sends one every 100 ms: 20 s for the frame if nobody stopped it. */
  uint8_t hdr[KMS_FRAME_HDR_LEN];
  kms_frame_put_header(hdr, 200);
  if (ssl != NULL && write_all(ssl, hdr, sizeof(hdr)) == 0) {
    for (int i = 0; i < 200; i++) {
      uint8_t b = 0x0a;
      harness_pause_ms(100);
      if (write_all(ssl, &b, 1) != 0) {
        atomic_store(&l->closed_by_kmsd, 1);
        break;
      }
      /* kmsd's close shows on a read as well: peek without blocking. */
      char c;
      int n = recv(SSL_get_fd(ssl), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        atomic_store(&l->closed_by_kmsd, 1);
        break;
      }
    }
  }
  tls_close(ssl);
  SSL_CTX_free(ctx);
  atomic_store(&l->done, 1);
  return NULL;
}

START_TEST(test_idle_halfopen_slowloris_and_flood_do_not_starve_a_good_client)
{
  create_tenant("hostile");
  create_tenant("good");
  /* The good client is connected before the attack, as services keep their connections. */
  tk_client *good = good_client();
  tk_data_key *k = NULL;
  ck_assert_int_eq(tk_data_key_generate(good, &k, "good", NULL, 1), TK_OK);
  tk_data_key_free(k);

  /* 100 idle, authenticated connections (127.0.0.3). */
  enum { IDLE = 100, HALF_OPEN = 100 };
  SSL_CTX *idle_ctx = client_ctx("auditor");
  SSL *idle[IDLE];
  int idle_up = 0;
  for (int i = 0; i < IDLE; i++) {
    idle[i] = tls_from(idle_ctx, 3);
    idle_up += idle[i] != NULL;
  }
  ck_assert_int_eq(idle_up, IDLE);
  /* 100 half-open connections (127.0.0.2): TCP only, never a ClientHello. */
  int half[HALF_OPEN];
  for (int i = 0; i < HALF_OPEN; i++) {
    half[i] = tcp_from(2);
  }
  struct flood fl;
  struct loris lo;
  memset(&fl, 0, sizeof(fl));
  memset(&lo, 0, sizeof(lo));
  ck_assert_int_eq(pthread_create(&fl.thread, NULL, flood_main, &fl), 0);
  ck_assert_int_eq(pthread_create(&lo.thread, NULL, loris_main, &lo), 0);
  /* The flood gets going before the good client asks. */
  for (int i = 0; i < TRIES && atomic_load(&fl.sent) < 2 * BURST; i++) {
    harness_pause_ms(TRY_PAUSE_MS);
  }

  /* A new client can still connect while the half-open connections hold their slots. */
  tk_client *fresh = good_client();
  k = NULL;
  int fr = tk_data_key_generate(fresh, &k, "good", NULL, 1);
  ck_assert_msg(fr == TK_OK, "a new client during the attack: %s", tk_strerror(fr));
  tk_data_key_free(k);
  tk_client_free(fresh);
  /* All at once now: the good client's requests succeed within its own timeout. */
  for (int i = 0; i < 30; i++) {
    k = NULL;
    int r = tk_data_key_generate(good, &k, "good", NULL, 1);
    ck_assert_msg(r == TK_OK, "good client, request %d: %s", i, tk_strerror(r));
    tk_data_key_free(k);
    harness_pause_ms(20);
  }
  /* The slow-loris connection is cut before its frame is complete. */
  for (int i = 0; i < TRIES * 2 && !atomic_load(&lo.done); i++) {
    harness_pause_ms(TRY_PAUSE_MS);
  }
  ck_assert_msg(atomic_load(&lo.closed_by_kmsd), "kmsd let a slow-loris frame trickle on");
  atomic_store(&fl.stop, 1);
  pthread_join(fl.thread, NULL);
  pthread_join(lo.thread, NULL);
  ck_assert_msg(atomic_load(&fl.exhausted) > 0, "the flood was never rate limited (ok %ld)",
                atomic_load(&fl.ok));
  ck_assert_msg(atomic_load(&fl.other) == 0, "the flood got errors other than the rate limit");
  /* Half-open connections met their own limit, and the handshake deadline. */
  ck_assert(log_has("reason=max_handshakes_per_peer"));
  ck_assert(log_has("stage=handshake"));
  ck_assert(log_has("stage=frame"));
  /* The idle connections are still there and still answer. */
  int alive = 0;
  for (int i = 0; i < IDLE; i++) {
    alive += health_ok(idle[i]);
    tls_close(idle[i]);
  }
  ck_assert_int_eq(alive, IDLE);
  for (int i = 0; i < HALF_OPEN; i++) {
    if (half[i] >= 0) {
      close(half[i]);
    }
  }
  SSL_CTX_free(idle_ctx);
  tk_client_free(good);
  ck_assert(harness_kmsd_alive());
}
END_TEST

/* One address gets max_connections_per_peer connections, no more; others still connect. */
START_TEST(test_connections_per_peer_are_limited)
{
  SSL_CTX *ctx = client_ctx("auditor");
  SSL *conns[MAX_PER_PEER + 1];
  int up = 0;
  for (int i = 0; i < MAX_PER_PEER; i++) {
    conns[i] = tls_from(ctx, 6);
    up += conns[i] != NULL && health_ok(conns[i]);
  }
  ck_assert_int_eq(up, MAX_PER_PEER);
  /* The next one from the same address is closed at once (TLS 1.3: seen on the first read). */
  conns[MAX_PER_PEER] = tls_from(ctx, 6);
  ck_assert(conns[MAX_PER_PEER] == NULL || !health_ok(conns[MAX_PER_PEER]));
  /* Another address is not affected. */
  SSL *other = tls_from(ctx, 7);
  ck_assert_ptr_nonnull(other);
  ck_assert(health_ok(other));
  tls_close(other);
  for (int i = 0; i <= MAX_PER_PEER; i++) {
    tls_close(conns[i]);
  }
  /* Closing gives the slots back. */
  SSL *again = NULL;
  for (int i = 0; i < TRIES && again == NULL; i++) {
    again = tls_from(ctx, 6);
    if (again != NULL && !health_ok(again)) {
      tls_close(again);
      again = NULL;
      harness_pause_ms(TRY_PAUSE_MS);
    }
  }
  ck_assert_ptr_nonnull(again);
  tls_close(again);
  SSL_CTX_free(ctx);
  ck_assert(log_has("reason=max_connections_per_peer"));
}
END_TEST

/*
 * The handshake deadline counts from accept: a ClientHello dribbled one byte
 * every 50 ms (inactivity never exceeds the 1 s limit) is cut off long before
 * its last byte.
 */
START_TEST(test_handshake_deadline_is_absolute)
{
  SSL_CTX *ctx = client_ctx("recording");
  SSL *ssl = SSL_new(ctx);
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, rb, wb);
  ck_assert_int_ne(SSL_connect(ssl), 1); /* wants to read: the hello is in |wb| */
  ERR_clear_error();
  char *hello = NULL;
  long n = BIO_get_mem_data(wb, &hello);
  ck_assert_int_gt(n, 100);
  int fd = tcp_from(8);
  ck_assert_int_ge(fd, 0);
  int cut = 0;
  long sent = 0;
  for (; sent < n && !cut; sent++) {
    if (send(fd, hello + sent, 1, MSG_NOSIGNAL) != 1) {
      cut = 1;
      break;
    }
    harness_pause_ms(50);
    char c;
    int got = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      cut = 1;
    }
  }
  ck_assert_msg(cut, "kmsd waited for the whole dribbled ClientHello (%ld bytes)", n);
  ck_assert_int_lt(sent, n);
  close(fd);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
}
END_TEST

/* A policy that fails to load on SIGHUP leaves the old one in force; kmsd keeps serving. */
START_TEST(test_bad_reload_keeps_the_old_state)
{
  harness_write_file("it-policy/hostile.json", "{\"version\": 1, \"rules\": [ {\"id\": ");
  char *log = harness_sighup();
  ck_assert_ptr_nonnull(strstr(log, "event=policy_reload_failed"));
  free(log);
  tk_client *good = good_client();
  tk_data_key *k = NULL;
  ck_assert_int_eq(tk_data_key_generate(good, &k, "good", NULL, 1), TK_OK);
  tk_data_key_free(k);
  tk_client_free(good);
  harness_write_file("it-policy/hostile.json", POLICY);
  log = harness_sighup();
  ck_assert_ptr_null(strstr(log, "event=policy_reload_failed"));
  free(log);
}
END_TEST

/* All audit-*.jsonl files of kmsd's audit directory, concatenated (malloc'd). */
static char *
read_audit(void)
{
  char dirpath[512];
  snprintf(dirpath, sizeof(dirpath), "%s/audit", harness_dir());
  DIR *d = opendir(dirpath);
  ck_assert_ptr_nonnull(d);
  size_t len = 0, cap = 1 << 20;
  char *all = malloc(cap);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "audit-", 6) != 0) {
      continue;
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dirpath, e->d_name);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    size_t n;
    char chunk[65536];
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
      if (len + n + 1 > cap) {
        cap = 2 * (len + n + 1);
        all = realloc(all, cap);
        ck_assert_ptr_nonnull(all);
      }
      memcpy(all + len, chunk, n);
      len += n;
    }
    fclose(f);
  }
  closedir(d);
  all[len] = '\0';
  return all;
}

/*
 * SIGTERM while a client floods: kmsd drains and exits 0, and every request it
 * acknowledged (answered OK) has its record in the audit log.
 */
START_TEST(test_sigterm_under_load_keeps_every_acknowledged_record)
{
  struct flood fl;
  memset(&fl, 0, sizeof(fl));
  fl.first_id = 50000000; /* apart from the ids of the earlier flood, same principal */
  fl.ok_ids = calloc(OK_IDS_MAX, sizeof(*fl.ok_ids));
  ck_assert_ptr_nonnull(fl.ok_ids);
  ck_assert_int_eq(pthread_create(&fl.thread, NULL, flood_main, &fl), 0);
  for (int i = 0; i < TRIES && atomic_load(&fl.ok) < 50; i++) {
    harness_pause_ms(TRY_PAUSE_MS);
  }
  ck_assert_int_ge(atomic_load(&fl.ok), 50);
  ck_assert_int_eq(harness_stop_kmsd(), 0); /* SIGTERM with the flood still running */
  atomic_store(&fl.stop, 1);
  pthread_join(fl.thread, NULL);
  char *audit = read_audit();
  for (size_t i = 0; i < fl.n_ok_ids; i++) {
    char needle[160];
    snprintf(needle, sizeof(needle),
             "\"request_id\":%llu,\"principal\":\"spiffe://tenantkms.dev/storage\"",
             (unsigned long long)fl.ok_ids[i]);
    ck_assert_msg(strstr(audit, needle) != NULL, "acknowledged request %llu has no audit record",
                  (unsigned long long)fl.ok_ids[i]);
  }
  free(audit);
  free(fl.ok_ids);
  port = harness_start_kmsd();
}
END_TEST

/*
 * Started as root with `user = nobody`, kmsd opens what needs root, then runs
 * as nobody for good; the files it needs later belong to that user. Runs last:
 * it restarts kmsd.
 */
START_TEST(test_started_as_root_runs_as_the_configured_user)
{
  if (geteuid() != 0) {
    return; /* nothing to drop */
  }
  ck_assert_int_eq(harness_stop_kmsd(), 0);
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "chown -R nobody:nogroup '%s'", harness_dir());
  ck_assert_int_eq(system(cmd), 0);
  harness_append_conf("user = nobody");
  port = harness_start_kmsd();
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", harness_kmsd_pid());
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  int uid_ok = 0, gid_ok = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    unsigned a, b, c, d;
    if (sscanf(line, "Uid: %u %u %u %u", &a, &b, &c, &d) == 4) {
      uid_ok = a == 65534 && b == 65534 && c == 65534 && d == 65534;
    }
    if (sscanf(line, "Gid: %u %u %u %u", &a, &b, &c, &d) == 4) {
      gid_ok = a != 0 && b != 0 && c != 0 && d != 0;
    }
  }
  fclose(f);
  ck_assert_msg(uid_ok, "kmsd's real, effective, saved and fs uid are not all nobody");
  ck_assert_msg(gid_ok, "kmsd kept a root group id");
  ck_assert(log_has("event=privileges_dropped user=nobody"));
  /* Still a working key service. */
  tk_client *good = good_client();
  tk_data_key *k = NULL;
  ck_assert_int_eq(tk_data_key_generate(good, &k, "good", NULL, 1), TK_OK);
  tk_data_key_free(k);
  tk_client_free(good);
}
END_TEST

static Suite *
hostile_suite(void)
{
  Suite *s = suite_create("hostile");
  TCase *t = tcase_create("limits");
  tcase_set_timeout(t, 180);
  tcase_add_test(t, test_idle_halfopen_slowloris_and_flood_do_not_starve_a_good_client);
  tcase_add_test(t, test_connections_per_peer_are_limited);
  tcase_add_test(t, test_handshake_deadline_is_absolute);
  tcase_add_test(t, test_bad_reload_keeps_the_old_state);
  tcase_add_test(t, test_sigterm_under_load_keeps_every_acknowledged_record);
  tcase_add_test(t, test_started_as_root_runs_as_the_configured_user);
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  signal(SIGPIPE, SIG_IGN);
  harness_setup(EXTRA_CONF);
  harness_write_file("it-policy/hostile.json", POLICY);
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/it-policy", harness_dir());
  harness_append_conf(line);
  port = harness_start_kmsd();
  SRunner *sr = srunner_create(hostile_suite());
  srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return harness_finish(failed);
}
