/* Integration tests of access policy and revocation: the example policies against a real kmsd. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "harness.h"
#include "kms.pb-c.h"
#include "kms_frame.h"

/* ---- Raw requests -------------------------------------------------------------------- */

enum rpc {
  R_HEALTH,
  R_CREATE,
  R_GENERATE,
  R_GENERATE_NP,
  R_DECRYPT,
  R_OPEN_SESSION,
  R_GET_SESSION_KEY,
  R_CLOSE_SESSION,
  R_SHRED_SESSION,
  R_LIST_SESSIONS,
  N_RPC
};
static const char *const rpc_names[N_RPC] = {
    "Health",        "CreateTenant",  "GenerateDataKey", "GenerateDataKey (no plaintext)",
    "Decrypt",       "OpenSession",   "GetSessionKey",   "CloseSession",
    "ShredSession",  "ListSessions"};

/*
 * One request. For data-key RPCs session_id is a context entry (bound into
 * the wrapped key); for session RPCs it is the session the request names.
 * purpose is always an access attribute (docs/POLICY.md): never in the AAD.
 */
struct call {
  enum rpc rpc;
  const char *tenant;
  const char *session_id; /* NULL: none */
  const char *purpose;    /* NULL: no purpose attribute */
  const uint8_t *blob;    /* Decrypt */
  size_t blob_len;
};

struct answer {
  int refused; /* the TLS handshake or connection failed: no answer at all */
  int status;
  char message[160];
  uint8_t wrapped[128];
  size_t wrapped_len;
};

static size_t
build_frame(const struct call *c, uint8_t *out, size_t cap)
{
  Tkms__Request req;
  Tkms__HealthRequest h;
  Tkms__CreateTenantRequest ct;
  Tkms__GenerateDataKeyRequest g;
  Tkms__DecryptRequest d;
  Tkms__OpenSessionRequest os;
  Tkms__GetSessionKeyRequest gs;
  Tkms__CloseSessionRequest cs;
  Tkms__ShredSessionRequest ss;
  Tkms__ListSessionsRequest ls;
  Tkms__ContextEntry ctx_e, attr_e;
  Tkms__ContextEntry *pctx[1] = {&ctx_e}, *pattr[1] = {&attr_e};
  size_t n = 0, n_attr = 0;
  tkms__request__init(&req);
  req.request_id = 42;
  tkms__context_entry__init(&ctx_e);
  tkms__context_entry__init(&attr_e);
  if (c->session_id != NULL) {
    ctx_e.key = "session_id";
    ctx_e.value = (char *)c->session_id;
    n = 1;
  }
  if (c->purpose != NULL) {
    attr_e.key = "purpose";
    attr_e.value = (char *)c->purpose;
    n_attr = 1;
  }
  switch (c->rpc) {
  case R_HEALTH:
    tkms__health_request__init(&h);
    req.op_case = TKMS__REQUEST__OP_HEALTH;
    req.health = &h;
    break;
  case R_CREATE:
    tkms__create_tenant_request__init(&ct);
    ct.tenant_id = (char *)c->tenant;
    req.op_case = TKMS__REQUEST__OP_CREATE_TENANT;
    req.create_tenant = &ct;
    break;
  case R_GENERATE:
  case R_GENERATE_NP:
    tkms__generate_data_key_request__init(&g);
    g.tenant_id = (char *)c->tenant;
    g.without_plaintext = c->rpc == R_GENERATE_NP;
    g.n_context = n;
    g.context = pctx;
    g.n_attributes = n_attr;
    g.attributes = pattr;
    req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
    req.generate_data_key = &g;
    break;
  case R_OPEN_SESSION:
    tkms__open_session_request__init(&os);
    os.tenant_id = (char *)c->tenant;
    os.session_id = (char *)c->session_id;
    os.n_attributes = n_attr;
    os.attributes = pattr;
    req.op_case = TKMS__REQUEST__OP_OPEN_SESSION;
    req.open_session = &os;
    break;
  case R_GET_SESSION_KEY:
    tkms__get_session_key_request__init(&gs);
    gs.tenant_id = (char *)c->tenant;
    gs.session_id = (char *)c->session_id;
    gs.n_attributes = n_attr;
    gs.attributes = pattr;
    req.op_case = TKMS__REQUEST__OP_GET_SESSION_KEY;
    req.get_session_key = &gs;
    break;
  case R_CLOSE_SESSION:
    tkms__close_session_request__init(&cs);
    cs.tenant_id = (char *)c->tenant;
    cs.session_id = (char *)c->session_id;
    req.op_case = TKMS__REQUEST__OP_CLOSE_SESSION;
    req.close_session = &cs;
    break;
  case R_SHRED_SESSION:
    tkms__shred_session_request__init(&ss);
    ss.tenant_id = (char *)c->tenant;
    ss.session_id = (char *)c->session_id;
    req.op_case = TKMS__REQUEST__OP_SHRED_SESSION;
    req.shred_session = &ss;
    break;
  case R_LIST_SESSIONS:
    tkms__list_sessions_request__init(&ls);
    ls.tenant_id = (char *)c->tenant;
    req.op_case = TKMS__REQUEST__OP_LIST_SESSIONS;
    req.list_sessions = &ls;
    break;
  case R_DECRYPT:
  default:
    tkms__decrypt_request__init(&d);
    d.tenant_id = (char *)c->tenant;
    d.wrapped_key.data = (uint8_t *)c->blob;
    d.wrapped_key.len = c->blob_len;
    d.n_context = n;
    d.context = pctx;
    d.n_attributes = n_attr;
    d.attributes = pattr;
    req.op_case = TKMS__REQUEST__OP_DECRYPT;
    req.decrypt = &d;
    break;
  }
  size_t len = protobuf_c_message_get_packed_size(&req.base);
  /* No Check assertions here: main() uses these helpers before the suite runs. */
  if (len + KMS_FRAME_HDR_LEN > cap) {
    abort();
  }
  kms_frame_put_header(out, (uint32_t)len);
  protobuf_c_message_pack(&req.base, out + KMS_FRAME_HDR_LEN);
  return len + KMS_FRAME_HDR_LEN;
}

