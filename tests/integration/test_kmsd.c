/* Integration tests: the real kmsd, a real SoftHSM2 token, real mutual TLS. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "harness.h"
#include "hsm.h"
#include "keystore.h"
#include "kms.pb-c.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "p11_probe.h"
#include "tenantkey.h"

/* kmsd runs with a tiny per-version use budget so forced rotation is exercised. */
#define TEST_KEK_MAX_USES 24

/*
 * The policy of these tests (docs/POLICY.md): recording and storage may use
 * data keys with or without plaintext and decrypt, with no context conditions;
 * the officer creates tenants; these four may ask for Health. Everything else
 * is denied.
 */
#define SVC_RULE(id, who)                                                                     \
  "{\"id\": \"" id "\", \"effect\": \"allow\", "                                            \
  "\"principal\": \"spiffe://tenantkms.dev/" who "\", "                                      \
  "\"operations\": [\"GenerateDataKey\", \"GenerateDataKeyWithoutPlaintext\", \"Decrypt\", " \
  "\"Health\"], \"tenants\": \"all\"}"
#define KMSD_TEST_POLICY                                                                     \
  "{\"version\": 1, \"rules\": [" SVC_RULE("recording", "recording") ", "                    \
  SVC_RULE("storage", "storage") ", "                                                       \
  "{\"id\": \"officer\", \"effect\": \"allow\", "                                             \
  "\"principal\": \"spiffe://tenantkms.dev/officer\", "                                      \
  "\"operations\": [\"CreateTenant\", \"Health\"], \"tenants\": \"all\"}, "                   \
  "{\"id\": \"auditor\", \"effect\": \"allow\", "                                             \
  "\"principal\": \"spiffe://tenantkms.dev/auditor\", \"operations\": [\"Health\"], "          \
  "\"tenants\": \"all\"}]}\n"

static tk_client *officer, *recording, *storage;

static void
create_tenant(const char *t)
{
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, t);
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create %s: %s", t, tk_strerror(r));
}

static tk_context *
ctx_of(const char *k1, const char *v1, const char *k2, const char *v2)
{
  tk_context *c = tk_context_new();
  ck_assert_ptr_nonnull(c);
  if (k1 != NULL) {
    ck_assert_int_eq(tk_context_add(c, k1, v1), TK_OK);
  }
  if (k2 != NULL) {
    ck_assert_int_eq(tk_context_add(c, k2, v2), TK_OK);
  }
  return c;
}

/* A service that still works: proof that kmsd survived whatever a test threw at it. */
static void
assert_still_serving(void)
{
  ck_assert_msg(harness_kmsd_alive(), "kmsd died");
  tk_client *c = harness_client("storage");
  tk_data_key *k = NULL;
  create_tenant("alive");
  ck_assert_int_eq(tk_data_key_generate(c, &k, "alive", NULL, 0), TK_OK);
  tk_data_key_free(k);
  tk_client_free(c);
}

/* ---- Data keys ------------------------------------------------------------ */

START_TEST(test_generate_then_decrypt_returns_the_same_key)
{
  create_tenant("acme");
  tk_context *ctx = ctx_of("session_id", "s-42", "purpose", "recording");
  tk_data_key *gen = NULL, *dec = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &gen, "acme", ctx, 1), TK_OK);
  size_t pl = 0, wl = 0, dl = 0;
  const uint8_t *pt = tk_data_key_plaintext(gen, &pl);
  const uint8_t *w = tk_data_key_wrapped(gen, &wl);
  ck_assert_uint_eq(pl, 32);
  ck_assert_uint_eq(wl, 65);
  ck_assert_uint_ge(tk_data_key_kek_version(gen), 1);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", ctx, w, wl), TK_OK);
  const uint8_t *dpt = tk_data_key_plaintext(dec, &dl);
  ck_assert_uint_eq(dl, 32);
  ck_assert_mem_eq(pt, dpt, 32);
  ck_assert_uint_eq(tk_data_key_kek_version(dec), tk_data_key_kek_version(gen));
  tk_data_key_free(gen);
  tk_data_key_free(dec);
  tk_context_free(ctx);
}
END_TEST

