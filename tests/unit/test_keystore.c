/* Unit tests for the keystore (SQLite backend): durability settings, schema, tenants, rotation, use counters. */
#include <check.h>
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keystore.h"
#include "kms_err.h"
#include "kms_time.h"

/* Migrations applied to a new keystore: 1 tenants and KEKs, 2 key lifecycle. */
#define SCHEMA_LATEST 6 /* 3: session keys (docs/SESSIONS.md); 4: root keys, 5: no token under a destroyed root (docs/LIFECYCLE.md); 6: state change counter (kmsd/kekcache.h) */

/* Each test gets a fresh directory; the fixture runs in the test's own process. */
static char dir[PATH_MAX / 2];
static char dbpath[PATH_MAX];
static char url[PATH_MAX + 16];

static void setup(void) {
  const char *base = getenv("TMPDIR");

  snprintf(dir, sizeof(dir), "%s/test_keystore.XXXXXX", base != NULL ? base : "/tmp");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(dbpath, sizeof(dbpath), "%s/kms.db", dir);
  snprintf(url, sizeof(url), "sqlite:%s", dbpath);
}

static void teardown(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[PATH_MAX * 2];

  if (d == NULL) {
    return;
  }
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
      continue;
    }
    snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static keystore *open_ok(void) {
  keystore *ks = NULL;
  char err[256] = "";
  int r = keystore_open(&ks, url, err, sizeof(err));

  ck_assert_msg(r == KMS_OK, "keystore_open: %d %s", r, err);
  ck_assert_ptr_nonnull(ks);
  return ks;
}

/* A KEK whose every field is distinctive, so a round trip that drops one fails. */
static struct ks_kek make_kek(const char *tenant, uint32_t version, uint8_t fill) {
  struct ks_kek k;
  size_t i;

  memset(&k, 0, sizeof(k));
  ck_assert_uint_lt(strlen(tenant), sizeof(k.tenant_id));
  memcpy(k.tenant_id, tenant, strlen(tenant) + 1);
  k.version = version;
  k.state = KS_KEK_ACTIVE;
  k.wrap_mech = 0x210Bu + fill;
  k.root_version = 7u + fill;
  k.token_len = 40 + (size_t)(fill % 8);
  for (i = 0; i < k.token_len; i++) {
    k.token[i] = (uint8_t)(fill * 31 + i);
  }
  k.created_ms = 1700000000123LL + fill;
  return k;
}

static void assert_kek_eq(const struct ks_kek *a, const struct ks_kek *b) {
  ck_assert_str_eq(a->tenant_id, b->tenant_id);
  ck_assert_uint_eq(a->version, b->version);
  ck_assert_int_eq(a->state, b->state);
  ck_assert_uint_eq(a->wrap_mech, b->wrap_mech);
  ck_assert_uint_eq(a->root_version, b->root_version);
  ck_assert_uint_eq(a->token_len, b->token_len);
  ck_assert_mem_eq(a->token, b->token, a->token_len);
  ck_assert_int_eq(a->created_ms, b->created_ms);
  ck_assert_uint_eq(a->uses, b->uses);
}

/* Direct access for inspecting (and tampering with) the file behind the keystore's back. */
static sqlite3 *raw_open(void) {
  sqlite3 *db = NULL;

  ck_assert_int_eq(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v;

  ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                sqlite3_errmsg(db));
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static void raw_exec(sqlite3 *db, const char *sql) {
  int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

  ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, sqlite3_errmsg(db));
}

static int64_t now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(open_creates_latest_schema_in_wal_mode) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1);
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  struct stat sb;
  char wal[PATH_MAX + 8];
  int v = -1;

  ck_assert_int_eq(stat(dbpath, &sb), 0);
  ck_assert_int_eq(keystore_schema_version(ks, &v), KMS_OK);
  ck_assert_int_eq(v, SCHEMA_LATEST);
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  snprintf(wal, sizeof(wal), "%s-wal", dbpath);
  ck_assert_msg(stat(wal, &sb) == 0, "no -wal file after a write");

  db = raw_open();
  ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM schema_version"), SCHEMA_LATEST);
  ck_assert_int_eq(raw_int(db, "SELECT max(version) FROM schema_version"), SCHEMA_LATEST);
  ck_assert_int_ge(raw_int(db, "SELECT applied_ms FROM schema_version"), 1600000000000LL);
  sqlite3_close(db);
  keystore_close(ks);
}
END_TEST

START_TEST(schema_ties_versions_to_tenants) {
  /* foreign_keys=ON (set per handle) only helps if the schema declares the reference. */
  keystore *ks = open_ok();
  sqlite3 *db;

  keystore_close(ks);
  db = raw_open();
  ck_assert_int_eq(
      raw_int(db, "SELECT count(*) FROM pragma_foreign_key_list('kek_versions')"
                  " WHERE \"table\" = 'tenants' AND \"from\" = 'tenant_id'"),
      1);
  sqlite3_close(db);
}
END_TEST

START_TEST(files_are_created_mode_0600_whatever_the_umask) {
  mode_t old = umask(0);
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1);
  struct stat sb;
  char p[PATH_MAX + 8];

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  ck_assert_int_eq(stat(dbpath, &sb), 0);
  ck_assert_uint_eq(sb.st_mode & 0777, 0600);
  snprintf(p, sizeof(p), "%s-wal", dbpath);
  ck_assert_int_eq(stat(p, &sb), 0);
  ck_assert_uint_eq(sb.st_mode & 0777, 0600);
  snprintf(p, sizeof(p), "%s-shm", dbpath);
  ck_assert_int_eq(stat(p, &sb), 0);
  ck_assert_uint_eq(sb.st_mode & 0777, 0600);
  keystore_close(ks);
  umask(old);
}
END_TEST

START_TEST(no_temporary_files_are_left_behind) {
  keystore *ks = open_ok();
  DIR *d;
  struct dirent *e;

  d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    ck_assert_msg(strstr(e->d_name, ".tmp-") == NULL, "left behind: %s", e->d_name);
  }
  closedir(d);
  keystore_close(ks);
}
END_TEST

START_TEST(reopen_keeps_data) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 3), got;
  int v = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  keystore_close(ks);
  ks = open_ok();
  ck_assert_int_eq(keystore_schema_version(ks, &v), KMS_OK);
  ck_assert_int_eq(v, SCHEMA_LATEST);
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  assert_kek_eq(&got, &k);
  keystore_close(ks);
}
END_TEST

START_TEST(tenant_create_round_trips_every_field) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 5), got;
  struct ks_tenant t;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);

  ck_assert_int_eq(keystore_tenant_get(ks, "acme", &t), KMS_OK);
  ck_assert_str_eq(t.tenant_id, "acme");
  ck_assert_int_eq(t.state, KS_TENANT_ACTIVE);
  ck_assert_uint_eq(t.current_version, 1);
  ck_assert_int_eq(t.created_ms, k.created_ms);

  memset(&got, 0xAA, sizeof(got));
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  assert_kek_eq(&got, &k);
  ck_assert_uint_eq(got.uses, 0);

  memset(&got, 0xAA, sizeof(got));
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  assert_kek_eq(&got, &k);
  keystore_close(ks);
}
END_TEST

START_TEST(tenant_create_with_max_size_token) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  size_t i;

  k.token_len = HSM_KEY_TOKEN_MAX;
  for (i = 0; i < k.token_len; i++) {
    k.token[i] = (uint8_t)(255 - i);
  }
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  assert_kek_eq(&got, &k);
  keystore_close(ks);
}
END_TEST

START_TEST(created_ms_zero_means_now) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  struct ks_tenant t;
  int64_t before = now_ms(), after;

  k.created_ms = 0;
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  after = now_ms();
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  ck_assert_int_ge(got.created_ms, before);
  ck_assert_int_le(got.created_ms, after);
  ck_assert_int_eq(keystore_tenant_get(ks, "acme", &t), KMS_OK);
  ck_assert_int_eq(t.created_ms, got.created_ms);
  keystore_close(ks);
}
END_TEST

