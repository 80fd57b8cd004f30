/* Integration tests of the key lifecycle: rotation, ReEncrypt, states, dual control, crypto-shredding, kmsctl. */
#include <check.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "keystore.h"
#include "kms.pb-c.h"
#include "kms_err.h"
#include "tenantkey.h"
#include "tk_internal.h"

/*
 * kmsd runs with a short approval window and the test knob that allows a
 * zero waiting period, and ticks every second, so expiry, destruction and
 * automatic rotation happen within a test.
 */
#define WINDOW_S 5 /* long enough for a few kmsctl runs under ASan */
#define STR_(x) #x
#define STR(x) STR_(x)
#define LC_CONF                                                                              \
  "log_level = debug\napprovals_required = 2\napproval_window_s = " STR(WINDOW_S) "\n"       \
  "allow_short_waiting_periods = true\ndestruction_wait_days = 7\nlifecycle_interval_s = 1\n"

#define OFFICER_OPS                                                                          \
  "[\"CreateTenant\", \"RotateKey\", \"ListKeys\", \"DisableKey\", \"EnableKey\", "          \
  "\"ScheduleDestruction\", \"CancelDestruction\", \"Approve\", \"Health\"]"
#define RULE(id, who, ops)                                                                   \
  "{\"id\": \"" id "\", \"effect\": \"allow\", \"principal\": \"spiffe://tenantkms.dev/" who \
  "\", \"operations\": " ops ", \"tenants\": \"all\"}"
#define LC_POLICY                                                                            \
  "{\"version\": 1, \"rules\": [" RULE("officer", "officer", OFFICER_OPS) ", "               \
  RULE("officer2", "officer2", OFFICER_OPS) ", " RULE("officer3", "officer3", OFFICER_OPS)   \
  ", " RULE("recording", "recording", "[\"GenerateDataKey\", \"Decrypt\", \"Health\"]") ", " \
  RULE("ai", "ai", "[\"Decrypt\", \"Health\"]") ", "                                         \
  RULE("storage", "storage",                                                                \
       "[\"GenerateDataKeyWithoutPlaintext\", \"ReEncrypt\", \"Decrypt\", \"Health\"]")      \
  "]}\n"

static tk_client *officer, *officer2, *officer3, *recording, *storage, *ai;

static void
clients_free(void)
{
  tk_client_free(officer);
  tk_client_free(officer2);
  tk_client_free(officer3);
  tk_client_free(recording);
  tk_client_free(storage);
  tk_client_free(ai);
  officer = officer2 = officer3 = recording = storage = ai = NULL;
}

static void
clients_new(void)
{
  officer = harness_client("officer");
  officer2 = harness_client("officer2");
  officer3 = harness_client("officer3");
  recording = harness_client("recording");
  storage = harness_client("storage");
  ai = harness_client("ai");
  if (!(officer && officer2 && officer3 && recording && storage && ai)) {
    fprintf(stderr, "test_lifecycle: cannot make the clients\n");
    exit(99);
  }
}

/* restart stops kmsd cleanly and starts it again (new port: new clients). */
static void
restart(void)
{
  clients_free();
  ck_assert_int_eq(harness_stop_kmsd(), 0);
  ck_assert_int_gt(harness_start_kmsd(), 0);
  clients_new();
}

static void
create_tenant(const char *t)
{
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, t);
  ck_assert_msg(r == TK_OK, "create %s: %s", t, tk_strerror(r));
}

static const char *
last_msg(tk_client *c)
{
  static char buf[256];
  tk_client_last_message(c, buf, sizeof(buf));
  return buf;
}

/* expect_state: |r| is TK_EPRECONDITION and kmsd's message names |state|. */
#define expect_state(c, r, state)                                                             \
  do {                                                                                        \
    int r_ = (r);                                                                             \
    ck_assert_msg(r_ == TK_EPRECONDITION, "expected FAILED_PRECONDITION, got %s",             \
                  tk_strerror(r_));                                                           \
    ck_assert_msg(strstr(last_msg(c), (state)) != NULL, "message \"%s\" lacks \"%s\"",       \
                  last_msg(c), (state));                                                      \
  } while (0)

static tk_data_key *
gen(const char *tenant)
{
  tk_data_key *k = NULL;
  int r = tk_data_key_generate(recording, &k, tenant, NULL, 1);
  ck_assert_msg(r == TK_OK, "generate %s: %s (%s)", tenant, tk_strerror(r), last_msg(recording));
  return k;
}