START_TEST(test_two_data_keys_differ)
{
  create_tenant("acme");
  tk_data_key *a = NULL, *b = NULL;
  size_t l;
  ck_assert_int_eq(tk_data_key_generate(recording, &a, "acme", NULL, 1), TK_OK);
  ck_assert_int_eq(tk_data_key_generate(recording, &b, "acme", NULL, 1), TK_OK);
  ck_assert_int_ne(memcmp(tk_data_key_plaintext(a, &l), tk_data_key_plaintext(b, &l), 32), 0);
  ck_assert_int_ne(memcmp(tk_data_key_wrapped(a, &l), tk_data_key_wrapped(b, &l), 65), 0);
  tk_data_key_free(a);
  tk_data_key_free(b);
}
END_TEST

START_TEST(test_generate_without_plaintext_returns_only_the_blob)
{
  create_tenant("acme");
  tk_data_key *gen = NULL, *dec = NULL;
  ck_assert_int_eq(tk_data_key_generate(storage, &gen, "acme", NULL, 0), TK_OK);
  size_t pl = 99, wl = 0, dl = 0;
  ck_assert_ptr_null(tk_data_key_plaintext(gen, &pl));
  ck_assert_uint_eq(pl, 0);
  const uint8_t *w = tk_data_key_wrapped(gen, &wl);
  ck_assert_uint_eq(wl, 65);
  /* The blob is a real data key: it decrypts to 32 bytes. */
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", NULL, w, wl), TK_OK);
  ck_assert_ptr_nonnull(tk_data_key_plaintext(dec, &dl));
  ck_assert_uint_eq(dl, 32);
  tk_data_key_free(gen);
  tk_data_key_free(dec);
}
END_TEST

START_TEST(test_blob_of_another_tenant_is_refused)
{
  create_tenant("tenant-a");
  create_tenant("tenant-b");
  tk_data_key *gen = NULL, *dec = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &gen, "tenant-a", NULL, 1), TK_OK);
  size_t wl;
  const uint8_t *w = tk_data_key_wrapped(gen, &wl);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "tenant-b", NULL, w, wl), TK_EDECRYPT);
  ck_assert_ptr_null(dec);
  tk_data_key_free(gen);
}
END_TEST

START_TEST(test_changed_context_is_refused)
{
  create_tenant("acme");
  tk_context *ctx = ctx_of("session_id", "s-1", NULL, NULL);
  tk_context *other = ctx_of("session_id", "s-2", NULL, NULL);
  tk_context *more = ctx_of("session_id", "s-1", "purpose", "report");
  tk_data_key *gen = NULL, *dec = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &gen, "acme", ctx, 1), TK_OK);
  size_t wl;
  const uint8_t *w = tk_data_key_wrapped(gen, &wl);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", other, w, wl), TK_EDECRYPT);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", more, w, wl), TK_EDECRYPT);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", NULL, w, wl), TK_EDECRYPT);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", ctx, w, wl), TK_OK);
  tk_data_key_free(dec);
  tk_data_key_free(gen);
  tk_context_free(ctx);
  tk_context_free(other);
  tk_context_free(more);
}
END_TEST

START_TEST(test_every_flipped_bit_region_is_refused)
{
  create_tenant("acme");
  tk_data_key *gen = NULL, *dec = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &gen, "acme", NULL, 1), TK_OK);
  size_t wl;
  const uint8_t *w = tk_data_key_wrapped(gen, &wl);
  uint8_t bad[65];
  /* Format byte, version, IV, ciphertext and tag: every byte, one bit each. */
  for (size_t i = 0; i < wl; i++) {
    memcpy(bad, w, wl);
    bad[i] ^= (uint8_t)(1u << (i % 8));
    int r = tk_data_key_decrypt(recording, &dec, "acme", NULL, bad, wl);
    ck_assert_msg(r == TK_EDECRYPT, "byte %zu: %s", i, tk_strerror(r));
    ck_assert_ptr_null(dec);
  }
  /* Truncated and extended blobs. */
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", NULL, w, wl - 1), TK_EDECRYPT);
  memcpy(bad, w, wl);
  uint8_t longer[66];
  memcpy(longer, w, wl);
  longer[65] = 0;
  ck_assert_int_eq(tk_data_key_decrypt(recording, &dec, "acme", NULL, longer, 66), TK_EDECRYPT);
  tk_data_key_free(gen);
}
END_TEST