START_TEST(duplicate_create_is_refused_and_changes_nothing) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), k2 = make_kek("acme", 1, 2), got;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &k2), KMS_ERR_ALREADY_EXISTS);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  assert_kek_eq(&got, &k);
  /* The handle is not left inside a transaction: a later write goes through. */
  k2 = make_kek("other", 1, 2);
  ck_assert_int_eq(keystore_tenant_create(ks, &k2), KMS_OK);
  keystore_close(ks);
}
END_TEST

START_TEST(unknown_tenant_or_version_is_not_found) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  struct ks_tenant t;
  uint64_t total = 99;

  ck_assert_int_eq(keystore_tenant_get(ks, "nobody", &t), KMS_ERR_NOT_FOUND);
  ck_assert_str_eq(t.tenant_id, "");
  ck_assert_int_eq(keystore_kek_current(ks, "nobody", &got), KMS_ERR_NOT_FOUND);
  ck_assert_int_eq(keystore_kek_get(ks, "nobody", 1, &got), KMS_ERR_NOT_FOUND);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "nobody", 1, 1, 10, &total),
                   KMS_ERR_NOT_FOUND);
  ck_assert_uint_eq(total, 0);
  k.version = 2;
  k.tenant_id[0] = 'n';
  ck_assert_int_eq(keystore_kek_add_version(ks, &k), KMS_ERR_NOT_FOUND);

  k = make_kek("acme", 1, 1);
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  memset(&got, 0xAA, sizeof(got));
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 2, &got), KMS_ERR_NOT_FOUND);
  ck_assert_uint_eq(got.token_len, 0); /* outputs are zeroed on failure */
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 0, &got), KMS_ERR_NOT_FOUND);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", UINT32_MAX, &got), KMS_ERR_NOT_FOUND);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 2, 1, 10, &total), KMS_ERR_NOT_FOUND);
  ck_assert_int_eq(keystore_kek_get(ks, "acm", 1, &got), KMS_ERR_NOT_FOUND);
  keystore_close(ks);
}
END_TEST

START_TEST(add_version_rotates) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2),
                k3 = make_kek("acme", 3, 3), got;
  struct ks_tenant t;
  sqlite3 *db;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_kek_add_version(ks, &k2), KMS_OK);

  ck_assert_int_eq(keystore_tenant_get(ks, "acme", &t), KMS_OK);
  ck_assert_uint_eq(t.current_version, 2);
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  assert_kek_eq(&got, &k2);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_KEK_DECRYPT_ONLY);
  ck_assert_mem_eq(got.token, k1.token, k1.token_len); /* the old token stays readable */

  ck_assert_int_eq(keystore_kek_add_version(ks, &k3), KMS_OK);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 2, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_KEK_DECRYPT_ONLY);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_KEK_DECRYPT_ONLY);
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  assert_kek_eq(&got, &k3);

  /* Exactly one active version, and the demotions were time-stamped. */
  db = raw_open();
  ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM kek_versions WHERE state = 1"), 1);
  ck_assert_int_gt(raw_int(db, "SELECT state_changed_ms FROM kek_versions WHERE version = 1"),
                   k1.created_ms);
  ck_assert_int_eq(raw_int(db, "SELECT state_changed_ms FROM kek_versions WHERE version = 3"),
                   k3.created_ms);
  sqlite3_close(db);
  keystore_close(ks);
}
END_TEST

START_TEST(add_version_leaves_other_tenants_alone) {
  keystore *ks = open_ok();
  struct ks_kek a = make_kek("acme", 1, 1), b = make_kek("bravo", 1, 2), a2 = make_kek("acme", 2, 3),
                got;

  ck_assert_int_eq(keystore_tenant_create(ks, &a), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &b), KMS_OK);
  ck_assert_int_eq(keystore_kek_add_version(ks, &a2), KMS_OK);
  ck_assert_int_eq(keystore_kek_current(ks, "bravo", &got), KMS_OK);
  assert_kek_eq(&got, &b);
  keystore_close(ks);
}
END_TEST

START_TEST(add_version_with_wrong_number_changes_nothing) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), bad = make_kek("acme", 3, 3), got;
  struct ks_tenant t;
  sqlite3 *db;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_kek_add_version(ks, &bad), KMS_ERR_INVALID_ARGUMENT);
  bad.version = 1;
  ck_assert_int_eq(keystore_kek_add_version(ks, &bad), KMS_ERR_ALREADY_EXISTS);

  /* A rotation that lost the race to another one. */
  bad = make_kek("acme", 2, 2);
  ck_assert_int_eq(keystore_kek_add_version(ks, &bad), KMS_OK);
  bad = make_kek("acme", 2, 4);
  ck_assert_int_eq(keystore_kek_add_version(ks, &bad), KMS_ERR_ALREADY_EXISTS);

  ck_assert_int_eq(keystore_tenant_get(ks, "acme", &t), KMS_OK);
  ck_assert_uint_eq(t.current_version, 2);
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  ck_assert_mem_eq(got.token, make_kek("acme", 2, 2).token, got.token_len);
  ck_assert_int_eq(got.state, KS_KEK_ACTIVE);
  db = raw_open();
  ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM kek_versions"), 2);
  sqlite3_close(db);
  keystore_close(ks);
}
END_TEST

START_TEST(add_version_failing_midway_rolls_back_the_demotion) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2), got;
  struct ks_tenant t;
  sqlite3 *db;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  /* Make the insert fail after the demotion of v1 has run inside the transaction. */
  db = raw_open();
  raw_exec(db, "CREATE TRIGGER no_v2 BEFORE INSERT ON kek_versions WHEN NEW.version = 2"
               " BEGIN SELECT RAISE(ABORT, 'test'); END");
  /* A trigger's refusal reads as a rule of the schema: FAILED_PRECONDITION. */
  ck_assert_int_eq(keystore_kek_add_version(ks, &k2), KMS_ERR_FAILED_PRECONDITION);

  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_KEK_ACTIVE);
  ck_assert_int_eq(keystore_tenant_get(ks, "acme", &t), KMS_OK);
  ck_assert_uint_eq(t.current_version, 1);
  /* The write lock was released: another connection can write at once. */
  sqlite3_busy_timeout(db, 0);
  raw_exec(db, "DROP TRIGGER no_v2");
  sqlite3_close(db);
  ck_assert_int_eq(keystore_kek_add_version(ks, &k2), KMS_OK);
  keystore_close(ks);
}
END_TEST

START_TEST(reserve_uses_accumulates_up_to_the_limit) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  uint64_t total = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 40, 100, &total), KMS_OK);
  ck_assert_uint_eq(total, 40);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 50, 100, &total), KMS_OK);
  ck_assert_uint_eq(total, 90);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 11, 100, &total), KMS_ERR_KEY_LIMIT);
  ck_assert_uint_eq(total, 0);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_uint_eq(got.uses, 90);
  /* Exactly reaching the limit is allowed; one more is not. */
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 10, 100, &total), KMS_OK);
  ck_assert_uint_eq(total, 100);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 1, 100, &total), KMS_ERR_KEY_LIMIT);
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  ck_assert_uint_eq(got.uses, 100);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 0, 100, NULL), KMS_OK);
  keystore_close(ks);
}
END_TEST

START_TEST(reserve_uses_survives_huge_numbers) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  uint64_t total = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 5, UINT64_MAX, &total), KMS_OK);
  ck_assert_uint_eq(total, 5);
  /* uses + n would overflow 64 bits: refused, not wrapped. */
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, (uint64_t)INT64_MAX, UINT64_MAX,
                                             &total),
                   KMS_ERR_KEY_LIMIT);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, UINT64_MAX, UINT64_MAX, &total),
                   KMS_ERR_KEY_LIMIT);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 11, 10, &total), KMS_ERR_KEY_LIMIT);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_uint_eq(got.uses, 5);
  keystore_close(ks);
}
END_TEST