static int
dec(tk_client *c, const char *tenant, const tk_data_key *k)
{
  size_t wl;
  const uint8_t *w = tk_data_key_wrapped(k, &wl);
  tk_data_key *d = NULL;
  int r = tk_data_key_decrypt(c, &d, tenant, NULL, w, wl);
  if (r == TK_OK) {
    size_t l1, l2;
    ck_assert_mem_eq(tk_data_key_plaintext(d, &l1), tk_data_key_plaintext(k, &l2), 32);
  }
  tk_data_key_free(d);
  return r;
}

/* list_keys returns the ListKeys answer (free with tk_client_response_free). */
static Tkms__Response *
list_keys(const char *tenant)
{
  Tkms__Request req;
  Tkms__ListKeysRequest m;
  Tkms__Response *resp = NULL;
  tkms__request__init(&req);
  tkms__list_keys_request__init(&m);
  m.tenant_id = (char *)tenant;
  req.op_case = TKMS__REQUEST__OP_LIST_KEYS;
  req.list_keys = &m;
  int r = tk_client_call(officer, &req, &resp);
  ck_assert_msg(r == TK_OK, "ListKeys %s: %s", tenant, tk_strerror(r));
  return resp;
}

static uint32_t
version_state(const char *tenant, uint32_t version)
{
  Tkms__Response *resp = list_keys(tenant);
  uint32_t st = 0;
  for (size_t i = 0; i < resp->list_keys->n_versions; i++) {
    if (resp->list_keys->versions[i]->version == version) {
      st = resp->list_keys->versions[i]->state;
    }
  }
  tk_client_response_free(resp);
  return st;
}

static uint32_t
tenant_state(const char *tenant, uint32_t *out_current)
{
  Tkms__Response *resp = list_keys(tenant);
  uint32_t st = resp->list_keys->tenant->state;
  if (out_current != NULL) {
    *out_current = resp->list_keys->tenant->current_version;
  }
  tk_client_response_free(resp);
  return st;
}

/* has_event: the tenant's history has |event| by |by|. */
static int
has_event(const char *tenant, const char *event, const char *by)
{
  Tkms__Response *resp = list_keys(tenant);
  int found = 0;
  for (size_t i = 0; i < resp->list_keys->n_events; i++) {
    const Tkms__KeyEvent *e = resp->list_keys->events[i];
    found |= strcmp(e->event, event) == 0 && strstr(e->by, by) != NULL;
  }
  tk_client_response_free(resp);
  return found;
}

/* ---- Rotation and ReEncrypt ----------------------------------------------------- */

START_TEST(test_rotate_keeps_old_blobs_open_and_new_blobs_name_the_new_version)
{
  create_tenant("rot");
  tk_data_key *old = gen("rot");
  ck_assert_uint_eq(tk_data_key_kek_version(old), 1);
  uint32_t v = 0;
  ck_assert_int_eq(tk_key_rotate(officer, &v, "rot"), TK_OK);
  ck_assert_uint_eq(v, 2);
  tk_data_key *fresh = gen("rot");
  ck_assert_uint_eq(tk_data_key_kek_version(fresh), 2);
  ck_assert_int_eq(dec(recording, "rot", old), TK_OK);
  ck_assert_int_eq(dec(recording, "rot", fresh), TK_OK);
  ck_assert_uint_eq(version_state("rot", 1), KS_KEK_DECRYPT_ONLY);
  ck_assert_uint_eq(version_state("rot", 2), KS_KEK_ACTIVE);
  /* Who rotated is on record. */
  ck_assert(has_event("rot", "rotated", "spiffe://tenantkms.dev/officer"));
  ck_assert(has_event("rot", "created", "spiffe://tenantkms.dev/officer"));
  /* Services may not rotate; unknown tenants are NOT_FOUND. */
  ck_assert_int_eq(tk_key_rotate(recording, &v, "rot"), TK_EPERM);
  ck_assert_int_eq(tk_key_rotate(officer, &v, "no-such-tenant"), TK_ENOTFOUND);
  tk_data_key_free(old);
  tk_data_key_free(fresh);
}
END_TEST