START_TEST(test_unknown_tenant_is_not_found)
{
  tk_data_key *k = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &k, "no-such-tenant", NULL, 1), TK_ENOTFOUND);
  create_tenant("acme");
  ck_assert_int_eq(tk_data_key_generate(recording, &k, "acme", NULL, 1), TK_OK);
  size_t wl;
  const uint8_t *w = tk_data_key_wrapped(k, &wl);
  tk_data_key *d = NULL;
  ck_assert_int_eq(tk_data_key_decrypt(recording, &d, "no-such-tenant", NULL, w, wl),
                   TK_ENOTFOUND);
  tk_data_key_free(k);
}
END_TEST

START_TEST(test_create_tenant_twice_is_already_exists)
{
  uint32_t v = 0;
  ck_assert_int_eq(tk_tenant_create(officer, &v, "twice"), TK_OK);
  ck_assert_uint_eq(v, 1);
  ck_assert_int_eq(tk_tenant_create(officer, &v, "twice"), TK_EEXIST);
}
END_TEST

/* kmsd runs with KMSD_TEST_POLICY; tests/integration/test_policy.c covers the examples. */
START_TEST(test_policy_denies_what_no_rule_allows)
{
  uint32_t v = 0;
  tk_data_key *k = NULL;
  tk_client *auditor = harness_client("auditor");
  ck_assert_int_eq(tk_tenant_create(recording, &v, "by-recording"), TK_EPERM);
  ck_assert_int_eq(tk_tenant_create(auditor, &v, "by-auditor"), TK_EPERM);
  create_tenant("acme");
  ck_assert_int_eq(tk_data_key_generate(officer, &k, "acme", NULL, 1), TK_EPERM);
  ck_assert_int_eq(tk_data_key_generate(auditor, &k, "acme", NULL, 1), TK_EPERM);
  /* A denial says nothing about existence: same answer for a tenant that doesn't exist. */
  ck_assert_int_eq(tk_data_key_generate(auditor, &k, "no-such-tenant", NULL, 1), TK_EPERM);
  int serving = 0;
  ck_assert_int_eq(tk_health(auditor, &serving), TK_OK);
  ck_assert_int_eq(serving, 1);
  /* The denied creations left nothing behind. */
  ck_assert_int_eq(tk_data_key_generate(recording, &k, "by-recording", NULL, 1), TK_ENOTFOUND);
  tk_client_free(auditor);
}
END_TEST

START_TEST(test_use_limit_forces_rotation_and_old_blobs_still_decrypt)
{
  create_tenant("rotating");
  tk_data_key *first = NULL, *k = NULL, *d = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &first, "rotating", NULL, 1), TK_OK);
  uint32_t v1 = tk_data_key_kek_version(first);
  uint32_t last = v1;
  for (int i = 0; i < TEST_KEK_MAX_USES + 2; i++) {
    ck_assert_int_eq(tk_data_key_generate(recording, &k, "rotating", NULL, 0), TK_OK);
    last = tk_data_key_kek_version(k);
    tk_data_key_free(k);
  }
  ck_assert_uint_gt(last, v1);
  size_t wl, l1, l2;
  const uint8_t *w = tk_data_key_wrapped(first, &wl);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &d, "rotating", NULL, w, wl), TK_OK);
  ck_assert_mem_eq(tk_data_key_plaintext(d, &l1), tk_data_key_plaintext(first, &l2), 32);
  tk_data_key_free(d);
  tk_data_key_free(first);
}
END_TEST