/* Sends |c| on |ssl| and reads the answer; refused if the connection fails. */
static struct answer
ask_on(SSL *ssl, const struct call *c)
{
  struct answer a;
  uint8_t buf[512];
  memset(&a, 0, sizeof(a));
  size_t n = build_frame(c, buf, sizeof(buf));
  if (ssl == NULL || SSL_write(ssl, buf, (int)n) != (int)n) {
    a.refused = 1;
    return a;
  }
  size_t plen = 0;
  uint8_t *p = harness_raw_read_frame(ssl, &plen);
  if (p == NULL) {
    a.refused = 1; /* TLS 1.3: a refused certificate shows on the first read */
    return a;
  }
  Tkms__Response *r = tkms__response__unpack(NULL, plen, p);
  free(p);
  if (r == NULL) {
    a.status = -1;
    snprintf(a.message, sizeof(a.message), "undecodable response");
    return a;
  }
  a.status = r->status;
  snprintf(a.message, sizeof(a.message), "%s", r->message != NULL ? r->message : "");
  if (r->result_case == TKMS__RESPONSE__RESULT_GENERATE_DATA_KEY &&
      r->generate_data_key->wrapped_key.len <= sizeof(a.wrapped)) {
    a.wrapped_len = r->generate_data_key->wrapped_key.len;
    memcpy(a.wrapped, r->generate_data_key->wrapped_key.data, a.wrapped_len);
  }
  tkms__response__free_unpacked(r, NULL);
  return a;
}

/* One call on a new connection as DIR/pki/|certdir|/|name|. */
static struct answer
ask(const char *certdir, const char *name, const struct call *c)
{
  SSL *ssl = harness_raw_connect(certdir, name);
  struct answer a = ask_on(ssl, c);
  harness_raw_close(ssl);
  return a;
}