START_TEST(reserve_uses_counts_per_version) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2), got;
  uint64_t total = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 7, 100, &total), KMS_OK);
  k2.uses = 12345; /* ignored: a new version has reserved nothing */
  ck_assert_int_eq(keystore_kek_add_version(ks, &k2), KMS_OK);
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_OK);
  ck_assert_uint_eq(got.uses, 0);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 2, 3, 100, &total), KMS_OK);
  ck_assert_uint_eq(total, 3);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_uint_eq(got.uses, 7);
  keystore_close(ks);
}
END_TEST

START_TEST(two_handles_see_each_others_writes) {
  keystore *a = open_ok(), *b = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2), got;
  uint64_t total = 0;

  ck_assert_int_eq(keystore_kek_current(b, "acme", &got), KMS_ERR_NOT_FOUND);
  ck_assert_int_eq(keystore_tenant_create(a, &k1), KMS_OK);
  ck_assert_int_eq(keystore_kek_current(b, "acme", &got), KMS_OK);
  assert_kek_eq(&got, &k1);
  ck_assert_int_eq(keystore_kek_add_version(b, &k2), KMS_OK);
  ck_assert_int_eq(keystore_kek_current(a, "acme", &got), KMS_OK);
  assert_kek_eq(&got, &k2);
  ck_assert_int_eq(keystore_kek_reserve_uses(a, "acme", 2, 4, 100, &total), KMS_OK);
  ck_assert_int_eq(keystore_kek_reserve_uses(b, "acme", 2, 4, 100, &total), KMS_OK);
  ck_assert_uint_eq(total, 8);
  /* The rotation from b is seen by a's duplicate check too. */
  ck_assert_int_eq(keystore_kek_add_version(a, &k2), KMS_ERR_ALREADY_EXISTS);
  keystore_close(a);
  keystore_close(b);
}
END_TEST

#define RESERVERS 4
#define RESERVATIONS 25

static void *reserve_thread(void *arg) {
  keystore *ks = NULL;
  uintptr_t failures = 0;
  uint64_t total;
  int i;

  (void)arg;
  if (keystore_open(&ks, url, NULL, 0) != KMS_OK) {
    return (void *)(uintptr_t)RESERVATIONS;
  }
  for (i = 0; i < RESERVATIONS; i++) {
    if (keystore_kek_reserve_uses(ks, "acme", 1, 1, 1000, &total) != KMS_OK) {
      failures++;
    }
  }
  keystore_close(ks);
  return (void *)failures;
}

START_TEST(concurrent_reservations_from_many_handles_are_all_counted) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  pthread_t th[RESERVERS];
  void *res;
  int i;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  for (i = 0; i < RESERVERS; i++) {
    ck_assert_int_eq(pthread_create(&th[i], NULL, reserve_thread, NULL), 0);
  }
  for (i = 0; i < RESERVERS; i++) {
    ck_assert_int_eq(pthread_join(th[i], &res), 0);
    ck_assert_uint_eq((uintptr_t)res, 0);
  }
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_uint_eq(got.uses, RESERVERS * RESERVATIONS);
  keystore_close(ks);
}
END_TEST

#define OPENERS 6
#define OPEN_ROUNDS 25

/*
 * Several processes creating the same keystore at once must all succeed (the
 * switch to WAL on a new file races) and apply each migration exactly once.
 * The race is narrow, so run it on many fresh files.
 */
START_TEST(concurrent_first_opens_all_succeed_and_migrate_once) {
  char round_url[sizeof(url) + 16], round_path[sizeof(dbpath) + 16];
  pid_t kids[OPENERS];
  sqlite3 *db;
  int i, round, status;

  for (round = 0; round < OPEN_ROUNDS; round++) {
    snprintf(round_path, sizeof(round_path), "%s/race%d.db", dir, round);
    snprintf(round_url, sizeof(round_url), "sqlite:%s", round_path);
    for (i = 0; i < OPENERS; i++) {
      kids[i] = fork();
      ck_assert_int_ge(kids[i], 0);
      if (kids[i] == 0) {
        keystore *ks = NULL;
        int r = keystore_open(&ks, round_url, NULL, 0);
        keystore_close(ks);
        _exit(r == KMS_OK ? 0 : 1);
      }
    }
    for (i = 0; i < OPENERS; i++) {
      ck_assert_int_eq(waitpid(kids[i], &status, 0), kids[i]);
      ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                    "an opener failed in round %d", round);
    }
    ck_assert_int_eq(sqlite3_open_v2(round_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM schema_version"), SCHEMA_LATEST);
    sqlite3_close(db);
  }
}
END_TEST

START_TEST(newer_schema_version_is_refused) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1);
  char err[256] = "";
  sqlite3 *db;
  int r;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  keystore_close(ks);
  db = raw_open();
  raw_exec(db, "INSERT INTO schema_version (version, applied_ms) VALUES (999, 1)");
  sqlite3_close(db);

  ks = (keystore *)&r; /* must be reset to NULL on failure */
  r = keystore_open(&ks, url, err, sizeof(err));
  ck_assert_int_eq(r, KMS_ERR_FAILED_PRECONDITION);
  ck_assert_ptr_null(ks);
  ck_assert_msg(strstr(err, "999") != NULL, "error does not name the version: %s", err);
  db = raw_open();
  ck_assert_int_eq(raw_int(db, "SELECT max(version) FROM schema_version"), 999);
  ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM tenants"), 1);
  sqlite3_close(db);
}
END_TEST

START_TEST(bad_urls_are_refused) {
  static const char *const bad[] = {
      "postgres://user:hunter2@db/kms", "kms.db", ":/x", "", "sqlite:", "sqlite:///",
      "sqlite::memory:", "sqlite://host/x.db", "SQLITE:/x.db",
  };
  keystore *ks = NULL;
  char err[256];
  size_t i;
  int r;

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    err[0] = '\0';
    r = keystore_open(&ks, bad[i], err, sizeof(err));
    ck_assert_msg(r != KMS_OK, "accepted %s", bad[i]);
    ck_assert_ptr_null(ks);
    ck_assert_msg(err[0] != '\0', "no message for %s", bad[i]);
    ck_assert_msg(strstr(err, "hunter2") == NULL, "password echoed: %s", err);
  }
  ck_assert_int_eq(keystore_open(&ks, "postgres://db/kms", err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_int_eq(keystore_open(&ks, "nothing-here", err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_int_eq(keystore_open(&ks, NULL, err, sizeof(err)), KMS_ERR_CONFIG);
  ck_assert_int_eq(keystore_open(NULL, url, err, sizeof(err)), KMS_ERR_INVALID_ARGUMENT);
  /* No message buffer is fine too. */
  ck_assert_int_eq(keystore_open(&ks, "ftp:/x", NULL, 0), KMS_ERR_CONFIG);
}
END_TEST

START_TEST(sqlite_url_forms_are_accepted) {
  keystore *ks = NULL;
  char u[PATH_MAX + 32];
  char err[256] = "";

  snprintf(u, sizeof(u), "sqlite://%s", dbpath);
  ck_assert_msg(keystore_open(&ks, u, err, sizeof(err)) == KMS_OK, "%s", err);
  keystore_close(ks);
  keystore_close(NULL);
}
END_TEST

START_TEST(missing_directory_is_an_io_error) {
  keystore *ks = NULL;
  char u[PATH_MAX + 32];
  char err[256] = "";

  snprintf(u, sizeof(u), "sqlite:%s/no/such/dir/kms.db", dir);
  ck_assert_int_eq(keystore_open(&ks, u, err, sizeof(err)), KMS_ERR_IO);
  ck_assert_ptr_null(ks);
  ck_assert_str_ne(err, "");
}
END_TEST

START_TEST(non_database_file_is_refused) {
  keystore *ks = NULL;
  char err[256] = "";
  FILE *f = fopen(dbpath, "w");

  ck_assert_ptr_nonnull(f);
  fputs("this is not an SQLite database, just some text long enough to have a header.....\n",
        f);
  fclose(f);
  ck_assert_int_ne(keystore_open(&ks, url, err, sizeof(err)), KMS_OK);
  ck_assert_ptr_null(ks);
  ck_assert_str_ne(err, "");
}
END_TEST

START_TEST(tenant_id_length_is_checked) {
  keystore *ks = open_ok();
  char id[KS_TENANT_ID_MAX + 2];
  struct ks_kek k, got;
  struct ks_tenant t;
  uint64_t total;

  memset(id, 'x', KS_TENANT_ID_MAX);
  id[KS_TENANT_ID_MAX] = '\0';
  k = make_kek(id, 1, 1);
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  ck_assert_int_eq(keystore_kek_current(ks, id, &got), KMS_OK);
  assert_kek_eq(&got, &k);
  ck_assert_int_eq(keystore_tenant_get(ks, id, &t), KMS_OK);
  ck_assert_str_eq(t.tenant_id, id);

  id[KS_TENANT_ID_MAX] = 'x';
  id[KS_TENANT_ID_MAX + 1] = '\0';
  ck_assert_int_eq(keystore_tenant_get(ks, id, &t), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_kek_current(ks, id, &got), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_kek_get(ks, id, 1, &got), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, id, 1, 1, 10, &total),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_tenant_get(ks, "", &t), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_tenant_get(ks, NULL, &t), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_kek_current(ks, NULL, &got), KMS_ERR_INVALID_ARGUMENT);

  /* A kek whose id fills the array without a terminator. */
  memset(k.tenant_id, 'y', sizeof(k.tenant_id));
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_INVALID_ARGUMENT);
  k.tenant_id[0] = '\0';
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_INVALID_ARGUMENT);
  keystore_close(ks);
}
END_TEST