/* ---- Handshake ------------------------------------------------------------- */

static void
assert_client_refused(const char *certdir, const char *name)
{
  tk_client *c = NULL;
  char err[512];
  ck_assert_int_eq(tk_client_new_from_file(&c, harness_client_conf(certdir, name), err,
                                           sizeof(err)),
                   TK_OK);
  int serving = 0;
  int r = tk_health(c, &serving);
  ck_assert_msg(r == TK_ETLS || r == TK_EUNAVAILABLE, "%s/%s: got %s", certdir, name,
                tk_strerror(r));
  tk_client_free(c);
}

START_TEST(test_no_client_certificate_is_refused)
{
  SSL *ssl = harness_raw_connect("clients", NULL);
  if (ssl != NULL) {
    /* TLS 1.3: the refusal shows on the first read. */
    size_t n;
    uint8_t *p = harness_raw_read_frame(ssl, &n);
    ck_assert_ptr_null(p);
    harness_raw_close(ssl);
  }
  assert_still_serving();
}
END_TEST

START_TEST(test_certificate_of_another_ca_is_refused)
{
  assert_client_refused("bad", "foreign");
  assert_still_serving();
}
END_TEST

START_TEST(test_expired_and_not_yet_valid_certificates_are_refused)
{
  assert_client_refused("bad", "expired");
  assert_client_refused("bad", "notyet");
  assert_still_serving();
}
END_TEST

/* ---- Hostile frames --------------------------------------------------------- */

static void
send_bytes(SSL *ssl, const void *p, size_t n)
{
  ck_assert_int_eq(SSL_write(ssl, p, (int)n), (int)n);
}

static Tkms__Response *
read_response(SSL *ssl)
{
  size_t n = 0;
  uint8_t *p = harness_raw_read_frame(ssl, &n);
  if (p == NULL) {
    return NULL;
  }
  Tkms__Response *r = tkms__response__unpack(NULL, n, p);
  free(p);
  return r;
}

static size_t
pack_frame(const Tkms__Request *req, uint8_t *out, size_t cap)
{
  size_t n = protobuf_c_message_get_packed_size(&req->base);
  ck_assert_uint_le(n + 4, cap);
  kms_frame_put_header(out, (uint32_t)n);
  protobuf_c_message_pack(&req->base, out + 4);
  return n + 4;
}

START_TEST(test_oversized_frame_is_refused_before_reading_it)
{
  SSL *ssl = harness_raw_connect("clients", "recording");
  ck_assert_ptr_nonnull(ssl);
  uint8_t hdr[4];
  kms_frame_put_header(hdr, 64u * 1024u * 1024u);
  send_bytes(ssl, hdr, 4);
  Tkms__Response *r = read_response(ssl);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(r->status, TKMS__STATUS_CODE__RESOURCE_EXHAUSTED);
  ck_assert_uint_eq(r->request_id, 0);
  tkms__response__free_unpacked(r, NULL);
  /* And the connection is closed. */
  ck_assert_ptr_null(read_response(ssl));
  harness_raw_close(ssl);
  assert_still_serving();
}
END_TEST

START_TEST(test_random_garbage_gets_an_error_or_a_close)
{
  for (int round = 0; round < 8; round++) {
    SSL *ssl = harness_raw_connect("clients", "recording");
    ck_assert_ptr_nonnull(ssl);
    uint8_t junk[512];
    for (size_t i = 0; i < sizeof(junk); i++) {
      junk[i] = (uint8_t)(rand() & 0xff);
    }
    if (round % 2 == 0) {
      kms_frame_put_header(junk, (uint32_t)(sizeof(junk) - 4)); /* framed garbage */
    }
    send_bytes(ssl, junk, sizeof(junk));
    Tkms__Response *r = read_response(ssl);
    if (r != NULL) {
      ck_assert_int_ne(r->status, TKMS__STATUS_CODE__OK);
      tkms__response__free_unpacked(r, NULL);
    }
    harness_raw_close(ssl);
  }
  assert_still_serving();
}
END_TEST