static const char *
outcome(const struct answer *a)
{
  if (a->refused) {
    return "refused (TLS)";
  }
  switch (a->status) {
  case TKMS__STATUS_CODE__OK:
    return "OK";
  case TKMS__STATUS_CODE__PERMISSION_DENIED:
    return "PERMISSION_DENIED";
  case TKMS__STATUS_CODE__NOT_FOUND:
    return "NOT_FOUND";
  case TKMS__STATUS_CODE__ALREADY_EXISTS:
    return "ALREADY_EXISTS";
  case TKMS__STATUS_CODE__INVALID_ARGUMENT:
    return "INVALID_ARGUMENT";
  default:
    return "other error";
  }
}

static int
is_ok(const struct answer *a)
{
  return !a->refused && a->status == TKMS__STATUS_CODE__OK;
}

static int
is_denied(const struct answer *a)
{
  return !a->refused && a->status == TKMS__STATUS_CODE__PERMISSION_DENIED &&
         strcmp(a->message, "permission denied") == 0;
}

#define ASSERT_OK(expr)                                                                            \
  do {                                                                                             \
    struct answer a_ = (expr);                                                                     \
    ck_assert_msg(is_ok(&a_), "expected OK, got %s (%s)", outcome(&a_), a_.message);               \
  } while (0)
#define ASSERT_DENIED(expr)                                                                        \
  do {                                                                                             \
    struct answer a_ = (expr);                                                                     \
    ck_assert_msg(is_denied(&a_), "expected PERMISSION_DENIED, got %s (%s)", outcome(&a_),         \
                  a_.message);                                                                     \
  } while (0)
#define ASSERT_REFUSED(expr)                                                                       \
  do {                                                                                             \
    struct answer a_ = (expr);                                                                     \
    ck_assert_msg(a_.refused, "expected a refused handshake, got %s", outcome(&a_));               \
  } while (0)

/* Blobs made at start-up: one per tenant, under the context the matrix uses. */
static uint8_t blob_acme[128], blob_globex[128];
static size_t blob_acme_len, blob_globex_len;
#define SID "s-1"
#define PURPOSE "transcription"

/* Runs before the suite, outside Check's assertions: returns 0 on success. */
static int
make_blob(const char *who, const char *tenant, uint8_t *out, size_t *out_len)
{
  struct call c = {R_GENERATE, tenant, SID, PURPOSE, NULL, 0};
  struct answer a = ask("clients", who, &c);
  if (!is_ok(&a) || a.wrapped_len == 0) {
    fprintf(stderr, "blob for %s as %s: %s %s\n", tenant, who, outcome(&a), a.message);
    return -1;
  }
  memcpy(out, a.wrapped, a.wrapped_len);
  *out_len = a.wrapped_len;
  return 0;
}

/* ---- The matrix ------------------------------------------------------------------------ */

enum col { C_OWN, C_OTHER, C_ALL, C_UNKNOWN, C_REVOKED, N_COL };
static const char *const col_names[N_COL] = {"own tenant", "other tenant", "all-tenant role",
                                             "unknown principal", "revoked cert"};
enum expect { ALLOW, DENY, TLS };

/* For the all-tenant column: the example role that holds the operation for every tenant. */
static const char *const all_tenant_role[N_RPC] = {
    "officer", "officer", "recording", "storage", "ai",
    "recording", "ai", "recording", "officer", "auditor"};

/*
 * The session a matrix cell names: OpenSession needs a new id per cell;
 * ShredSession in the all-tenant column shreds one kept for it; the others
 * use SID, opened in both tenants at start-up.
 */
static const char *
cell_session(int r, int k)
{
  static const char *const open_ids[N_COL] = {"m-open-0", "m-open-1", "m-open-2", "m-open-3",
                                              "m-open-4"};
  if (r == R_OPEN_SESSION) {
    return open_ids[k];
  }
  if (r == R_SHRED_SESSION) {
    return "m-shred";
  }
  return SID;
}