START_TEST(malformed_keks_are_refused) {
  keystore *ks = open_ok();
  struct ks_kek k;
  sqlite3 *db;

  k = make_kek("acme", 1, 1);
  k.token_len = HSM_KEY_TOKEN_MAX + 1;
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_INVALID_ARGUMENT);
  k.token_len = 0;
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_INVALID_ARGUMENT);
  k = make_kek("acme", 2, 1);
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_INVALID_ARGUMENT);
  k = make_kek("acme", 1, 1);
  k.state = KS_KEK_DESTROYED;
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_INVALID_ARGUMENT);
  k.state = KS_KEK_ACTIVE;
  k.created_ms = -1;
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_tenant_create(ks, NULL), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_tenant_create(NULL, &k), KMS_ERR_INVALID_ARGUMENT);
  k = make_kek("acme", 0, 1);
  ck_assert_int_eq(keystore_kek_add_version(ks, &k), KMS_ERR_INVALID_ARGUMENT);

  db = raw_open();
  ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM tenants"), 0);
  ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM kek_versions"), 0);
  sqlite3_close(db);
  keystore_close(ks);
}
END_TEST

START_TEST(damaged_rows_are_reported_not_trusted) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  sqlite3 *db;

  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  db = raw_open();
  raw_exec(db, "UPDATE kek_versions SET key_token = zeroblob(200)");
  sqlite3_close(db);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_ERR_INTERNAL);
  ck_assert_uint_eq(got.token_len, 0);
  keystore_close(ks);
}
END_TEST

START_TEST(busy_database_is_unavailable_and_changes_nothing) {
  keystore *ks = open_ok();
  struct ks_kek k = make_kek("acme", 1, 1), got;
  sqlite3 *db = raw_open();

  /* Another writer holds the lock past our 5 s busy timeout. */
  raw_exec(db, "BEGIN IMMEDIATE");
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_ERR_UNAVAILABLE);
  raw_exec(db, "ROLLBACK");
  ck_assert_int_eq(keystore_kek_current(ks, "acme", &got), KMS_ERR_NOT_FOUND);
  ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  sqlite3_close(db);
  keystore_close(ks);
}
END_TEST

START_TEST(schema_version_needs_arguments) {
  keystore *ks = open_ok();
  int v = 5;

  ck_assert_int_eq(keystore_schema_version(NULL, &v), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(v, 0);
  ck_assert_int_eq(keystore_schema_version(ks, NULL), KMS_ERR_INVALID_ARGUMENT);
  keystore_close(ks);
}
END_TEST


/* ---- Key lifecycle (schema 2) ------------------------------------------------------ */

#define OFFICER_A "spiffe://tenantkms.dev/officer-a"
#define OFFICER_B "spiffe://tenantkms.dev/officer-b"
#define OFFICER_C "spiffe://tenantkms.dev/officer-c"

/* A pending request for |action| on acme, made by officer A, requiring |m| officers. */
static struct ks_request make_request(int action, uint32_t version, uint32_t m, int64_t window) {
  struct ks_request q;

  memset(&q, 0, sizeof(q));
  q.action = action;
  snprintf(q.tenant_id, sizeof(q.tenant_id), "acme");
  q.version = version;
  q.waiting_days = 7;
  snprintf(q.requested_by, sizeof(q.requested_by), "%s", OFFICER_A);
  q.requested_ms = now_ms();
  q.expires_ms = q.requested_ms + window;
  q.approvals_required = m;
  return q;
}

static int event_count(keystore *ks, const char *tenant, const char *event, const char *by) {
  struct ks_event *ev = NULL;
  size_t n = 0, i;
  int found = 0;

  ck_assert_int_eq(keystore_event_list(ks, tenant, 1000, &ev, &n), KMS_OK);
  for (i = 0; i < n; i++) {
    found += strcmp(ev[i].event, event) == 0 && (by == NULL || strcmp(ev[i].by, by) == 0);
  }
  free(ev);
  return found;
}

START_TEST(migration_2_upgrades_a_schema_1_keystore_in_place) {
  /* A keystore written by the previous kmsd (schema 1 only) keeps its data. */
  sqlite3 *db = NULL;
  keystore *ks;
  struct ks_tenant t;
  struct ks_kek got;
  int v = 0;

  ck_assert_int_eq(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                   SQLITE_OK);
  raw_exec(db, "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY,"
               " applied_ms INTEGER NOT NULL);"
               "CREATE TABLE tenants (tenant_id TEXT NOT NULL PRIMARY KEY, state INTEGER NOT NULL,"
               " current_version INTEGER NOT NULL CHECK (current_version >= 1),"
               " created_ms INTEGER NOT NULL) STRICT, WITHOUT ROWID;"
               "CREATE TABLE kek_versions (tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id),"
               " version INTEGER NOT NULL CHECK (version >= 1), state INTEGER NOT NULL,"
               " wrap_mech INTEGER NOT NULL, root_version INTEGER NOT NULL,"
               " key_token BLOB NOT NULL, created_ms INTEGER NOT NULL,"
               " uses INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),"
               " state_changed_ms INTEGER NOT NULL, PRIMARY KEY (tenant_id, version))"
               " STRICT, WITHOUT ROWID;"
               "INSERT INTO schema_version VALUES (1, 1);"
               "INSERT INTO tenants VALUES ('old', 1, 1, 1700000000000);"
               "INSERT INTO kek_versions VALUES ('old', 1, 1, 8459, 1, x'0102030405060708', "
               " 1700000000000, 5, 1700000000000);");
  sqlite3_close(db);
  ks = open_ok();
  ck_assert_int_eq(keystore_schema_version(ks, &v), KMS_OK);
  ck_assert_int_eq(v, SCHEMA_LATEST);
  ck_assert_int_eq(keystore_tenant_get(ks, "old", &t), KMS_OK);
  ck_assert_int_eq(t.state, KS_TENANT_ACTIVE);
  ck_assert_int_eq(t.state_changed_ms, 1700000000000LL);
  ck_assert_uint_eq(t.rotation_period_days, 0);
  ck_assert_int_eq(keystore_kek_current(ks, "old", &got), KMS_OK);
  ck_assert_uint_eq(got.uses, 5);
  ck_assert_int_eq(got.tenant_state, KS_TENANT_ACTIVE);
  keystore_close(ks);
}
END_TEST

START_TEST(rotate_records_who_and_refuses_an_inactive_tenant) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2), k3 = make_kek("acme", 3, 3);
  struct ks_change c = {.tenant_id = "acme", .from_states = KS_STATE_BIT(KS_TENANT_ACTIVE),
                        .to_state = KS_TENANT_DISABLED, .by = OFFICER_A, .event = "disabled"};
  struct ks_version_info *vs = NULL;
  size_t n = 0;
  int st = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_kek_rotate(ks, &k2, OFFICER_A, "why not"), KMS_OK);
  ck_assert_int_eq(keystore_kek_list(ks, "acme", &vs, &n), KMS_OK);
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(vs[0].state, KS_KEK_DECRYPT_ONLY);
  ck_assert_str_eq(vs[0].state_changed_by, OFFICER_A);
  ck_assert_int_eq(vs[1].state, KS_KEK_ACTIVE);
  free(vs);
  ck_assert_int_eq(event_count(ks, "acme", "rotated", OFFICER_A), 1);
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_OK);
  ck_assert_int_eq(st, KS_TENANT_DISABLED);
  ck_assert_int_eq(keystore_kek_rotate(ks, &k3, OFFICER_A, NULL), KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 3, &k3), KMS_ERR_NOT_FOUND);
  /* The use-limit path rotates on kmsd's own authority, whatever the tenant's state. */
  k3 = make_kek("acme", 3, 3);
  ck_assert_int_eq(keystore_kek_add_version(ks, &k3), KMS_OK);
  ck_assert_int_eq(event_count(ks, "acme", "rotated", "kmsd"), 1);
  keystore_close(ks);
}
END_TEST