START_TEST(test_truncated_frame_then_close_changes_nothing)
{
  SSL *ssl = harness_raw_connect("clients", "officer");
  ck_assert_ptr_nonnull(ssl);
  Tkms__Request req;
  Tkms__CreateTenantRequest ct;
  tkms__request__init(&req);
  tkms__create_tenant_request__init(&ct);
  ct.tenant_id = "truncated-tenant";
  req.request_id = 7;
  req.op_case = TKMS__REQUEST__OP_CREATE_TENANT;
  req.create_tenant = &ct;
  uint8_t buf[256];
  size_t n = pack_frame(&req, buf, sizeof(buf));
  send_bytes(ssl, buf, n - 3); /* all but the last three bytes */
  harness_raw_close(ssl);
  /* The cut-off request never ran: the tenant can still be created once. */
  uint32_t v = 0;
  ck_assert_int_eq(tk_tenant_create(officer, &v, "truncated-tenant"), TK_OK);
  assert_still_serving();
}
END_TEST

START_TEST(test_unknown_method_is_unimplemented_and_connection_stays)
{
  SSL *ssl = harness_raw_connect("clients", "recording");
  ck_assert_ptr_nonnull(ssl);
  /* request_id = 5 (field 1, varint), then field 99 (length-delimited, empty). */
  const uint8_t payload[] = {0x08, 0x05, 0x9a, 0x06, 0x00};
  uint8_t frame[4 + sizeof(payload)];
  kms_frame_put_header(frame, sizeof(payload));
  memcpy(frame + 4, payload, sizeof(payload));
  send_bytes(ssl, frame, sizeof(frame));
  Tkms__Response *r = read_response(ssl);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(r->status, TKMS__STATUS_CODE__UNIMPLEMENTED);
  ck_assert_uint_eq(r->request_id, 5);
  tkms__response__free_unpacked(r, NULL);
  /* Same connection, a valid request. */
  Tkms__Request req;
  Tkms__HealthRequest h;
  tkms__request__init(&req);
  tkms__health_request__init(&h);
  req.request_id = 6;
  req.op_case = TKMS__REQUEST__OP_HEALTH;
  req.health = &h;
  uint8_t buf[64];
  size_t n = pack_frame(&req, buf, sizeof(buf));
  send_bytes(ssl, buf, n);
  r = read_response(ssl);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(r->status, TKMS__STATUS_CODE__OK);
  ck_assert_uint_eq(r->request_id, 6);
  tkms__response__free_unpacked(r, NULL);
  harness_raw_close(ssl);
}
END_TEST

START_TEST(test_invalid_fields_are_invalid_argument_and_change_nothing)
{
  SSL *ssl = harness_raw_connect("clients", "officer");
  ck_assert_ptr_nonnull(ssl);
  Tkms__Request req;
  Tkms__CreateTenantRequest ct;
  tkms__request__init(&req);
  tkms__create_tenant_request__init(&ct);
  ct.tenant_id = "has space";
  req.request_id = 11;
  req.op_case = TKMS__REQUEST__OP_CREATE_TENANT;
  req.create_tenant = &ct;
  uint8_t buf[256];
  size_t n = pack_frame(&req, buf, sizeof(buf));
  send_bytes(ssl, buf, n);
  Tkms__Response *r = read_response(ssl);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(r->status, TKMS__STATUS_CODE__INVALID_ARGUMENT);
  ck_assert_uint_eq(r->request_id, 11);
  ck_assert_ptr_nonnull(strstr(r->message, "tenant_id"));
  tkms__response__free_unpacked(r, NULL);
  harness_raw_close(ssl);
}
END_TEST