START_TEST(test_matrix_every_rpc_against_every_kind_of_caller)
{
  static const enum expect expected[N_RPC][N_COL] = {
      /*                own    other  all    unknown revoked */
      [R_HEALTH] = {ALLOW, ALLOW, ALLOW, DENY, TLS}, /* Health names no tenant */
      [R_CREATE] = {DENY, DENY, ALLOW, DENY, TLS},
      [R_GENERATE] = {ALLOW, DENY, ALLOW, DENY, TLS},
      [R_GENERATE_NP] = {ALLOW, DENY, ALLOW, DENY, TLS},
      [R_DECRYPT] = {ALLOW, DENY, ALLOW, DENY, TLS},
      /* Sessions: an integration's own tenant only; shredding and listing are officers'. */
      [R_OPEN_SESSION] = {ALLOW, DENY, ALLOW, DENY, TLS},
      [R_GET_SESSION_KEY] = {ALLOW, DENY, ALLOW, DENY, TLS},
      [R_CLOSE_SESSION] = {ALLOW, DENY, ALLOW, DENY, TLS},
      [R_SHRED_SESSION] = {DENY, DENY, ALLOW, DENY, TLS},
      [R_LIST_SESSIONS] = {DENY, DENY, ALLOW, DENY, TLS},
  };
  int bad = 0;
  printf("# %-31s | %-18s | %-18s | %-18s | %-18s | %-18s\n", "RPC", col_names[0], col_names[1],
         col_names[2], col_names[3], col_names[4]);
  for (int r = 0; r < N_RPC; r++) {
    char line[512];
    int off = snprintf(line, sizeof(line), "# %-31s", rpc_names[r]);
    for (int k = 0; k < N_COL; k++) {
      const char *certdir = "clients", *who = "integration-acme", *tenant = "acme";
      const uint8_t *blob = blob_acme;
      size_t blob_len = blob_acme_len;
      switch (k) {
      case C_OTHER:
        tenant = "globex";
        break;
      case C_ALL:
        who = all_tenant_role[r];
        tenant = "globex";
        break;
      case C_UNKNOWN:
        certdir = "bad";
        who = "unlisted";
        break;
      case C_REVOKED:
        certdir = "bad";
        who = "revoked";
        break;
      default:
        break;
      }
      if (strcmp(tenant, "globex") == 0) {
        blob = blob_globex;
        blob_len = blob_globex_len;
      }
      /* Creating a tenant that exists would be ALREADY_EXISTS; a new name is OK. */
      if (r == R_CREATE && k == C_ALL) {
        tenant = "matrix-new";
      }
      struct call c = {(enum rpc)r, tenant, cell_session(r, k), PURPOSE, blob, blob_len};
      struct answer a = ask(certdir, who, &c);
      int match = expected[r][k] == ALLOW  ? is_ok(&a)
                  : expected[r][k] == DENY ? is_denied(&a)
                                           : a.refused;
      bad += !match;
      off += snprintf(line + off, sizeof(line) - (size_t)off, " | %-17s%s", outcome(&a),
                      match ? " " : "!");
    }
    printf("%s\n", line);
  }
  printf("# (! marks a cell that differs from the expected outcome)\n");
  fflush(stdout);
  ck_assert_msg(bad == 0, "%d cells of the matrix differ from the expected outcome", bad);
}
END_TEST

/* ---- IDOR and no oracle -------------------------------------------------------------- */