START_TEST(test_reencrypt_moves_old_blobs_forward_without_plaintext)
{
  create_tenant("rewrap");
  tk_data_key *old = gen("rewrap");
  uint32_t v = 0;
  ck_assert_int_eq(tk_key_rotate(officer, &v, "rewrap"), TK_OK);
  size_t wl, nl = 0;
  const uint8_t *w = tk_data_key_wrapped(old, &wl);
  uint8_t nw[TK_WRAPPED_KEY_MAX];
  uint32_t nv = 0;
  ck_assert_int_eq(tk_data_key_rewrap(storage, nw, &nl, &nv, "rewrap", NULL, w, wl, 0), TK_OK);
  ck_assert_uint_eq(nv, 2);
  ck_assert_uint_eq(nl, wl);
  ck_assert_int_ne(memcmp(nw, w, wl), 0);
  /* The moved blob opens to the same key, under version 2. */
  tk_data_key *d = NULL;
  size_t l1, l2;
  ck_assert_int_eq(tk_data_key_decrypt(recording, &d, "rewrap", NULL, nw, nl), TK_OK);
  ck_assert_uint_eq(tk_data_key_kek_version(d), 2);
  ck_assert_mem_eq(tk_data_key_plaintext(d, &l1), tk_data_key_plaintext(old, &l2), 32);
  tk_data_key_free(d);
  /* A blob already under the newest version comes back as it is. */
  uint8_t nw2[TK_WRAPPED_KEY_MAX];
  size_t nl2 = 0;
  ck_assert_int_eq(tk_data_key_rewrap(storage, nw2, &nl2, &nv, "rewrap", NULL, nw, nl, 0), TK_OK);
  ck_assert_mem_eq(nw2, nw, nl);
  /* An older, decrypt-only version is no target. */
  expect_state(storage, tk_data_key_rewrap(storage, nw2, &nl2, &nv, "rewrap", NULL, w, wl, 1),
               "decrypt-only");
  /* Batch: per-item results; a damaged blob fails alone. */
  uint8_t bad[65];
  memcpy(bad, w, wl);
  bad[40] ^= 1;
  tk_rewrap_item items[3];
  memset(items, 0, sizeof(items));
  items[0].wrapped = w;
  items[0].wrapped_len = wl;
  items[1].wrapped = bad;
  items[1].wrapped_len = wl;
  items[2].wrapped = nw;
  items[2].wrapped_len = nl;
  ck_assert_int_eq(tk_data_key_rewrap_batch(storage, items, 3, "rewrap", 0), TK_OK);
  ck_assert_int_eq(items[0].status, TK_OK);
  ck_assert_uint_eq(items[0].kek_version, 2);
  ck_assert_int_eq(items[1].status, TK_EDECRYPT);
  ck_assert_int_eq(items[2].status, TK_OK);
  ck_assert_int_eq(tk_data_key_decrypt(recording, &d, "rewrap", NULL, items[0].out_wrapped,
                                       items[0].out_wrapped_len),
                   TK_OK);
  tk_data_key_free(d);
  /* Another tenant's name does not open it; officers and the recorder may not re-wrap. */
  create_tenant("rewrap-other");
  ck_assert_int_eq(tk_data_key_rewrap(storage, nw2, &nl2, &nv, "rewrap-other", NULL, w, wl, 0),
                   TK_EDECRYPT);
  ck_assert_int_eq(tk_data_key_rewrap(officer, nw2, &nl2, &nv, "rewrap", NULL, w, wl, 0), TK_EPERM);
  ck_assert_int_eq(tk_data_key_rewrap(recording, nw2, &nl2, &nv, "rewrap", NULL, w, wl, 0),
                   TK_EPERM);
  tk_data_key_free(old);
}
END_TEST

/* ---- States and dual control ---------------------------------------------------------- */