START_TEST(test_pipelined_requests_all_answered_with_their_ids)
{
  create_tenant("acme");
  SSL *ssl = harness_raw_connect("clients", "recording");
  ck_assert_ptr_nonnull(ssl);
  enum { N = 40 };
  uint8_t buf[N * 64];
  size_t off = 0;
  for (int i = 0; i < N; i++) {
    Tkms__Request req;
    Tkms__GenerateDataKeyRequest g;
    tkms__request__init(&req);
    tkms__generate_data_key_request__init(&g);
    g.tenant_id = "acme";
    g.without_plaintext = 1;
    req.request_id = 1000 + (uint64_t)i;
    req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
    req.generate_data_key = &g;
    off += pack_frame(&req, buf + off, sizeof(buf) - off);
  }
  send_bytes(ssl, buf, off); /* all at once, before reading anything */
  int seen[N] = {0};
  for (int i = 0; i < N; i++) {
    Tkms__Response *r = read_response(ssl);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->status, TKMS__STATUS_CODE__OK);
    ck_assert_uint_ge(r->request_id, 1000);
    ck_assert_uint_lt(r->request_id, 1000 + N);
    seen[r->request_id - 1000]++;
    ck_assert_uint_eq(r->generate_data_key->plaintext.len, 0);
    tkms__response__free_unpacked(r, NULL);
  }
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(seen[i], 1);
  }
  harness_raw_close(ssl);
}
END_TEST

START_TEST(test_client_that_never_reads_cannot_stall_others)
{
  create_tenant("acme");
  SSL *ssl = harness_raw_connect("clients", "storage");
  ck_assert_ptr_nonnull(ssl);
  struct timeval tv = {2, 0};
  setsockopt(SSL_get_fd(ssl), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  Tkms__Request req;
  Tkms__GenerateDataKeyRequest g;
  tkms__request__init(&req);
  tkms__generate_data_key_request__init(&g);
  /* Invalid requests are answered on the loop at once: the fastest way to make
   * kmsd produce responses this client never reads. */
  g.tenant_id = "not valid";
  req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
  req.generate_data_key = &g;
  uint8_t buf[64 * 64];
  /* Push requests without reading a single response, until kmsd stops reading. */
  int sent = 0;
  enum { BATCHES = 16000 }; /* ~1M requests, ~100 MB of answers: far beyond socket buffers */
  for (int batch = 0; batch < BATCHES; batch++) {
    size_t off = 0;
    for (int i = 0; i < 64; i++) {
      req.request_id = (uint64_t)(batch * 64 + i + 1);
      off += pack_frame(&req, buf + off, sizeof(buf) - off);
    }
    if (SSL_write(ssl, buf, (int)off) <= 0) {
      break; /* send timeout: kmsd applies back-pressure */
    }
    sent += 64;
  }
  ck_assert_int_gt(sent, 0);
  /* kmsd stopped reading once its output for this peer piled up. */
  ck_assert_int_lt(sent, BATCHES * 64);
  assert_still_serving();
  harness_raw_close(ssl);
  assert_still_serving();
}
END_TEST

/* ---- What is stored --------------------------------------------------------- */

START_TEST(test_root_key_is_sensitive_and_not_extractable)
{
  char pin[512];
  snprintf(pin, sizeof(pin), "%s/hsm/pin", harness_dir());
  struct hsm_config hc = {getenv("PKCS11_MODULE"), "tenantkms", pin, 1, false};
  hsm *h = NULL;
  hsm_session *s = NULL;
  char err[256];
  ck_assert_msg(hsm_open(&h, &hc, err, sizeof(err)) == KMS_OK, "%s", err);
  ck_assert_int_eq(hsm_session_open(h, &s), KMS_OK);
  bool sensitive = false, extractable = true;
  ck_assert_int_eq(hsm_root_attributes(s, &sensitive, &extractable), KMS_OK);
  ck_assert(sensitive);
  ck_assert(!extractable);
  hsm_session_close(s);
  hsm_close(h);
}
END_TEST

START_TEST(test_keystore_holds_only_wrapped_keks_and_no_data_keys)
{
  create_tenant("stored");
  /* Data keys handed out must never be persisted. */
  tk_data_key *k = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &k, "stored", NULL, 1), TK_OK);
  size_t pl;
  uint8_t dek[32];
  memcpy(dek, tk_data_key_plaintext(k, &pl), 32);
  tk_data_key_free(k);

  char url[600], db[512], wal[512], pin[512];
  snprintf(db, sizeof(db), "%s/keystore.db", harness_dir());
  snprintf(wal, sizeof(wal), "%s/keystore.db-wal", harness_dir());
  snprintf(url, sizeof(url), "sqlite:%s", db);
  snprintf(pin, sizeof(pin), "%s/hsm/pin", harness_dir());
  keystore *ks = NULL;
  char err[256];
  ck_assert_msg(keystore_open(&ks, url, err, sizeof(err)) == KMS_OK, "%s", err);
  struct ks_kek kek;
  ck_assert_int_eq(keystore_kek_current(ks, "stored", &kek), KMS_OK);
  keystore_close(ks);

  ck_assert_int_eq(harness_file_contains(db, dek, 32) || harness_file_contains(wal, dek, 32), 0);
  /* The stored token is an RFC 5649 wrap (40 bytes for 32) that the HSM unwraps... */
  ck_assert_uint_eq(kek.token_len, 40);
  uint8_t out[32];
  const char *module = getenv("PKCS11_MODULE");
  ck_assert_int_eq(p11_probe_unwrap_kek(module, "tenantkms", pin, kek.root_version, kek.token, kek.token_len,
                                        kek.wrap_mech, 0, out),
                   0);
  /* ...but even with the PIN nobody can unwrap it into readable bytes, so the
   * KEK's plaintext can exist nowhere outside the HSM, the keystore included. */
  ck_assert_int_eq(p11_probe_unwrap_kek(module, "tenantkms", pin, kek.root_version, kek.token, kek.token_len,
                                        kek.wrap_mech, 1, out),
                   1);
}
END_TEST