START_TEST(test_other_tenant_is_denied_exactly_like_a_missing_tenant)
{
  for (int r = R_CREATE; r < N_RPC; r++) {
    struct call other = {(enum rpc)r, "globex", SID, PURPOSE, blob_globex, blob_globex_len};
    struct call missing = {(enum rpc)r, "no-such-tenant", SID,
                           PURPOSE,     blob_globex,      blob_globex_len};
    struct answer a = ask("clients", "integration-acme", &other);
    struct answer b = ask("clients", "integration-acme", &missing);
    ASSERT_DENIED(a);
    ASSERT_DENIED(b);
    ck_assert_int_eq(a.status, b.status);
    ck_assert_str_eq(a.message, b.message);
    /* Nor does an identity without any rule learn which tenants exist. */
    a = ask("bad", "unlisted", &other);
    b = ask("bad", "unlisted", &missing);
    ASSERT_DENIED(a);
    ASSERT_DENIED(b);
    ck_assert_str_eq(a.message, b.message);
  }
  /* Tenant B's blob under tenant A's own id: allowed by policy, refused by the AAD binding. */
  struct call swapped = {R_DECRYPT, "acme", SID, PURPOSE, blob_globex, blob_globex_len};
  struct answer a = ask("clients", "integration-acme", &swapped);
  ck_assert(!a.refused);
  ck_assert_int_ne(a.status, TKMS__STATUS_CODE__OK);
  ck_assert_int_ne(a.status, TKMS__STATUS_CODE__PERMISSION_DENIED);
  /* And acme's own blob decrypts for acme. */
  struct call own = {R_DECRYPT, "acme", SID, PURPOSE, blob_acme, blob_acme_len};
  a = ask("clients", "integration-acme", &own);
  ASSERT_OK(a);
}
END_TEST

/* ---- Context conditions --------------------------------------------------------------- */

START_TEST(test_ai_decrypts_only_for_an_allowed_purpose)
{
  uint8_t blob[128];
  size_t blob_len;
  /*
   * One key, generated for the session only: purpose is an access attribute
   * the AI service states when it decrypts, never part of the AAD, so the
   * same blob is allowed or denied by the policy alone.
   */
  struct call g = {R_GENERATE, "acme", "s-7", NULL, NULL, 0};
  struct answer a = ask("clients", "recording", &g);
  ASSERT_OK(a);
  memcpy(blob, a.wrapped, blob_len = a.wrapped_len);

  struct call d = {R_DECRYPT, "acme", "s-7", "transcription", blob, blob_len};
  ASSERT_OK(ask("clients", "ai", &d));
  d.purpose = "report";
  ASSERT_OK(ask("clients", "ai", &d));
  d.purpose = "marketing";
  ASSERT_DENIED(ask("clients", "ai", &d));
  d.purpose = NULL;
  ASSERT_DENIED(ask("clients", "ai", &d));
  /* Without the session in the context: denied (and it would not authenticate either). */
  d = (struct call){R_DECRYPT, "acme", NULL, "transcription", blob, blob_len};
  ASSERT_DENIED(ask("clients", "ai", &d));
  /* The same purposes govern the session key itself. */
  struct call gs = {R_GET_SESSION_KEY, "acme", SID, "transcription", NULL, 0};
  ASSERT_OK(ask("clients", "ai", &gs));
  gs.purpose = "marketing";
  ASSERT_DENIED(ask("clients", "ai", &gs));
  gs.purpose = NULL;
  ASSERT_DENIED(ask("clients", "ai", &gs));
  /* Recording must name the session it generates for. */
  g = (struct call){R_GENERATE, "acme", NULL, NULL, NULL, 0};
  a = ask("clients", "recording", &g);
  ASSERT_DENIED(a);
}
END_TEST

/* ---- Reload -------------------------------------------------------------------------- */

static void
remove_in_dir(const char *rel)
{
  char path[768];
  snprintf(path, sizeof(path), "%s/%s", harness_dir(), rel);
  ck_assert_int_eq(unlink(path), 0);
}

static void
assert_log_has(const char *log, const char *needle)
{
  size_t n = strlen(log);
  /* Check's messages are short: show the end of the log only. */
  ck_assert_msg(strstr(log, needle) != NULL, "kmsd logged ...%s\nwithout '%s'",
                log + (n > 1500 ? n - 1500 : 0), needle);
}