START_TEST(test_disabled_tenant_refuses_everything_until_enabled)
{
  create_tenant("clinic-x");
  tk_data_key *k = gen("clinic-x");
  uint64_t req = 0;
  ck_assert_int_eq(tk_key_disable(officer, &req, "clinic-x", 0), TK_OK);
  ck_assert_uint_gt(req, 0);
  /* One officer of two is not enough: still serving. */
  ck_assert_uint_eq(tenant_state("clinic-x", NULL), KS_TENANT_ACTIVE);
  ck_assert_int_eq(dec(recording, "clinic-x", k), TK_OK);
  int executed = 0;
  ck_assert_int_eq(tk_request_approve(officer2, &executed, req), TK_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_uint_eq(tenant_state("clinic-x", NULL), KS_TENANT_DISABLED);

  tk_data_key *k2 = NULL;
  expect_state(recording, tk_data_key_generate(recording, &k2, "clinic-x", NULL, 1), "disabled");
  expect_state(recording, dec(recording, "clinic-x", k), "disabled");
  expect_state(ai, dec(ai, "clinic-x", k), "disabled");
  size_t wl, nl;
  uint8_t nw[TK_WRAPPED_KEY_MAX];
  uint32_t nv;
  const uint8_t *w = tk_data_key_wrapped(k, &wl);
  expect_state(storage, tk_data_key_rewrap(storage, nw, &nl, &nv, "clinic-x", NULL, w, wl, 0),
               "disabled");
  uint32_t v;
  expect_state(officer, tk_key_rotate(officer, &v, "clinic-x"), "disabled");
  /* The approver and the requester are on record. */
  ck_assert(has_event("clinic-x", "disabled", "spiffe://tenantkms.dev/officer2"));
  ck_assert(has_event("clinic-x", "approval_requested", "spiffe://tenantkms.dev/officer"));

  ck_assert_int_eq(tk_key_enable(officer, "clinic-x", 0), TK_OK);
  ck_assert_int_eq(dec(recording, "clinic-x", k), TK_OK);
  k2 = gen("clinic-x");
  tk_data_key_free(k2);
  tk_data_key_free(k);
}
END_TEST

START_TEST(test_disabled_version_refuses_only_that_version)
{
  create_tenant("ver-off");
  tk_data_key *k1 = gen("ver-off");
  uint32_t v;
  ck_assert_int_eq(tk_key_rotate(officer, &v, "ver-off"), TK_OK);
  uint64_t req = 1;
  ck_assert_int_eq(tk_key_disable(officer, &req, "ver-off", 1), TK_OK);
  ck_assert_uint_eq(req, 0); /* a version is suspended at once */
  expect_state(recording, dec(recording, "ver-off", k1), "key version 1 is disabled");
  tk_data_key *k2 = gen("ver-off");
  ck_assert_int_eq(dec(recording, "ver-off", k2), TK_OK);
  ck_assert_int_eq(tk_key_enable(officer, "ver-off", 1), TK_OK);
  /* An older version comes back decrypt-only, never active. */
  ck_assert_uint_eq(version_state("ver-off", 1), KS_KEK_DECRYPT_ONLY);
  ck_assert_int_eq(dec(recording, "ver-off", k1), TK_OK);
  tk_data_key_free(k1);
  tk_data_key_free(k2);
}
END_TEST

START_TEST(test_wrong_state_calls_are_failed_precondition)
{
  create_tenant("states");
  expect_state(officer, tk_key_enable(officer, "states", 1), "is active");
  expect_state(officer, tk_key_enable(officer, "states", 0), "is active");
  expect_state(officer, tk_key_cancel_destruction(officer, "states", 1), "is active");
  ck_assert_int_eq(tk_key_enable(officer, "states", 9), TK_ENOTFOUND);
  uint64_t req = 0;
  /* Beyond the 30-day maximum: refused, nothing opened. */
  ck_assert_int_eq(tk_key_schedule_destruction(officer, &req, "states", 1, 31), TK_EINVAL);
  ck_assert_int_eq(tk_key_schedule_destruction(officer, &req, "states", 1, 3650), TK_EINVAL);
  /* One open request per target. */
  ck_assert_int_eq(tk_key_schedule_destruction(officer, &req, "states", 1, 7), TK_OK);
  uint64_t again = 0;
  ck_assert_int_eq(tk_key_schedule_destruction(officer2, &again, "states", 1, 7), TK_EEXIST);
  ck_assert_int_eq(tk_key_cancel_destruction(officer, "states", 1), TK_OK);
  int executed = 0;
  expect_state(officer2, tk_request_approve(officer2, &executed, req), "cancelled");
  ck_assert_int_eq(tk_request_approve(officer2, &executed, 999999), TK_ENOTFOUND);
}
END_TEST

START_TEST(test_requester_cannot_approve_own_request)
{
  create_tenant("self");
  uint64_t req = 0;
  ck_assert_int_eq(tk_key_schedule_destruction(officer, &req, "self", 1, 7), TK_OK);
  int executed = 1;
  expect_state(officer, tk_request_approve(officer, &executed, req), "requester");
  ck_assert_int_eq(executed, 0);
  ck_assert_uint_eq(version_state("self", 1), KS_KEK_ACTIVE);
  ck_assert(has_event("self", "approval_refused", "spiffe://tenantkms.dev/officer"));
  /* Services cannot approve at all. */
  ck_assert_int_eq(tk_request_approve(recording, &executed, req), TK_EPERM);
  ck_assert_int_eq(tk_key_cancel_destruction(officer, "self", 1), TK_OK);
}
END_TEST

START_TEST(test_approval_after_the_window_is_refused)
{
  create_tenant("late");
  uint64_t req = 0;
  ck_assert_int_eq(tk_key_disable(officer, &req, "late", 0), TK_OK);
  sleep(WINDOW_S + 1);
  int executed = 1;
  expect_state(officer2, tk_request_approve(officer2, &executed, req), "expired");
  ck_assert_int_eq(executed, 0);
  ck_assert_uint_eq(tenant_state("late", NULL), KS_TENANT_ACTIVE);
  tk_data_key *k = gen("late");
  tk_data_key_free(k);
}
END_TEST

START_TEST(test_cancel_during_the_waiting_period_restores_the_key)
{
  create_tenant("waiting");
  tk_data_key *k1 = gen("waiting");
  uint32_t v;
  ck_assert_int_eq(tk_key_rotate(officer, &v, "waiting"), TK_OK);
  uint64_t req = 0;
  ck_assert_int_eq(tk_key_schedule_destruction(officer, &req, "waiting", 1, TK_WAIT_DEFAULT),
                   TK_OK);
  int executed = 0;
  ck_assert_int_eq(tk_request_approve(officer2, &executed, req), TK_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_uint_eq(version_state("waiting", 1), KS_KEK_PENDING_DESTRUCTION);
  /* Pending destruction: nothing works with it, but it is not gone. */
  expect_state(recording, dec(recording, "waiting", k1), "pending destruction");
  ck_assert_int_eq(tk_key_cancel_destruction(officer3, "waiting", 1), TK_OK);
  ck_assert_uint_eq(version_state("waiting", 1), KS_KEK_DECRYPT_ONLY);
  ck_assert_int_eq(dec(recording, "waiting", k1), TK_OK);
  ck_assert(has_event("waiting", "destruction_cancelled", "spiffe://tenantkms.dev/officer3"));
  tk_data_key_free(k1);
}
END_TEST

/* ---- Crypto-shredding ---------------------------------------------------------------- */

static void
keystore_path(char *db, size_t n, const char *suffix)
{
  snprintf(db, n, "%s/keystore.db%s", harness_dir(), suffix);
}

START_TEST(test_destroyed_tenant_is_gone_for_everyone_after_restart_too)
{
  create_tenant("shred-me");
  uint32_t v;
  tk_data_key *k1 = gen("shred-me");
  ck_assert_int_eq(tk_key_rotate(officer, &v, "shred-me"), TK_OK);
  tk_data_key *k2 = gen("shred-me");

  /* The key tokens as stored, to look for them afterwards. */
  char url[600], db[512], wal[512], err[256];
  keystore_path(db, sizeof(db), "");
  keystore_path(wal, sizeof(wal), "-wal");
  snprintf(url, sizeof(url), "sqlite:%s", db);
  keystore *ks = NULL;
  ck_assert_msg(keystore_open(&ks, url, err, sizeof(err)) == KMS_OK, "%s", err);
  struct ks_kek t1, t2;
  ck_assert_int_eq(keystore_kek_get(ks, "shred-me", 1, &t1), KMS_OK);
  ck_assert_int_eq(keystore_kek_get(ks, "shred-me", 2, &t2), KMS_OK);
  keystore_close(ks);
  ck_assert(harness_file_contains(db, t1.token, t1.token_len) ||
            harness_file_contains(wal, t1.token, t1.token_len));

  uint64_t req = 0;
  ck_assert_int_eq(tk_key_schedule_destruction(officer, &req, "shred-me", 0, TK_WAIT_NONE), TK_OK);
  /* Until approved, still serving. */
  ck_assert_int_eq(dec(recording, "shred-me", k1), TK_OK);
  int executed = 0;
  ck_assert_int_eq(tk_request_approve(officer2, &executed, req), TK_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_uint_eq(tenant_state("shred-me", NULL), KS_TENANT_DESTROYED);
  ck_assert_uint_eq(version_state("shred-me", 1), KS_KEK_DESTROYED);
  ck_assert_uint_eq(version_state("shred-me", 2), KS_KEK_DESTROYED);

  /* The receipt: what, when, requested by, approved by. */
  Tkms__Request rq;
  Tkms__ListReceiptsRequest lr;
  Tkms__Response *resp = NULL;
  tkms__request__init(&rq);
  tkms__list_receipts_request__init(&lr);
  lr.tenant_id = "shred-me";
  rq.op_case = TKMS__REQUEST__OP_LIST_RECEIPTS;
  rq.list_receipts = &lr;
  ck_assert_int_eq(tk_client_call(officer, &rq, &resp), TK_OK);
  ck_assert_uint_eq(resp->list_receipts->n_receipts, 1);
  const Tkms__DestructionReceipt *rc = resp->list_receipts->receipts[0];
  ck_assert_str_eq(rc->tenant_id, "shred-me");
  ck_assert_uint_eq(rc->version, 0);
  ck_assert_uint_eq(rc->n_versions, 2);
  ck_assert_uint_eq(rc->request_id, req);
  ck_assert_str_eq(rc->requested_by, "spiffe://tenantkms.dev/officer");
  ck_assert_uint_eq(rc->n_approved_by, 1);
  ck_assert_str_eq(rc->approved_by[0], "spiffe://tenantkms.dev/officer2");
  ck_assert_int_gt(rc->destroyed_ms, 0);
  tk_client_response_free(resp);

  /* Every principal, every operation: refused, naming the state. */
  expect_state(recording, dec(recording, "shred-me", k1), "destroyed");
  expect_state(recording, dec(recording, "shred-me", k2), "destroyed");
  expect_state(ai, dec(ai, "shred-me", k2), "destroyed");
  size_t wl, nl;
  uint8_t nw[TK_WRAPPED_KEY_MAX];
  const uint8_t *w = tk_data_key_wrapped(k1, &wl);
  expect_state(storage, tk_data_key_rewrap(storage, nw, &nl, &v, "shred-me", NULL, w, wl, 0),
               "destroyed");
  expect_state(officer, tk_key_enable(officer, "shred-me", 0), "destroyed");
  expect_state(officer, tk_key_rotate(officer, &v, "shred-me"), "destroyed");
  uint32_t cv = 0;
  ck_assert_int_eq(tk_tenant_create(officer, &cv, "shred-me"), TK_EEXIST);

  /* No copy of a token in the database or its WAL. */
  ck_assert(!harness_file_contains(db, t1.token, t1.token_len));
  ck_assert(!harness_file_contains(wal, t1.token, t1.token_len));
  ck_assert(!harness_file_contains(db, t2.token, t2.token_len));
  ck_assert(!harness_file_contains(wal, t2.token, t2.token_len));

  /* After a restart (and so from a backup taken now): still gone. */
  restart();
  expect_state(recording, dec(recording, "shred-me", k1), "destroyed");
  expect_state(ai, dec(ai, "shred-me", k2), "destroyed");
  ck_assert(!harness_file_contains(db, t1.token, t1.token_len));
  tk_data_key_free(k1);
  tk_data_key_free(k2);
}
END_TEST

START_TEST(test_destroyed_version_leaves_the_others_working)
{
  create_tenant("shred-v");
  uint32_t v;
  tk_data_key *k1 = gen("shred-v");
  ck_assert_int_eq(tk_key_rotate(officer, &v, "shred-v"), TK_OK);
  tk_data_key *k2 = gen("shred-v");
  uint64_t req = 0;
  ck_assert_int_eq(tk_key_schedule_destruction(officer2, &req, "shred-v", 1, TK_WAIT_NONE), TK_OK);
  int executed = 0;
  ck_assert_int_eq(tk_request_approve(officer3, &executed, req), TK_OK);
  ck_assert_int_eq(executed, 1);
  expect_state(recording, dec(recording, "shred-v", k1), "destroyed");
  ck_assert_int_eq(dec(recording, "shred-v", k2), TK_OK);
  tk_data_key_free(k1);
  tk_data_key_free(k2);
}
END_TEST

START_TEST(test_due_destruction_is_executed_by_the_timer)
{
  create_tenant("shred-later");
  tk_data_key *k1 = gen("shred-later");
  uint64_t req = 0;
  ck_assert_int_eq(tk_key_schedule_destruction(officer, &req, "shred-later", 0, 7), TK_OK);
  int executed = 0;
  ck_assert_int_eq(tk_request_approve(officer2, &executed, req), TK_OK);
  ck_assert_uint_eq(tenant_state("shred-later", NULL), KS_TENANT_PENDING_DESTRUCTION);
  /* Let seven days pass, as far as the keystore can tell. */
  char db[512];
  keystore_path(db, sizeof(db), "");
  sqlite3 *h = NULL;
  ck_assert_int_eq(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  sqlite3_busy_timeout(h, 5000);
  ck_assert_int_eq(sqlite3_exec(h,
                                "UPDATE tenants SET destroy_after_ms = destroy_after_ms - "
                                "8 * 86400000 WHERE tenant_id = 'shred-later'",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(h);
  uint32_t st = 0;
  for (int i = 0; i < 50 && st != KS_TENANT_DESTROYED; i++) {
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    st = tenant_state("shred-later", NULL);
  }
  ck_assert_uint_eq(st, KS_TENANT_DESTROYED);
  expect_state(recording, dec(recording, "shred-later", k1), "destroyed");
  tk_data_key_free(k1);
}
END_TEST

/* ---- Automatic rotation ----------------------------------------------------------------- */

START_TEST(test_rotation_period_rotates_on_the_timer)
{
  create_tenant("auto-rot");
  ck_assert_int_eq(tk_tenant_set_rotation_period(officer, "auto-rot", 30), TK_OK);
  char db[512];
  keystore_path(db, sizeof(db), "");
  sqlite3 *h = NULL;
  ck_assert_int_eq(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  sqlite3_busy_timeout(h, 5000);
  ck_assert_int_eq(sqlite3_exec(h,
                                "UPDATE kek_versions SET created_ms = created_ms - "
                                "31 * 86400000 WHERE tenant_id = 'auto-rot'",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(h);
  uint32_t cur = 1;
  for (int i = 0; i < 50 && cur < 2; i++) {
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    (void)tenant_state("auto-rot", &cur);
  }
  ck_assert_uint_eq(cur, 2);
  ck_assert(has_event("auto-rot", "rotated", "kmsd"));
  /* Once: the new version is young. */
  sleep(2);
  (void)tenant_state("auto-rot", &cur);
  ck_assert_uint_eq(cur, 2);
}
END_TEST

/* ---- M of N ------------------------------------------------------------------------------ */

START_TEST(test_three_of_n_needs_two_approvals_besides_the_requester)
{
  harness_append_conf("approvals_required = 3");
  restart();
  create_tenant("three");
  uint64_t req = 0;
  ck_assert_int_eq(tk_key_disable(officer, &req, "three", 0), TK_OK);
  int executed = 1;
  ck_assert_int_eq(tk_request_approve(officer2, &executed, req), TK_OK);
  ck_assert_int_eq(executed, 0);
  ck_assert_uint_eq(tenant_state("three", NULL), KS_TENANT_ACTIVE);
  /* The same officer twice counts once. */
  expect_state(officer2, tk_request_approve(officer2, &executed, req), "already approved");
  ck_assert_int_eq(tk_request_approve(officer3, &executed, req), TK_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_uint_eq(tenant_state("three", NULL), KS_TENANT_DISABLED);
  harness_append_conf("approvals_required = 2");
  restart();
}
END_TEST

/* ---- kmsctl ---------------------------------------------------------------------------- */

/* kmsctl runs the kmsctl binary as |who| with |args|; returns its exit status, output in |out|. */
static int
kmsctl(const char *who, const char *args, char *out, size_t out_len)
{
  char cmd[2048];
  const char *bin = getenv("KMSCTL");
  ck_assert_ptr_nonnull(bin);
  snprintf(cmd, sizeof(cmd), "'%s' --config '%s' %s 2>&1", bin, harness_client_conf("clients", who),
           args);
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  size_t n = fread(out, 1, out_len - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

START_TEST(test_kmsctl_officer_workflow)
{
  char out[16384];
  ck_assert_int_eq(kmsctl("officer", "tenant create ctl-t", out, sizeof(out)), 0);
  ck_assert_int_eq(kmsctl("officer", "key rotate ctl-t", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "2") != NULL, "%s", out);
  ck_assert_int_eq(kmsctl("officer", "key list ctl-t", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "decrypt-only") != NULL && strstr(out, "active") != NULL, "%s", out);
  ck_assert_int_eq(kmsctl("officer", "key list ctl-t --json", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "\"state\":\"decrypt-only\"") != NULL, "%s", out);
  ck_assert_int_eq(kmsctl("officer", "tenant list", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "ctl-t") != NULL, "%s", out);
  ck_assert_int_eq(kmsctl("officer", "tenant show ctl-t", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "rotated") != NULL, "%s", out);
  /* Dual control through the CLI. */
  ck_assert_int_eq(kmsctl("officer", "key disable ctl-t", out, sizeof(out)), 0);
  ck_assert_msg(strstr(out, "approval") != NULL, "%s", out);
  ck_assert_int_eq(kmsctl("officer", "request list --json", out, sizeof(out)), 0);
  const char *idp = strstr(out, "\"id\":");
  ck_assert_msg(idp != NULL, "%s", out);
  unsigned long long id = strtoull(idp + 5, NULL, 10);
  char args[64];
  snprintf(args, sizeof(args), "approve %llu", id);
  ck_assert_int_eq(kmsctl("officer", args, out, sizeof(out)), 4); /* self-approval */
  ck_assert_int_eq(kmsctl("officer2", args, out, sizeof(out)), 0);
  ck_assert_int_eq(kmsctl("officer", "key enable ctl-t", out, sizeof(out)), 0);
  ck_assert_int_eq(kmsctl("officer", "key list no-such-tenant", out, sizeof(out)), 3);
  ck_assert_int_eq(kmsctl("recording", "key rotate ctl-t", out, sizeof(out)), 5);
}
END_TEST

START_TEST(test_kmsctl_bad_arguments_fail_clearly_and_change_nothing)
{
  static const char *const bad[] = {
      "key",
      "key rotate",
      "key rotate a b",
      "key rotate 'bad tenant!'",
      "key disable ctl-bad --version x",
      "key disable ctl-bad --version 0x3",
      "key schedule-destroy ctl-bad --wait-days -1",
      "key schedule-destroy ctl-bad --wait-days abc",
      "key cancel-destroy",
      "key frobnicate ctl-bad",
      "tenant",
      "tenant create",
      "tenant show",
      "tenant list extra",
      "tenant create ''",
      "request",
      "request list --tenant",
      "approve",
      "approve 0",
      "approve abc",
      "approve 1 2",
      "root",
      "key list ctl-bad --jsn",
      "key list",
      "key enable",
      "key enable ctl-bad --version",
      "key schedule-destroy ctl-bad --no-wait --wait-days 7",
      "tenant set-rotation ctl-bad x",
      "tenant set-rotation ctl-bad 99999",
      "tenant create ctl-new --rotation-days -5",
      "receipt list --tenant",
      "receipt",
  };
  char out[4096];
  create_tenant("ctl-bad");
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int st = kmsctl("officer", bad[i], out, sizeof(out));
    ck_assert_msg(st == 2, "kmsctl %s: exit %d, want 2 (%s)", bad[i], st, out);
    ck_assert_msg(strstr(out, "kmsctl") != NULL, "kmsctl %s: no clear message: %s", bad[i], out);
  }
  /* Nothing changed. */
  uint32_t cur = 0;
  ck_assert_uint_eq(tenant_state("ctl-bad", &cur), KS_TENANT_ACTIVE);
  ck_assert_uint_eq(cur, 1);
  ck_assert_uint_eq(version_state("ctl-bad", 1), KS_KEK_ACTIVE);
  /* --help everywhere, exit 0. */
  static const char *const help[] = {"--help", "key --help", "key rotate --help",
                                     "tenant --help", "request list --help", "approve --help",
                                     "key schedule-destroy --help"};
  for (size_t i = 0; i < sizeof(help) / sizeof(help[0]); i++) {
    ck_assert_msg(kmsctl("officer", help[i], out, sizeof(out)) == 0, "%s: %s", help[i], out);
    ck_assert_msg(strstr(out, "usage") != NULL, "%s: %s", help[i], out);
  }
}
END_TEST

static Suite *
lifecycle_suite(void)
{
  Suite *s = suite_create("lifecycle");
  TCase *t = tcase_create("rotation");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_rotate_keeps_old_blobs_open_and_new_blobs_name_the_new_version);
  tcase_add_test(t, test_reencrypt_moves_old_blobs_forward_without_plaintext);
  tcase_add_test(t, test_rotation_period_rotates_on_the_timer);
  suite_add_tcase(s, t);

  t = tcase_create("states");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_disabled_tenant_refuses_everything_until_enabled);
  tcase_add_test(t, test_disabled_version_refuses_only_that_version);
  tcase_add_test(t, test_wrong_state_calls_are_failed_precondition);
  tcase_add_test(t, test_requester_cannot_approve_own_request);
  tcase_add_test(t, test_approval_after_the_window_is_refused);
  tcase_add_test(t, test_cancel_during_the_waiting_period_restores_the_key);
  suite_add_tcase(s, t);

  t = tcase_create("shredding");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_destroyed_tenant_is_gone_for_everyone_after_restart_too);
  tcase_add_test(t, test_destroyed_version_leaves_the_others_working);
  tcase_add_test(t, test_due_destruction_is_executed_by_the_timer);
  suite_add_tcase(s, t);

  t = tcase_create("m-of-n");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_three_of_n_needs_two_approvals_besides_the_requester);
  suite_add_tcase(s, t);

  t = tcase_create("kmsctl");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_kmsctl_officer_workflow);
  tcase_add_test(t, test_kmsctl_bad_arguments_fail_clearly_and_change_nothing);
  suite_add_tcase(s, t);
  return s;
}

int
main(void)
{
  harness_setup(LC_CONF);
  /* Two more officers for dual control, issued by the dev CA like the others. */
  char script[2048], cmd[600];
  snprintf(script, sizeof(script),
           "set -e\n. '%s/scripts/lib/devenv.sh'\ntkms_tmpdir\nfor p in officer2 officer3; do\n"
           "  tkms_client_ext \"$TKMS_TMP/client.ext\" $p\n"
           "  tkms_ensure_leaf '%s'/pki/clients/$p.crt '%s'/pki/clients/$p.key $p "
           "\"$TKMS_TMP/client.ext\" '%s'/pki/ca.crt '%s'/pki/ca.key\ndone\n",
           getenv("SRCDIR") != NULL ? getenv("SRCDIR") : ".", harness_dir(), harness_dir(),
           harness_dir(), harness_dir());
  harness_write_file("officers.sh", script);
  snprintf(cmd, sizeof(cmd), "bash '%s/officers.sh' 2>/dev/null", harness_dir());
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot issue officer2/officer3 certificates\n");
    return 99;
  }
  harness_write_file("lc-policy/lifecycle-tests.json", LC_POLICY);
  char line[600];
  snprintf(line, sizeof(line), "policy = %s/lc-policy", harness_dir());
  harness_append_conf(line);
  harness_start_kmsd();
  clients_new();
  SRunner *sr = srunner_create(lifecycle_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* tests share the one kmsd process */
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  clients_free();
  return harness_finish(failed); /* stops kmsd (its exit status counts) and cleans up */
}