START_TEST(test_empty_token_is_refused_once_tenants_exist)
{
  create_tenant("acme");
  /* A second token with the same label and PIN, but without our root key: the
   * wrong HSM, or a wiped one. */
  char d[300], cmd[4096];
  snprintf(d, sizeof(d), "%s/hsm-empty", harness_dir());
  snprintf(cmd, sizeof(cmd),
           "set -e; mkdir -p '%s/tokens'; "
           "printf 'directories.tokendir = %%s/tokens\\nobjectstore.backend = file\\nlog.level = ERROR\\n' "
           "'%s' > '%s/softhsm2.conf'; "
           "SOFTHSM2_CONF='%s/softhsm2.conf' softhsm2-util --init-token --free --label tenantkms "
           "--pin \"$(cat '%s/hsm/pin')\" --so-pin 87654321 >/dev/null",
           d, d, d, d, harness_dir());
  ck_assert_int_eq(system(cmd), 0);
  char conf[700], old[600];
  snprintf(old, sizeof(old), "%s", getenv("SOFTHSM2_CONF"));
  snprintf(conf, sizeof(conf), "%s/softhsm2.conf", d);
  setenv("SOFTHSM2_CONF", conf, 1);
  char out[8192];
  int st = harness_run_kmsd_once("kmsd.conf", out, sizeof(out));
  setenv("SOFTHSM2_CONF", old, 1);
  /* kmsd refuses to start rather than make a new root that orphans every key token. */
  ck_assert_int_ne(st, 0);
  ck_assert_msg(strstr(out, "not found on the token") != NULL, "kmsd said: %s", out);
  /* The running kmsd, on the right token, is unaffected. */
  assert_still_serving();
}
END_TEST

/* ---- Restart ------------------------------------------------------------------ */