START_TEST(test_bad_policy_on_sighup_keeps_the_old_one_and_a_good_one_takes_effect)
{
  struct call wrapped_only = {R_GENERATE_NP, "acme", NULL, NULL, NULL, 0};
  struct call plaintext = {R_GENERATE, "acme", NULL, NULL, NULL, 0};
  struct call plaintext_globex = {R_GENERATE, "globex", NULL, NULL, NULL, 0};
  ASSERT_OK(ask("clients", "storage", &wrapped_only));
  ASSERT_DENIED(ask("clients", "storage", &plaintext));

  /* A syntax error: refused with file, line and column; the old policy stays. */
  harness_write_file("pol/zz-broken.json", "{\n  \"version\": 1,\n  \"rules\": [,]\n}\n");
  char *log = harness_sighup();
  assert_log_has(log, "event=policy_reload_failed");
  assert_log_has(log, "pol/zz-broken.json:3:");
  free(log);
  ASSERT_OK(ask("clients", "storage", &wrapped_only));
  ASSERT_DENIED(ask("clients", "storage", &plaintext));

  /* A valid file beside a broken one: all or nothing, the grant does not leak in. */
  harness_write_file("pol/zz-extra.json",
                     "{\"version\": 1, \"rules\": [{\"id\": \"storage-plaintext-acme\", "
                     "\"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/storage\", "
                     "\"operations\": [\"GenerateDataKey\"], \"tenants\": [\"acme\"]}]}\n");
  harness_write_file("pol/zz-broken.json",
                     "{\"version\": 1, \"rules\": [{\"id\": \"x\", \"effect\": \"allow\", "
                     "\"principal\": \"cn:x\", \"operations\": [\"Decrpyt\"], "
                     "\"tenants\": \"all\"}]}\n");
  log = harness_sighup();
  assert_log_has(log, "pol/zz-broken.json: rules[0].operations[0]: unknown operation 'Decrpyt'");
  free(log);
  ASSERT_DENIED(ask("clients", "storage", &plaintext));

  /* Remove the broken file: the new grant takes effect, for acme only, and on a
   * connection opened before the reload too (the policy is asked per request). */
  SSL *kept = harness_raw_connect("clients", "storage");
  ck_assert_ptr_nonnull(kept);
  ASSERT_DENIED(ask_on(kept, &plaintext));
  remove_in_dir("pol/zz-broken.json");
  log = harness_sighup();
  assert_log_has(log, "event=policy_loaded");
  assert_log_has(log, "files=7");
  free(log);
  ASSERT_OK(ask("clients", "storage", &plaintext));
  ASSERT_OK(ask_on(kept, &plaintext));
  ASSERT_DENIED(ask("clients", "storage", &plaintext_globex));

  /* A deny added later wins over every allow. */
  harness_write_file("pol/zz-deny.json",
                     "{\"version\": 1, \"rules\": [{\"id\": \"storage-frozen\", "
                     "\"effect\": \"deny\", \"principal\": \"spiffe://tenantkms.dev/storage\", "
                     "\"operations\": [\"GenerateDataKey\", \"GenerateDataKeyWithoutPlaintext\"], "
                     "\"tenants\": [\"acme\"]}]}\n");
  free(harness_sighup());
  ASSERT_DENIED(ask_on(kept, &plaintext));
  ASSERT_DENIED(ask("clients", "storage", &wrapped_only));
  harness_raw_close(kept);

  /* Back to the example policies. */
  remove_in_dir("pol/zz-extra.json");
  remove_in_dir("pol/zz-deny.json");
  free(harness_sighup());
  ASSERT_OK(ask("clients", "storage", &wrapped_only));
  ASSERT_DENIED(ask("clients", "storage", &plaintext));
  ck_assert(harness_kmsd_alive());
}
END_TEST

/* ---- Start-up ------------------------------------------------------------------------- */