START_TEST(change_state_checks_the_from_states_and_says_the_state) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2), got;
  struct ks_change c = {.tenant_id = "acme", .version = 1,
                        .from_states = KS_STATE_BIT(KS_KEK_DISABLED), .to_state = KS_KEK_ACTIVE,
                        .by = OFFICER_A, .event = "enabled"};
  int st = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(st, KS_KEK_ACTIVE);
  /* Disable v1, rotate, enable v1: it comes back decrypt-only, not active. */
  c.from_states = KS_STATE_BIT(KS_KEK_ACTIVE);
  c.to_state = KS_KEK_DISABLED;
  c.event = "disabled";
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_OK);
  ck_assert_int_eq(keystore_kek_add_version(ks, &k2), KMS_OK);
  c.from_states = KS_STATE_BIT(KS_KEK_DISABLED);
  c.to_state = KS_KEK_ACTIVE;
  c.event = "enabled";
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_OK);
  ck_assert_int_eq(st, KS_KEK_DECRYPT_ONLY);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_KEK_DECRYPT_ONLY);
  /* Unknown targets; destruction never through this door. */
  c.version = 9;
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_ERR_NOT_FOUND);
  c.version = 1;
  c.to_state = KS_KEK_DESTROYED;
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_ERR_INVALID_ARGUMENT);
  keystore_close(ks);
}
END_TEST

START_TEST(dual_control_needs_distinct_officers_within_the_window) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1);
  struct ks_request q = make_request(KS_ACTION_DISABLE_TENANT, 0, 3, 60000), dup, got;
  struct ks_tenant t;
  int executed = 1, why = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_request_create(ks, &q), KMS_OK);
  ck_assert_uint_gt(q.id, 0);
  dup = make_request(KS_ACTION_DISABLE_TENANT, 0, 3, 60000);
  ck_assert_int_eq(keystore_request_create(ks, &dup), KMS_ERR_ALREADY_EXISTS);
  ck_assert_uint_eq(dup.id, q.id);
  /* The requester cannot approve; nor can anyone twice. */
  ck_assert_int_eq(keystore_request_approve(ks, q.id, OFFICER_A, now_ms(), &got, &executed, &why),
                   KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(why, KS_APPROVE_SELF);
  ck_assert_int_eq(executed, 0);
  ck_assert_int_eq(keystore_request_approve(ks, q.id, OFFICER_B, now_ms(), &got, &executed, &why),
                   KMS_OK);
  ck_assert_int_eq(executed, 0); /* 2 of 3 */
  ck_assert_uint_eq(got.n_approved, 2);
  ck_assert_str_eq(got.approved_by[0], OFFICER_A);
  ck_assert_str_eq(got.approved_by[1], OFFICER_B);
  ck_assert_int_eq(keystore_request_approve(ks, q.id, OFFICER_B, now_ms(), &got, &executed, &why),
                   KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(why, KS_APPROVE_TWICE);
  ck_assert_int_eq(keystore_tenant_get(ks, "acme", &t), KMS_OK);
  ck_assert_int_eq(t.state, KS_TENANT_ACTIVE);
  ck_assert_int_eq(keystore_request_approve(ks, q.id, OFFICER_C, now_ms(), &got, &executed, &why),
                   KMS_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_int_eq(got.state, KS_REQUEST_EXECUTED);
  ck_assert_int_eq(keystore_tenant_get(ks, "acme", &t), KMS_OK);
  ck_assert_int_eq(t.state, KS_TENANT_DISABLED);
  ck_assert_str_eq(t.state_changed_by, OFFICER_C);
  /* Closed requests take no more approvals. */
  ck_assert_int_eq(keystore_request_approve(ks, q.id, "spiffe://x/d", now_ms(), &got, &executed,
                                            &why),
                   KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(why, KS_APPROVE_CLOSED);
  ck_assert_int_eq(keystore_request_approve(ks, 12345, OFFICER_B, now_ms(), &got, &executed, &why),
                   KMS_ERR_NOT_FOUND);
  keystore_close(ks);
}
END_TEST

START_TEST(expired_request_cannot_be_approved_and_stays_expired) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1);
  struct ks_request q = make_request(KS_ACTION_DESTROY_VERSION, 1, 2, 1000), got;
  struct ks_request *list = NULL;
  size_t n = 0;
  int executed = 1, why = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_request_create(ks, &q), KMS_OK);
  ck_assert_int_eq(keystore_request_approve(ks, q.id, OFFICER_B, q.expires_ms, &got, &executed,
                                            &why),
                   KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(why, KS_APPROVE_EXPIRED);
  ck_assert_int_eq(got.state, KS_REQUEST_EXPIRED);
  ck_assert_int_eq(keystore_request_get(ks, q.id, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_REQUEST_EXPIRED);
  ck_assert_int_eq(keystore_request_list(ks, NULL, 0, &list, &n), KMS_OK);
  ck_assert_uint_eq(n, 0);
  free(list);
  ck_assert_int_eq(keystore_request_list(ks, "acme", 1, &list, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  free(list);
  ck_assert_int_eq(event_count(ks, "acme", "request_expired", NULL), 1);
  keystore_close(ks);
}
END_TEST

START_TEST(cancel_restores_the_state_before_pending_destruction) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2), got;
  struct ks_request q = make_request(KS_ACTION_DESTROY_VERSION, 1, 2, 60000), r;
  struct ks_change c = {.tenant_id = "acme", .version = 1,
                        .from_states = KS_STATE_BIT(KS_KEK_PENDING_DESTRUCTION), .to_state = 0,
                        .by = OFFICER_C, .event = "destruction_cancelled"};
  int executed = 0, why = 0, st = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_kek_add_version(ks, &k2), KMS_OK);
  ck_assert_int_eq(keystore_request_create(ks, &q), KMS_OK);
  ck_assert_int_eq(keystore_request_approve(ks, q.id, OFFICER_B, now_ms(), &r, &executed, &why),
                   KMS_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_KEK_PENDING_DESTRUCTION);
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_OK);
  ck_assert_int_eq(st, KS_KEK_DECRYPT_ONLY);
  /* Not due, not pending: nothing to destroy. */
  struct ks_receipt rc;
  ck_assert_int_eq(keystore_destroy(ks, "acme", 1, now_ms(), &rc), KMS_ERR_FAILED_PRECONDITION);
  keystore_close(ks);
}
END_TEST