START_TEST(test_restart_existing_blobs_still_decrypt)
{
  create_tenant("durable");
  tk_context *ctx = ctx_of("session_id", "s-9", NULL, NULL);
  tk_data_key *gen = NULL, *dec = NULL;
  ck_assert_int_eq(tk_data_key_generate(recording, &gen, "durable", ctx, 1), TK_OK);
  ck_assert_int_eq(harness_stop_kmsd(), 0); /* clean exit (and, under ASan, no leaks) */
  int port = harness_start_kmsd();
  ck_assert_int_gt(port, 0);
  tk_client *c = harness_client("recording");
  size_t wl, l1, l2;
  const uint8_t *w = tk_data_key_wrapped(gen, &wl);
  ck_assert_int_eq(tk_data_key_decrypt(c, &dec, "durable", ctx, w, wl), TK_OK);
  ck_assert_mem_eq(tk_data_key_plaintext(dec, &l1), tk_data_key_plaintext(gen, &l2), 32);
  tk_data_key_free(gen);
  tk_data_key_free(dec);
  tk_context_free(ctx);
  tk_client_free(c);
}
END_TEST

static Suite *
kmsd_suite(void)
{
  Suite *s = suite_create("kmsd");
  TCase *t = tcase_create("datakeys");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_generate_then_decrypt_returns_the_same_key);
  tcase_add_test(t, test_two_data_keys_differ);
  tcase_add_test(t, test_generate_without_plaintext_returns_only_the_blob);
  tcase_add_test(t, test_blob_of_another_tenant_is_refused);
  tcase_add_test(t, test_changed_context_is_refused);
  tcase_add_test(t, test_every_flipped_bit_region_is_refused);
  tcase_add_test(t, test_unknown_tenant_is_not_found);
  tcase_add_test(t, test_create_tenant_twice_is_already_exists);
  tcase_add_test(t, test_policy_denies_what_no_rule_allows);
  tcase_add_test(t, test_use_limit_forces_rotation_and_old_blobs_still_decrypt);
  suite_add_tcase(s, t);

  t = tcase_create("handshake");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_no_client_certificate_is_refused);
  tcase_add_test(t, test_certificate_of_another_ca_is_refused);
  tcase_add_test(t, test_expired_and_not_yet_valid_certificates_are_refused);
  suite_add_tcase(s, t);

  t = tcase_create("hostile");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_oversized_frame_is_refused_before_reading_it);
  tcase_add_test(t, test_random_garbage_gets_an_error_or_a_close);
  tcase_add_test(t, test_truncated_frame_then_close_changes_nothing);
  tcase_add_test(t, test_unknown_method_is_unimplemented_and_connection_stays);
  tcase_add_test(t, test_invalid_fields_are_invalid_argument_and_change_nothing);
  tcase_add_test(t, test_pipelined_requests_all_answered_with_their_ids);
  tcase_add_test(t, test_client_that_never_reads_cannot_stall_others);
  suite_add_tcase(s, t);

  t = tcase_create("storage");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_root_key_is_sensitive_and_not_extractable);
  tcase_add_test(t, test_keystore_holds_only_wrapped_keks_and_no_data_keys);
  tcase_add_test(t, test_empty_token_is_refused_once_tenants_exist);
  tcase_add_test(t, test_restart_existing_blobs_still_decrypt);
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  char extra[128];
  snprintf(extra, sizeof(extra), "kek_max_uses = %d\nlog_level = debug", TEST_KEK_MAX_USES);
  harness_setup(extra);
  harness_write_file("it-policy/kmsd-tests.json", KMSD_TEST_POLICY);
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/it-policy", harness_dir());
  harness_append_conf(line);
  harness_start_kmsd();
  officer = harness_client("officer");
  recording = harness_client("recording");
  storage = harness_client("storage");
  if (officer == NULL || recording == NULL || storage == NULL) {
    harness_stop_kmsd();
    return 99;
  }
  SRunner *sr = srunner_create(kmsd_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* tests share the one kmsd process */
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  tk_client_free(officer);
  tk_client_free(recording);
  tk_client_free(storage);
  return harness_finish(failed);
}