static char *
read_in_dir(const char *rel)
{
  char path[768];
  snprintf(path, sizeof(path), "%s/%s", harness_dir(), rel);
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  char *buf = calloc(1, 65536);
  size_t n = fread(buf, 1, 65535, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* Runs kmsd with kmsd.conf plus |extra| and expects it to refuse to start. */
static void
assert_start_refused(const char *extra, const char *needle)
{
  char *conf = read_in_dir("kmsd.conf");
  char content[70000], out[8192];
  snprintf(content, sizeof(content), "%s%s\n", conf, extra);
  free(conf);
  harness_write_file("kmsd-bad.conf", content);
  int st = harness_run_kmsd_once("kmsd-bad.conf", out, sizeof(out));
  ck_assert_msg(st != 0 && st != -1, "kmsd exit status %d", st);
  ck_assert_msg(strstr(out, needle) != NULL, "stderr:\n%s\nlacks '%s'", out, needle);
}

START_TEST(test_kmsd_refuses_to_start_with_a_bad_policy_or_crl)
{
  char line[600];
  harness_write_file("badpol/a.json", "{\n  \"version\": 1,\n  \"rules\": [\n    {\"id\": }\n]}\n");
  snprintf(line, sizeof(line), "policy = %s/badpol", harness_dir());
  assert_start_refused(line, "badpol/a.json:4:");
  assert_start_refused(line, "syntax error");

  harness_write_file("badpol/a.json",
                     "{\"version\": 1, \"rules\": [{\"id\": \"r\", \"effect\": \"allow\", "
                     "\"principal\": \"spiffe://tenantkms.dev/ai\", \"operations\": [\"Health\"], "
                     "\"tenants\": \"all\", \"context\": {\"values\": {\"purpose\": []}}}]}");
  assert_start_refused(
      line, "badpol/a.json: rules[0].context.values.purpose: expected a non-empty array");

  /* The interim role keys are gone, with a pointer to what replaced them. */
  assert_start_refused("officer = spiffe://tenantkms.dev/officer", "officer: removed");

  harness_write_file("bad.crl", "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n");
  snprintf(line, sizeof(line), "tls_crl = %s/bad.crl", harness_dir());
  assert_start_refused(line, "CRL");
  ck_assert(harness_kmsd_alive()); /* the test's kmsd never noticed */
}
END_TEST

/* ---- Revocation ----------------------------------------------------------------------- */

static struct answer
health(const char *certdir, const char *name)
{
  struct call c = {R_HEALTH, NULL, NULL, NULL, NULL, 0};
  return ask(certdir, name, &c);
}

START_TEST(test_revoked_certificate_is_refused_at_the_handshake)
{
  ASSERT_REFUSED(health("bad", "revoked"));
  /* Same identity (recording), certificate not revoked: served. */
  ASSERT_OK(health("clients", "recording"));
  char *log = read_in_dir("kmsd.log");
  assert_log_has(log, "certificate revoked");
  free(log);
}
END_TEST

START_TEST(test_crl_changes_take_effect_on_sighup_and_a_bad_crl_keeps_the_old)
{
  ASSERT_OK(health("clients", "integration-globex"));
  ASSERT_REFUSED(health("bad", "revoked"));

  /* Revoke globex's integration certificate. */
  harness_copy_file("pki/bad/crl-globex.pem", "pki/crl.pem");
  char *log = harness_sighup();
  assert_log_has(log, "event=tls_reloaded");
  free(log);
  ASSERT_REFUSED(health("clients", "integration-globex"));
  ASSERT_REFUSED(health("bad", "revoked"));
  ASSERT_OK(health("clients", "integration-acme"));

  /* An unreadable CRL is refused; the one in force stays. */
  harness_write_file("pki/crl.pem", "garbage\n");
  log = harness_sighup();
  assert_log_has(log, "event=tls_reload_failed");
  free(log);
  ASSERT_REFUSED(health("clients", "integration-globex"));
  ASSERT_OK(health("clients", "integration-acme"));

  /* A CRL revoking nothing lets both back in. */
  harness_copy_file("pki/bad/crl-none.pem", "pki/crl.pem");
  free(harness_sighup());
  ASSERT_OK(health("clients", "integration-globex"));
  ASSERT_OK(health("bad", "revoked"));

  /* Restore the fixture's CRL. */
  harness_copy_file("pki/bad/crl-revoked.pem", "pki/crl.pem");
  free(harness_sighup());
  ASSERT_REFUSED(health("bad", "revoked"));
  ASSERT_OK(health("clients", "integration-globex"));
}
END_TEST

static Suite *
policy_suite(void)
{
  Suite *s = suite_create("policy");
  TCase *t = tcase_create("enforcement");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_matrix_every_rpc_against_every_kind_of_caller);
  tcase_add_test(t, test_other_tenant_is_denied_exactly_like_a_missing_tenant);
  tcase_add_test(t, test_ai_decrypts_only_for_an_allowed_purpose);
  suite_add_tcase(s, t);

  t = tcase_create("reload");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_bad_policy_on_sighup_keeps_the_old_one_and_a_good_one_takes_effect);
  tcase_add_test(t, test_kmsd_refuses_to_start_with_a_bad_policy_or_crl);
  suite_add_tcase(s, t);

  t = tcase_create("revocation");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_revoked_certificate_is_refused_at_the_handshake);
  tcase_add_test(t, test_crl_changes_take_effect_on_sighup_and_a_bad_crl_keeps_the_old);
  suite_add_tcase(s, t);
  return s;
}