START_TEST(destroy_deletes_the_tokens_from_the_files_and_keeps_a_receipt) {
  keystore *ks = open_ok();
  struct ks_kek k1 = make_kek("acme", 1, 1), k2 = make_kek("acme", 2, 2), other = make_kek("zeta", 1, 9),
                got;
  struct ks_request q = make_request(KS_ACTION_DESTROY_TENANT, 0, 2, 60000), r;
  struct ks_due due[4];
  struct ks_receipt rc, *list = NULL;
  char wal[PATH_MAX + 8];
  size_t n = 0;
  int executed = 0, why = 0;

  snprintf(wal, sizeof(wal), "%s-wal", dbpath);
  q.waiting_days = 0;
  ck_assert_int_eq(keystore_tenant_create(ks, &k1), KMS_OK);
  ck_assert_int_eq(keystore_kek_add_version(ks, &k2), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &other), KMS_OK);
  ck_assert_int_eq(keystore_request_create(ks, &q), KMS_OK);
  ck_assert_int_eq(keystore_request_approve(ks, q.id, OFFICER_B, now_ms(), &r, &executed, &why),
                   KMS_OK);
  ck_assert_int_eq(executed, 1);
  ck_assert_int_eq(keystore_destruction_due(ks, now_ms(), due, 4, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(due[0].tenant_id, "acme");
  ck_assert_uint_eq(due[0].version, 0);
  ck_assert_int_eq(keystore_destroy(ks, "acme", 0, now_ms(), &rc), KMS_OK);
  ck_assert_str_eq(rc.versions, "1,2");
  ck_assert_str_eq(rc.requested_by, OFFICER_A);
  ck_assert_uint_eq(rc.n_approved, 1);
  ck_assert_str_eq(rc.approved_by[0], OFFICER_B);
  ck_assert_int_eq(keystore_shred_sync(ks), KMS_OK);
  /* The destroyed version reads back with no token; the neighbour is untouched. */
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 2, &got), KMS_OK);
  ck_assert_int_eq(got.state, KS_KEK_DESTROYED);
  ck_assert_int_eq(got.tenant_state, KS_TENANT_DESTROYED);
  ck_assert_uint_eq(got.token_len, 0);
  ck_assert_int_eq(keystore_kek_get(ks, "zeta", 1, &got), KMS_OK);
  assert_kek_eq(&got, &other);
  ck_assert_int_eq(keystore_receipt_list(ks, NULL, &list, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(list[0].request_id, q.id);
  free(list);
  keystore_close(ks);
  /* No byte sequence of a destroyed token anywhere in the files. */
  FILE *f;
  static uint8_t buf[1 << 20];
  const char *paths[] = {dbpath, wal};
  for (size_t p = 0; p < 2; p++) {
    size_t len = 0;
    if ((f = fopen(paths[p], "rb")) != NULL) {
      len = fread(buf, 1, sizeof(buf), f);
      fclose(f);
    }
    ck_assert_ptr_null(memmem(buf, len, k1.token, k1.token_len));
    ck_assert_ptr_null(memmem(buf, len, k2.token, k2.token_len));
    if (p == 0) {
      ck_assert_ptr_nonnull(memmem(buf, len, other.token, other.token_len));
    }
  }
}
END_TEST

START_TEST(rotation_due_honours_the_tenant_and_default_periods) {
  keystore *ks = open_ok();
  struct ks_kek a = make_kek("acme", 1, 1), b = make_kek("bravo", 1, 2), due[4];
  int64_t now = now_ms();
  size_t n = 0;

  a.created_ms = now - 10 * 86400000LL;
  b.created_ms = now - 100 * 86400000LL;
  ck_assert_int_eq(keystore_tenant_create(ks, &a), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &b), KMS_OK);
  ck_assert_int_eq(keystore_rotation_due(ks, now, 90, due, 4, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(due[0].tenant_id, "bravo");
  ck_assert_int_eq(keystore_tenant_set_rotation(ks, "acme", 7, OFFICER_A), KMS_OK);
  ck_assert_int_eq(keystore_rotation_due(ks, now, 90, due, 4, &n), KMS_OK);
  ck_assert_uint_eq(n, 2);
  /* Default 0 means off, a tenant's own period still applies. */
  ck_assert_int_eq(keystore_rotation_due(ks, now, 0, due, 4, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(due[0].tenant_id, "acme");
  ck_assert_int_eq(keystore_tenant_set_rotation(ks, "nope", 7, OFFICER_A), KMS_ERR_NOT_FOUND);
  keystore_close(ks);
}
END_TEST

START_TEST(tenant_list_pages_in_id_order) {
  keystore *ks = open_ok();
  const char *ids[] = {"c", "a", "b", "d"};
  struct ks_tenant *list = NULL;
  size_t n = 0;

  for (size_t i = 0; i < 4; i++) {
    struct ks_kek k = make_kek(ids[i], 1, (uint8_t)i);
    ck_assert_int_eq(keystore_tenant_create(ks, &k), KMS_OK);
  }
  ck_assert_int_eq(keystore_tenant_list(ks, "", 2, &list, &n), KMS_OK);
  ck_assert_uint_eq(n, 2);
  ck_assert_str_eq(list[0].tenant_id, "a");
  ck_assert_str_eq(list[1].tenant_id, "b");
  free(list);
  ck_assert_int_eq(keystore_tenant_list(ks, "b", 10, &list, &n), KMS_OK);
  ck_assert_uint_eq(n, 2);
  ck_assert_str_eq(list[0].tenant_id, "c");
  free(list);
  keystore_close(ks);
}
END_TEST

/* The audit export's history: whole histories of the tenants changed in the period. */
START_TEST(event_range_returns_whole_histories_of_tenants_changed_in_the_period) {
  keystore *ks = open_ok();
  struct ks_kek a = make_kek("acme", 1, 1), b = make_kek("beta", 1, 2);
  struct ks_event_row *rows = NULL;
  size_t n = 0;
  int more = 0;

  ck_assert_int_eq(keystore_tenant_create(ks, &a), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &b), KMS_OK);
  ck_assert_int_eq(keystore_event_add(ks, "acme", 1, "created", "off", ""), KMS_OK);
  ck_assert_int_eq(keystore_event_add(ks, "beta", 1, "created", "off", ""), KMS_OK);
  ck_assert_int_eq(keystore_event_add(ks, "acme", 1, "disabled", "off", "x"), KMS_OK);
  int64_t now = kms_now_ms();

  ck_assert_int_eq(keystore_event_range(ks, NULL, 0, now + 1000, 100, &rows, &n, &more), KMS_OK);
  ck_assert_uint_eq(n, 3);
  ck_assert_int_eq(more, 0);
  /* By tenant, then in order. */
  ck_assert_str_eq(rows[0].tenant_id, "acme");
  ck_assert_str_eq(rows[0].e.event, "created");
  ck_assert_str_eq(rows[1].tenant_id, "acme");
  ck_assert_str_eq(rows[1].e.event, "disabled");
  ck_assert_str_eq(rows[1].e.detail, "x");
  ck_assert_str_eq(rows[2].tenant_id, "beta");
  free(rows);
  ck_assert_int_eq(keystore_event_range(ks, "beta", 0, now + 1000, 100, &rows, &n, &more),
                   KMS_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(rows[0].tenant_id, "beta");
  free(rows);
  /* A limit says there is more. */
  ck_assert_int_eq(keystore_event_range(ks, "", 0, now + 1000, 2, &rows, &n, &more), KMS_OK);
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(more, 1);
  free(rows);
  /* Nothing changed in a later period: no history at all. */
  ck_assert_int_eq(keystore_event_range(ks, NULL, now + 1000, now + 2000, 100, &rows, &n, &more),
                   KMS_OK);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(keystore_event_range(ks, NULL, 10, 5, 100, &rows, &n, &more),
                   KMS_ERR_INVALID_ARGUMENT);
  char longid[KS_TENANT_ID_MAX + 2];
  memset(longid, 'x', sizeof(longid) - 1);
  longid[sizeof(longid) - 1] = '\0';
  ck_assert_int_eq(keystore_event_range(ks, longid, 0, 5, 100, &rows, &n, &more),
                   KMS_ERR_INVALID_ARGUMENT);
  keystore_close(ks);
}
END_TEST

/* ---- Root key rotation (schema 4) ---- */

static const struct ks_root *find_root(const struct ks_root *v, size_t n, uint32_t version) {
  for (size_t i = 0; i < n; i++) {
    if (v[i].version == version) {
      return &v[i];
    }
  }
  return NULL;
}

START_TEST(root_rotation_moves_tokens_off_trusted_roots_and_counts_them) {
  keystore *ks = open_ok();
  struct ks_kek a1 = make_kek("acme", 1, 1), b1 = make_kek("bravo", 1, 2),
                c1 = make_kek("charlie", 1, 3);
  struct ks_token_move m[8];
  struct ks_root *roots = NULL;
  size_t n = 0, moved = 0;
  uint32_t prev = 99;

  /* acme and bravo under trusted root 1, charlie under legacy root 5. */
  a1.root_version = 1;
  b1.root_version = 1;
  c1.root_version = 5;
  ck_assert_int_eq(keystore_tenant_create(ks, &a1), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &b1), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &c1), KMS_OK);
  ck_assert_int_eq(keystore_root_note(ks, 5, 0, now_ms()), KMS_OK);
  ck_assert_int_eq(keystore_root_set_current(ks, 1, 1, "kmsd", now_ms(), &prev), KMS_OK);
  ck_assert_uint_eq(prev, 0);

  /* Nothing to move while root 1 is current. */
  ck_assert_int_eq(keystore_root_pending(ks, 1, m, 8, &n), KMS_OK);
  ck_assert_uint_eq(n, 0);

  ck_assert_int_eq(keystore_root_set_current(ks, 2, 1, "officer-a", now_ms(), &prev), KMS_OK);
  ck_assert_uint_eq(prev, 1);
  /* The legacy root's token is never listed; the batch cap holds. */
  ck_assert_int_eq(keystore_root_pending(ks, 2, m, 1, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_int_eq(keystore_root_pending(ks, 2, m, 8, &n), KMS_OK);
  ck_assert_uint_eq(n, 2);
  ck_assert_str_eq(m[0].tenant_id, "acme");
  ck_assert_uint_eq(m[0].old_root, 1);
  ck_assert_uint_eq(m[0].old_len, a1.token_len);
  ck_assert_mem_eq(m[0].old_token, a1.token, a1.token_len);

  /* A root with tokens on it cannot be recorded destroyed. */
  ck_assert_int_eq(keystore_root_destroyed(ks, 1, now_ms()), KMS_ERR_FAILED_PRECONDITION);

  for (size_t i = 0; i < n; i++) {
    m[i].root = 2;
    m[i].mech = 0x2109;
    m[i].token_len = 40;
    memset(m[i].token, 0xA0 + (int)i, 40);
  }
  /* bravo's row changed since it was read (as a destruction would): it stays as it is. */
  m[1].old_token[0] ^= 1;
  ck_assert_int_eq(keystore_root_move_tokens(ks, m, n, &moved), KMS_OK);
  ck_assert_uint_eq(moved, 1);

  struct ks_kek got;
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 1, &got), KMS_OK);
  ck_assert_uint_eq(got.root_version, 2);
  ck_assert_uint_eq(got.wrap_mech, 0x2109);
  ck_assert_uint_eq(got.token[0], 0xA0);
  ck_assert_int_eq(keystore_kek_get(ks, "bravo", 1, &got), KMS_OK);
  ck_assert_uint_eq(got.root_version, 1);

  ck_assert_int_eq(keystore_root_list(ks, &roots, &n), KMS_OK);
  ck_assert_uint_eq(n, 3);
  ck_assert_uint_eq(find_root(roots, n, 1)->key_tokens, 1);
  ck_assert_int_eq(find_root(roots, n, 1)->state, KS_ROOT_RETIRED);
  ck_assert_uint_eq(find_root(roots, n, 2)->key_tokens, 1);
  ck_assert_int_eq(find_root(roots, n, 2)->state, KS_ROOT_CURRENT);
  ck_assert_str_eq(find_root(roots, n, 2)->current_by, "officer-a");
  ck_assert_int_eq(find_root(roots, n, 5)->trusted, 0);
  ck_assert_uint_eq(find_root(roots, n, 5)->key_tokens, 1);
  free(roots);

  /* bravo moved for real: root 1 is unreferenced and may be recorded destroyed, once. */
  ck_assert_int_eq(keystore_root_pending(ks, 2, m, 8, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  m[0].root = 2;
  m[0].mech = 0x2109;
  m[0].token_len = 40;
  memset(m[0].token, 0xB0, 40);
  ck_assert_int_eq(keystore_root_move_tokens(ks, m, 1, &moved), KMS_OK);
  ck_assert_uint_eq(moved, 1);
  ck_assert_int_eq(keystore_root_destroyed(ks, 2, now_ms()), KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(keystore_root_destroyed(ks, 1, now_ms()), KMS_OK);
  ck_assert_int_eq(keystore_root_destroyed(ks, 1, now_ms()), KMS_ERR_FAILED_PRECONDITION);
  /* A destroyed root never becomes current again. */
  ck_assert_int_eq(keystore_root_set_current(ks, 1, 1, "x", now_ms(), NULL),
                   KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(keystore_root_list(ks, &roots, &n), KMS_OK);
  ck_assert_int_eq(find_root(roots, n, 1)->state, KS_ROOT_DESTROYED);
  ck_assert_int_gt(find_root(roots, n, 1)->destroyed_ms, 0);
  ck_assert_uint_eq(find_root(roots, n, 1)->key_tokens, 0);
  free(roots);
  keystore_close(ks);
}
END_TEST

/* The change counter moves with every state change, new version or tenant, not with uses. */
START_TEST(state_gen_moves_with_key_state_not_with_uses) {
  keystore *ks = open_ok();
  uint64_t g0 = 0, g = 0, total = 0;
  struct ks_kek a1 = make_kek("acme", 1, 1), a2 = make_kek("acme", 2, 2);
  ck_assert_int_eq(keystore_state_gen(ks, &g0), KMS_OK);
  ck_assert_int_eq(keystore_tenant_create(ks, &a1), KMS_OK);
  ck_assert_int_eq(keystore_state_gen(ks, &g), KMS_OK);
  ck_assert_uint_gt(g, g0);
  g0 = g;
  ck_assert_int_eq(keystore_kek_reserve_uses(ks, "acme", 1, 10, 100, &total), KMS_OK);
  ck_assert_int_eq(keystore_state_gen(ks, &g), KMS_OK);
  ck_assert_uint_eq(g, g0); /* a use reservation changes no state */
  ck_assert_int_eq(keystore_kek_rotate(ks, &a2, OFFICER_A, "test"), KMS_OK);
  ck_assert_int_eq(keystore_state_gen(ks, &g), KMS_OK);
  ck_assert_uint_gt(g, g0);
  g0 = g;
  struct ks_change c = {.tenant_id = "acme", .from_states = KS_STATE_BIT(KS_TENANT_ACTIVE),
                        .to_state = KS_TENANT_DISABLED, .by = OFFICER_A, .event = "disabled"};
  int st = 0;
  ck_assert_int_eq(keystore_change_state(ks, &c, &st), KMS_OK);
  ck_assert_int_eq(keystore_state_gen(ks, &g), KMS_OK);
  ck_assert_uint_gt(g, g0);
  /* A change made behind kmsd's back (by hand, another process) moves it too. */
  g0 = g;
  sqlite3 *db = raw_open();
  raw_exec(db, "UPDATE kek_versions SET state = 3 WHERE tenant_id = 'acme' AND version = 1");
  sqlite3_close(db);
  ck_assert_int_eq(keystore_state_gen(ks, &g), KMS_OK);
  ck_assert_uint_gt(g, g0);
  ck_assert_int_eq(keystore_state_gen(ks, NULL), KMS_ERR_INVALID_ARGUMENT);
  keystore_close(ks);
}
END_TEST

/* A KEK wrapped under a root that was destroyed meanwhile is refused, not stored unopenable. */
START_TEST(no_key_token_may_name_a_destroyed_root) {
  keystore *ks = open_ok();
  struct ks_kek a1 = make_kek("acme", 1, 1), b1 = make_kek("bravo", 1, 2);
  struct ks_token_move m[4];
  size_t n = 0, moved = 0;
  a1.root_version = 1;
  ck_assert_int_eq(keystore_tenant_create(ks, &a1), KMS_OK);
  ck_assert_int_eq(keystore_root_set_current(ks, 1, 1, "kmsd", now_ms(), NULL), KMS_OK);
  ck_assert_int_eq(keystore_root_set_current(ks, 2, 1, "officer-a", now_ms(), NULL), KMS_OK);
  ck_assert_int_eq(keystore_root_pending(ks, 2, m, 4, &n), KMS_OK);
  ck_assert_uint_eq(n, 1);
  m[0].root = 2;
  m[0].mech = 0x2109;
  m[0].token_len = 40;
  memset(m[0].token, 0xC0, 40);
  ck_assert_int_eq(keystore_root_move_tokens(ks, m, 1, &moved), KMS_OK);
  ck_assert_int_eq(keystore_root_destroyed(ks, 1, now_ms()), KMS_OK);
  /* A tenant (or a rotation) whose KEK was wrapped under root 1 before the switch. */
  b1.root_version = 1;
  ck_assert_int_eq(keystore_tenant_create(ks, &b1), KMS_ERR_FAILED_PRECONDITION);
  struct ks_kek got;
  ck_assert_int_eq(keystore_kek_get(ks, "bravo", 1, &got), KMS_ERR_NOT_FOUND);
  struct ks_kek a2 = make_kek("acme", 2, 3);
  a2.root_version = 1;
  ck_assert_int_eq(keystore_kek_add_version(ks, &a2), KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(keystore_kek_rotate(ks, &a2, "officer-a", "test"), KMS_ERR_FAILED_PRECONDITION);
  ck_assert_int_eq(keystore_kek_get(ks, "acme", 2, &got), KMS_ERR_NOT_FOUND);
  /* Under the current root both go through. */
  b1.root_version = 2;
  ck_assert_int_eq(keystore_tenant_create(ks, &b1), KMS_OK);
  keystore_close(ks);
}
END_TEST

START_TEST(root_functions_refuse_bad_arguments_and_change_nothing) {
  keystore *ks = open_ok();
  struct ks_token_move m;
  struct ks_root *roots = NULL;
  size_t n = 7;

  ck_assert_int_eq(keystore_root_note(ks, 0, 1, now_ms()), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_root_set_current(ks, 0, 1, "x", now_ms(), NULL),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_root_set_current(ks, 1, 1, NULL, now_ms(), NULL),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_root_pending(ks, 0, &m, 1, &n), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(n, 0);
  memset(&m, 0, sizeof(m));
  ck_assert_int_eq(keystore_root_move_tokens(ks, &m, 1, &n), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_root_destroyed(ks, 0, now_ms()), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(keystore_root_list(ks, &roots, &n), KMS_OK);
  ck_assert_uint_eq(n, 0);
  free(roots);
  keystore_close(ks);
}
END_TEST

static Suite *keystore_suite(void) {
  Suite *s = suite_create("keystore");
  TCase *tc = tcase_create("sqlite");
  TCase *slow = tcase_create("sqlite-slow");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, open_creates_latest_schema_in_wal_mode);
  tcase_add_test(tc, schema_ties_versions_to_tenants);
  tcase_add_test(tc, files_are_created_mode_0600_whatever_the_umask);
  tcase_add_test(tc, no_temporary_files_are_left_behind);
  tcase_add_test(tc, reopen_keeps_data);
  tcase_add_test(tc, tenant_create_round_trips_every_field);
  tcase_add_test(tc, tenant_create_with_max_size_token);
  tcase_add_test(tc, created_ms_zero_means_now);
  tcase_add_test(tc, duplicate_create_is_refused_and_changes_nothing);
  tcase_add_test(tc, unknown_tenant_or_version_is_not_found);
  tcase_add_test(tc, add_version_rotates);
  tcase_add_test(tc, add_version_leaves_other_tenants_alone);
  tcase_add_test(tc, add_version_with_wrong_number_changes_nothing);
  tcase_add_test(tc, add_version_failing_midway_rolls_back_the_demotion);
  tcase_add_test(tc, reserve_uses_accumulates_up_to_the_limit);
  tcase_add_test(tc, reserve_uses_survives_huge_numbers);
  tcase_add_test(tc, reserve_uses_counts_per_version);
  tcase_add_test(tc, two_handles_see_each_others_writes);
  tcase_add_test(tc, concurrent_reservations_from_many_handles_are_all_counted);
  tcase_add_test(tc, concurrent_first_opens_all_succeed_and_migrate_once);
  tcase_add_test(tc, newer_schema_version_is_refused);
  tcase_add_test(tc, bad_urls_are_refused);
  tcase_add_test(tc, sqlite_url_forms_are_accepted);
  tcase_add_test(tc, missing_directory_is_an_io_error);
  tcase_add_test(tc, non_database_file_is_refused);
  tcase_add_test(tc, tenant_id_length_is_checked);
  tcase_add_test(tc, malformed_keks_are_refused);
  tcase_add_test(tc, damaged_rows_are_reported_not_trusted);
  tcase_add_test(tc, schema_version_needs_arguments);
  tcase_add_test(tc, migration_2_upgrades_a_schema_1_keystore_in_place);
  tcase_add_test(tc, rotate_records_who_and_refuses_an_inactive_tenant);
  tcase_add_test(tc, change_state_checks_the_from_states_and_says_the_state);
  tcase_add_test(tc, dual_control_needs_distinct_officers_within_the_window);
  tcase_add_test(tc, expired_request_cannot_be_approved_and_stays_expired);
  tcase_add_test(tc, cancel_restores_the_state_before_pending_destruction);
  tcase_add_test(tc, event_range_returns_whole_histories_of_tenants_changed_in_the_period);
  tcase_add_test(tc, destroy_deletes_the_tokens_from_the_files_and_keeps_a_receipt);
  tcase_add_test(tc, rotation_due_honours_the_tenant_and_default_periods);
  tcase_add_test(tc, tenant_list_pages_in_id_order);
  tcase_add_test(tc, root_rotation_moves_tokens_off_trusted_roots_and_counts_them);
  tcase_add_test(tc, root_functions_refuse_bad_arguments_and_change_nothing);
  tcase_add_test(tc, no_key_token_may_name_a_destroyed_root);
  tcase_add_test(tc, state_gen_moves_with_key_state_not_with_uses);
  suite_add_tcase(s, tc);

  /* Waits out the 5 s busy timeout. */
  tcase_add_checked_fixture(slow, setup, teardown);
  tcase_set_timeout(slow, 60);
  tcase_add_test(slow, busy_database_is_unavailable_and_changes_nothing);
  suite_add_tcase(s, slow);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(keystore_suite());
  int failed;

  srunner_run_all(sr, CK_ENV);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