/* The test's kmsd reads a copy of policies/, so reload tests can change it. */
static void
copy_example_policies(void)
{
  static const char *const files[] = {"ai.json",      "auditor.json",   "integration.json",
                                      "officer.json", "recording.json", "storage.json"};
  const char *src = getenv("SRCDIR") != NULL ? getenv("SRCDIR") : ".";
  for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    char path[1024], rel[64];
    snprintf(path, sizeof(path), "%s/policies/%s", src, files[i]);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
      fprintf(stderr, "cannot read %s\n", path);
      exit(99);
    }
    char *buf = calloc(1, 1u << 20);
    buf[fread(buf, 1, (1u << 20) - 1, f)] = '\0';
    fclose(f);
    snprintf(rel, sizeof(rel), "pol/%s", files[i]);
    harness_write_file(rel, buf);
    free(buf);
  }
}

int
main(void)
{
  harness_setup("log_level = debug");
  copy_example_policies();
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/pol", harness_dir());
  harness_append_conf(line);
  harness_start_kmsd();

  /* Tenants and blobs the tests share (officer creates, each integration makes its own). */
  static const char *const tenants[] = {"acme", "globex"};
  for (size_t i = 0; i < 2; i++) {
    struct call c = {R_CREATE, tenants[i], NULL, NULL, NULL, 0};
    struct answer a = ask("clients", "officer", &c);
    if (!is_ok(&a)) {
      fprintf(stderr, "creating %s: %s %s\n", tenants[i], outcome(&a), a.message);
      harness_stop_kmsd();
      return 99;
    }
  }
  if (make_blob("integration-acme", "acme", blob_acme, &blob_acme_len) != 0 ||
      make_blob("integration-globex", "globex", blob_globex, &blob_globex_len) != 0) {
    harness_stop_kmsd();
    return 99;
  }
  /* Sessions the matrix names: SID in both tenants, and one for the officer to shred. */
  static const char *const opens[][3] = {{"integration-acme", "acme", SID},
                                         {"integration-globex", "globex", SID},
                                         {"integration-globex", "globex", "m-shred"}};
  for (size_t i = 0; i < 3; i++) {
    struct call c = {R_OPEN_SESSION, opens[i][1], opens[i][2], NULL, NULL, 0};
    struct answer a = ask("clients", opens[i][0], &c);
    if (!is_ok(&a)) {
      fprintf(stderr, "opening %s/%s: %s %s\n", opens[i][1], opens[i][2], outcome(&a), a.message);
      harness_stop_kmsd();
      return 99;
    }
  }
  SRunner *sr = srunner_create(policy_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* tests share the one kmsd process */
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return harness_finish(failed);
}
