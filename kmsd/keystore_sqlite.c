/* SQLite keystore backend: the only code in tenantkms that speaks SQL. */
#include "keystore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "kms_err.h"
#include "kms_time.h"

/*
 * Durability and concurrency model:
 *  - WAL, so readers never block the writer and several handles (one per kmsd
 *    worker, perhaps several processes) share the file.
 *  - synchronous=FULL: the WAL is fsynced at every commit, because a KEK we
 *    reported as created, or uses we reported as reserved, must survive a
 *    power cut.
 *  - Every multi-statement change runs in BEGIN IMMEDIATE, which takes the
 *    write lock up front: a deferred transaction that reads then writes can
 *    fail with SQLITE_BUSY_SNAPSHOT halfway, without waiting for the busy timeout.
 *  - Every statement is reset as soon as its rows are read, so no handle pins
 *    an old WAL snapshot (stale reads, and checkpoints that never finish).
 */

#define BUSY_TIMEOUT_MS 5000

/*
 * Schema migrations. Entry i brings the schema from version i to i + 1. Never
 * edit an entry that has shipped: append a new one. Tables are STRICT so a
 * value of the wrong type is refused on write instead of read back as garbage.
 */
static const char *const migrations[] = {
    /* 1: tenants and their KEK versions. */
    "CREATE TABLE tenants ("
    "  tenant_id TEXT NOT NULL PRIMARY KEY,"
    "  state INTEGER NOT NULL,"
    "  current_version INTEGER NOT NULL CHECK (current_version >= 1),"
    "  created_ms INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE kek_versions ("
    "  tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id),"
    "  version INTEGER NOT NULL CHECK (version >= 1),"
    "  state INTEGER NOT NULL,"
    "  wrap_mech INTEGER NOT NULL,"
    "  root_version INTEGER NOT NULL,"
    "  key_token BLOB NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  uses INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),"
    "  state_changed_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (tenant_id, version)"
    ") STRICT, WITHOUT ROWID;",
    /*
     * 2: key lifecycle (docs/LIFECYCLE.md): who changed a state and when, the
     * state to restore when a destruction is cancelled, destruction deadlines,
     * per-tenant rotation periods, dual-control requests and approvals,
     * destruction receipts and the history of every change.
     */
    "ALTER TABLE tenants ADD COLUMN state_changed_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tenants ADD COLUMN state_changed_by TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE tenants ADD COLUMN prior_state INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tenants ADD COLUMN destroy_after_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tenants ADD COLUMN destroy_request_id INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tenants ADD COLUMN rotation_period_days INTEGER NOT NULL DEFAULT 0"
    "  CHECK (rotation_period_days >= 0);"
    "UPDATE tenants SET state_changed_ms = created_ms;"
    "ALTER TABLE kek_versions ADD COLUMN state_changed_by TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE kek_versions ADD COLUMN prior_state INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE kek_versions ADD COLUMN destroy_after_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE kek_versions ADD COLUMN destroy_request_id INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX kek_versions_by_state ON kek_versions (state, destroy_after_ms);"
    "CREATE TABLE approval_requests ("
    "  id INTEGER PRIMARY KEY,"
    "  action INTEGER NOT NULL,"
    "  tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id),"
    "  version INTEGER NOT NULL CHECK (version >= 0),"
    "  waiting_days INTEGER NOT NULL CHECK (waiting_days >= 0),"
    "  requested_by TEXT NOT NULL,"
    "  requested_ms INTEGER NOT NULL,"
    "  expires_ms INTEGER NOT NULL,"
    "  approvals_required INTEGER NOT NULL CHECK (approvals_required >= 2),"
    "  state INTEGER NOT NULL,"
    "  closed_ms INTEGER NOT NULL DEFAULT 0"
    ") STRICT;"
    "CREATE INDEX approval_requests_by_state ON approval_requests (state, tenant_id);"
    "CREATE TABLE approvals ("
    "  request_id INTEGER NOT NULL REFERENCES approval_requests(id),"
    "  approver TEXT NOT NULL,"
    "  approved_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (request_id, approver)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE destruction_receipts ("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id),"
    "  version INTEGER NOT NULL,"
    "  versions TEXT NOT NULL,"
    "  request_id INTEGER NOT NULL,"
    "  requested_by TEXT NOT NULL,"
    "  approved_by TEXT NOT NULL,"
    "  requested_ms INTEGER NOT NULL,"
    "  approved_ms INTEGER NOT NULL,"
    "  destroyed_ms INTEGER NOT NULL"
    ") STRICT;"
    "CREATE TABLE key_events ("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  event TEXT NOT NULL,"
    "  actor TEXT NOT NULL,"
    "  detail TEXT NOT NULL,"
    "  at_ms INTEGER NOT NULL"
    ") STRICT;"
    "CREATE INDEX key_events_by_tenant ON key_events (tenant_id, id);",
    /*
     * 3: session keys (docs/SESSIONS.md). One row per (tenant, session): the
     * primary key serves OpenSession and GetSessionKey with one B-tree
     * lookup however many sessions there are, and the index on
     * (tenant_id, created_ms) serves listings by time. A shredded session
     * keeps its row without wrapped key or metadata. session_rewrap holds the
     * resumable background re-wrap after a rotation, one cursor per tenant.
     */
    "CREATE TABLE sessions ("
    "  tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id),"
    "  session_id TEXT NOT NULL,"
    "  state INTEGER NOT NULL CHECK (state BETWEEN 1 AND 3),"
    "  kek_version INTEGER NOT NULL CHECK (kek_version >= 1),"
    "  wrapped_key BLOB NOT NULL,"
    "  metadata BLOB NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  created_by TEXT NOT NULL,"
    "  closed_ms INTEGER NOT NULL DEFAULT 0,"
    "  closed_by TEXT NOT NULL DEFAULT '',"
    "  shredded_ms INTEGER NOT NULL DEFAULT 0,"
    "  shredded_by TEXT NOT NULL DEFAULT '',"
    "  PRIMARY KEY (tenant_id, session_id),"
    "  FOREIGN KEY (tenant_id, kek_version) REFERENCES kek_versions(tenant_id, version)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE INDEX sessions_by_created ON sessions (tenant_id, created_ms);"
    "CREATE TABLE session_receipts ("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id),"
    "  session_id TEXT NOT NULL,"
    "  kek_version INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  shredded_ms INTEGER NOT NULL,"
    "  shredded_by TEXT NOT NULL"
    ") STRICT;"
    "CREATE INDEX session_receipts_by_session ON session_receipts (tenant_id, session_id);"
    "CREATE TABLE session_rewrap ("
    "  tenant_id TEXT NOT NULL PRIMARY KEY REFERENCES tenants(tenant_id),"
    "  target_version INTEGER NOT NULL CHECK (target_version >= 1),"
    "  after TEXT NOT NULL,"
    "  started_ms INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID;",
    /*
     * 4: root key rotation (docs/LIFECYCLE.md). One row per root version kmsd
     * has seen on the token: trusted (made by the key ceremony) or legacy,
     * current / retired / destroyed, since when and by whom. Progress is not
     * stored: it is the count of key tokens per root_version, which the index
     * serves, so a re-wrap job killed at any point resumes where the keystore
     * says it stands.
     */
    "CREATE TABLE root_keys ("
    "  version INTEGER NOT NULL PRIMARY KEY CHECK (version >= 1),"
    "  trusted INTEGER NOT NULL CHECK (trusted IN (0, 1)),"
    "  state INTEGER NOT NULL CHECK (state BETWEEN 1 AND 3),"
    "  seen_ms INTEGER NOT NULL,"
    "  current_since_ms INTEGER NOT NULL DEFAULT 0,"
    "  current_by TEXT NOT NULL DEFAULT '',"
    "  destroyed_ms INTEGER NOT NULL DEFAULT 0"
    ") STRICT;"
    "CREATE INDEX kek_versions_by_root ON kek_versions (root_version);",
    /*
     * 5: no key token may name a destroyed root (docs/LIFECYCLE.md). A KEK
     * wrapped under the old root just before a rotation, and recorded after
     * the re-wrap job found the old root unreferenced and destroyed it, would
     * be lost for good; SQLite's write lock orders the two, and these
     * triggers refuse the late one (FAILED_PRECONDITION: the caller's retry
     * wraps under the current root).
     */
    "CREATE TRIGGER kek_root_alive_insert BEFORE INSERT ON kek_versions"
    "  WHEN EXISTS (SELECT 1 FROM root_keys WHERE version = NEW.root_version AND state = 3)"
    "  BEGIN SELECT RAISE(ABORT, 'root key destroyed'); END;"
    "CREATE TRIGGER kek_root_alive_update BEFORE UPDATE OF root_version, key_token ON kek_versions"
    "  WHEN length(NEW.key_token) > 0 AND EXISTS"
    "    (SELECT 1 FROM root_keys WHERE version = NEW.root_version AND state = 3)"
    "  BEGIN SELECT RAISE(ABORT, 'root key destroyed'); END;",
    /*
     * 6: a change counter for cached key state (kmsd/kekcache.h). Every change
     * that can make a cached state untrue (a version's or a tenant's state, a
     * new or removed version, a tenant's newest version) moves it, by trigger,
     * so changes made by another process or by hand count too; use-budget
     * reservations and token re-wraps do not. One read of it per TTL keeps
     * every cached state fresh while it does not move.
     */
    "CREATE TABLE state_gen ("
    "  id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),"
    "  gen INTEGER NOT NULL"
    ") STRICT;"
    "INSERT INTO state_gen (id, gen) VALUES (1, 0);"
    "CREATE TRIGGER state_gen_kek_insert AFTER INSERT ON kek_versions"
    "  BEGIN UPDATE state_gen SET gen = gen + 1; END;"
    "CREATE TRIGGER state_gen_kek_state AFTER UPDATE OF state ON kek_versions"
    "  BEGIN UPDATE state_gen SET gen = gen + 1; END;"
    "CREATE TRIGGER state_gen_kek_delete AFTER DELETE ON kek_versions"
    "  BEGIN UPDATE state_gen SET gen = gen + 1; END;"
    "CREATE TRIGGER state_gen_tenant_insert AFTER INSERT ON tenants"
    "  BEGIN UPDATE state_gen SET gen = gen + 1; END;"
    "CREATE TRIGGER state_gen_tenant_state AFTER UPDATE OF state, current_version ON tenants"
    "  BEGIN UPDATE state_gen SET gen = gen + 1; END;"
    "CREATE TRIGGER state_gen_tenant_delete AFTER DELETE ON tenants"
    "  BEGIN UPDATE state_gen SET gen = gen + 1; END;",
};

#define SCHEMA_VERSION_LATEST ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* Prepared once at open and reused: these run on every request. */
enum stmt_id {
  ST_BEGIN,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_SCHEMA_VERSION,
  ST_TENANT_INSERT,
  ST_TENANT_GET,
  ST_TENANT_SET_CURRENT,
  ST_KEK_INSERT,
  ST_KEK_GET,
  ST_KEK_CURRENT,
  ST_KEK_EXISTS,
  ST_KEK_DEMOTE,
  ST_USES_RESERVE,
  ST_SESSION_INSERT,
  ST_SESSION_GET,
  ST_COUNT_
};

/* The columns read_kek takes, in order (k: kek_versions, t: its tenant). */
#define KEK_COLUMNS                                                                      \
  "k.version, k.state, k.wrap_mech, k.root_version, k.key_token, k.created_ms, k.uses,"   \
  " t.state"

/* The columns read_tenant takes, in order, starting at its |col| (t: tenants, k: current). */
#define TENANT_COLUMNS                                                                   \
  "t.state, t.current_version, t.created_ms, t.state_changed_ms, t.state_changed_by,"    \
  " t.rotation_period_days, t.destroy_after_ms, coalesce(k.created_ms, 0)"
#define TENANT_FROM                                                                      \
  " FROM tenants t LEFT JOIN kek_versions k"                                             \
  " ON k.tenant_id = t.tenant_id AND k.version = t.current_version"

/* The columns read_session takes, in order, starting at its |col| (s: sessions). */
#define SESSION_COLUMNS                                                                  \
  "s.session_id, s.state, s.kek_version, s.wrapped_key, s.metadata, s.created_ms,"       \
  " s.created_by, s.closed_ms, s.closed_by, s.shredded_ms, s.shredded_by"

static const char *const stmt_sql[ST_COUNT_] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SCHEMA_VERSION] = "SELECT max(version) FROM schema_version",
    [ST_TENANT_INSERT] = "INSERT INTO tenants (tenant_id, state, current_version, created_ms,"
                         " state_changed_ms) VALUES (?1, ?2, 1, ?3, ?3)",
    [ST_TENANT_GET] = "SELECT " TENANT_COLUMNS TENANT_FROM " WHERE t.tenant_id = ?1",
    [ST_TENANT_SET_CURRENT] = "UPDATE tenants SET current_version = ?2 WHERE tenant_id = ?1",
    [ST_KEK_INSERT] = "INSERT INTO kek_versions (tenant_id, version, state, wrap_mech,"
                      " root_version, key_token, created_ms, uses, state_changed_ms)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?7)",
    [ST_KEK_GET] = "SELECT " KEK_COLUMNS " FROM kek_versions k JOIN tenants t"
                   " ON t.tenant_id = k.tenant_id"
                   " WHERE k.tenant_id = ?1 AND k.version = ?2",
    /* One statement, so the tenant row and the version row come from one snapshot. */
    [ST_KEK_CURRENT] = "SELECT " KEK_COLUMNS
                       " FROM tenants t JOIN kek_versions k"
                       " ON k.tenant_id = t.tenant_id AND k.version = t.current_version"
                       " WHERE t.tenant_id = ?1",
    [ST_KEK_EXISTS] = "SELECT 1 FROM kek_versions WHERE tenant_id = ?1 AND version = ?2",
    [ST_KEK_DEMOTE] = "UPDATE kek_versions SET state = ?2, state_changed_ms = ?3,"
                      " state_changed_by = ?5 WHERE tenant_id = ?1 AND state = ?4",
    /*
     * The check and the increment are one statement, so two handles cannot both
     * pass the check. Written as uses <= limit - n (the caller ensures n <=
     * limit) because uses + n could overflow 64 bits, which SQLite would
     * silently turn into a float.
     */
    [ST_USES_RESERVE] = "UPDATE kek_versions SET uses = uses + ?3"
                        " WHERE tenant_id = ?1 AND version = ?2 AND uses <= ?4 - ?3"
                        " RETURNING uses",
    /* Session keys: these two run on every OpenSession / GetSessionKey. */
    [ST_SESSION_INSERT] = "INSERT INTO sessions (tenant_id, session_id, state, kek_version,"
                          " wrapped_key, metadata, created_ms, created_by)"
                          " VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7)",
    /* The session, its KEK version and tenant state from one snapshot (KEK_COLUMNS first). */
    [ST_SESSION_GET] = "SELECT " KEK_COLUMNS ", " SESSION_COLUMNS
                       " FROM sessions s JOIN tenants t ON t.tenant_id = s.tenant_id"
                       " JOIN kek_versions k ON k.tenant_id = s.tenant_id"
                       " AND k.version = s.kek_version"
                       " WHERE s.tenant_id = ?1 AND s.session_id = ?2",
};

struct keystore_sqlite {
  struct keystore base; /* first, so keystore.c can dispatch */
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT_];
};

static struct keystore_sqlite *ks_sqlite(keystore *ks) {
  return (struct keystore_sqlite *)ks;
}

/*
 * map_rc turns an (extended) SQLite result code into ours. Busy, locked, I/O
 * and disk-full failures are transient and the transaction was rolled back, so
 * the caller may retry. A primary-key clash means the row exists; other
 * constraint failures (foreign key, CHECK) mean a bug or a damaged database.
 */
static int map_rc(int rc) {
  switch (rc & 0xff) {
  case SQLITE_OK:
  case SQLITE_ROW:
  case SQLITE_DONE:
    return KMS_OK;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
  case SQLITE_IOERR:
  case SQLITE_FULL:
  case SQLITE_PROTOCOL:
    return KMS_ERR_UNAVAILABLE;
  case SQLITE_NOMEM:
    return KMS_ERR_ALLOC;
  case SQLITE_CONSTRAINT:
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) {
      return KMS_ERR_ALREADY_EXISTS;
    }
    if (rc == SQLITE_CONSTRAINT_TRIGGER) {
      return KMS_ERR_FAILED_PRECONDITION; /* a rule of the schema (e.g. root key destroyed) */
    }
    return KMS_ERR_INTERNAL;
  default:
    return KMS_ERR_INTERNAL;
  }
}

/*
 * stmt_done resets |st| so it releases its read snapshot, and clears its
 * bindings so it keeps no pointer into the caller's buffers. NULL is a no-op.
 */
static void stmt_done(sqlite3_stmt *st) {
  if (st == NULL) {
    return;
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

/* step_done runs a statement that returns no rows, then resets it. */
static int step_done(sqlite3_stmt *st) {
  int rc = sqlite3_step(st);

  stmt_done(st);
  return rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
}

static int tx_begin(struct keystore_sqlite *ks) {
  return step_done(ks->st[ST_BEGIN]);
}

static int tx_commit(struct keystore_sqlite *ks) {
  return step_done(ks->st[ST_COMMIT]);
}

/*
 * tx_rollback ends any open transaction. SQLite already rolled back by itself
 * after some errors (I/O, disk full, some busy cases); ROLLBACK then would
 * fail, so ask first.
 */
static void tx_rollback(struct keystore_sqlite *ks) {
  if (sqlite3_get_autocommit(ks->db)) {
    return;
  }
  if (ks->st[ST_ROLLBACK] != NULL) {
    (void)step_done(ks->st[ST_ROLLBACK]);
  } else {
    (void)sqlite3_exec(ks->db, "ROLLBACK", NULL, NULL, NULL);
  }
}

/* Column readers: refuse values a well-formed keystore never holds. */
static int col_i64(sqlite3_stmt *st, int col, int64_t min, int64_t max, int64_t *out) {
  int64_t v;

  if (sqlite3_column_type(st, col) != SQLITE_INTEGER) {
    return KMS_ERR_INTERNAL;
  }
  v = sqlite3_column_int64(st, col);
  if (v < min || v > max) {
    return KMS_ERR_INTERNAL;
  }
  *out = v;
  return KMS_OK;
}

static int col_u32(sqlite3_stmt *st, int col, uint32_t *out) {
  int64_t v;
  int r = col_i64(st, col, 0, UINT32_MAX, &v);

  if (r == KMS_OK) {
    *out = (uint32_t)v;
  }
  return r;
}

static int col_state(sqlite3_stmt *st, int col, int *out) {
  int64_t v;
  int r = col_i64(st, col, 1, 255, &v);

  if (r == KMS_OK) {
    *out = (int)v;
  }
  return r;
}

/* read_kek fills |out| from the KEK_COLUMNS of the current row. */
static int read_kek(sqlite3_stmt *st, const char *tenant_id, struct ks_kek *out) {
  const void *token;
  int64_t created, uses;
  int token_len, r = KMS_ERR_INTERNAL;

  if ((r = col_u32(st, 0, &out->version)) != KMS_OK ||
      (r = col_state(st, 1, &out->state)) != KMS_OK ||
      (r = col_u32(st, 2, &out->wrap_mech)) != KMS_OK ||
      (r = col_u32(st, 3, &out->root_version)) != KMS_OK ||
      (r = col_i64(st, 5, 0, INT64_MAX, &created)) != KMS_OK ||
      (r = col_i64(st, 6, 0, INT64_MAX, &uses)) != KMS_OK ||
      (r = col_state(st, 7, &out->tenant_state)) != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_INTERNAL;
  if (sqlite3_column_type(st, 4) != SQLITE_BLOB) {
    goto out;
  }
  token = sqlite3_column_blob(st, 4);
  token_len = sqlite3_column_bytes(st, 4);
  /* A destroyed version's token was deleted (crypto-shredding): nothing to load. */
  if (out->state == KS_KEK_DESTROYED && token_len == 0) {
    token = "";
  }
  if (token == NULL || token_len < 0 || token_len > HSM_KEY_TOKEN_MAX ||
      (token_len == 0 && out->state != KS_KEK_DESTROYED)) {
    goto out;
  }
  /* The caller checked the id's length against the same array size. */
  snprintf(out->tenant_id, sizeof(out->tenant_id), "%s", tenant_id);
  memcpy(out->token, token, (size_t)token_len);
  out->token_len = (size_t)token_len;
  out->created_ms = created;
  out->uses = (uint64_t)uses;
  r = KMS_OK;
out:
  return r;
}

/* kek_exists reports KMS_OK if the version exists, else KMS_ERR_NOT_FOUND (or a failure). */
static int kek_exists(struct keystore_sqlite *ks, const char *tenant_id, uint32_t version) {
  sqlite3_stmt *st = ks->st[ST_KEK_EXISTS];
  int rc, r = KMS_ERR_INTERNAL;

  if (sqlite3_bind_text(st, 1, tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int64(st, 2, version) != SQLITE_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    r = KMS_OK;
  } else if (rc == SQLITE_DONE) {
    r = KMS_ERR_NOT_FOUND;
  } else {
    r = map_rc(rc);
  }
out:
  stmt_done(st);
  return r;
}

/*
 * create_private creates |path| with mode 0600 if it does not exist yet.
 * SQLite would create it 0644 minus the umask, and the umask is per process
 * (kmsd's workers open keystores concurrently), so we create the file
 * ourselves. It is created under a temporary name, closed, then linked into
 * place: closing any descriptor of a file drops every POSIX lock this process
 * holds on it, so we must never close one on a database another handle of
 * ours may already be using. SQLite gives the -wal and -shm files the mode of
 * the database file. An existing file keeps the mode its owner gave it.
 */
static int create_private(const char *path, char *err, size_t err_len) {
  static const char suffix[] = ".tmp-XXXXXX";
  struct stat sb;
  char *tmp = NULL;
  int fd = -1, created = 0, r = KMS_ERR_INTERNAL;

  if (stat(path, &sb) == 0) {
    r = KMS_OK;
    goto out;
  }
  if (errno != ENOENT) {
    kms_set_err(err, err_len, "keystore %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  if ((tmp = malloc(strlen(path) + sizeof(suffix))) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  memcpy(tmp, path, strlen(path));
  memcpy(tmp + strlen(path), suffix, sizeof(suffix));
  if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
    kms_set_err(err, err_len, "cannot create keystore %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  created = 1;
  /* mkostemp already asks for 0600; an odd umask could leave less. */
  if (fchmod(fd, S_IRUSR | S_IWUSR) != 0) {
    kms_set_err(err, err_len, "cannot chmod keystore %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  close(fd);
  fd = -1;
  /* link, unlike rename, never replaces a file another opener just created. */
  if (link(tmp, path) != 0 && errno != EEXIST) {
    kms_set_err(err, err_len, "cannot create keystore %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  r = KMS_OK;
out:
  if (fd >= 0) {
    close(fd);
  }
  if (created) {
    unlink(tmp);
  }
  free(tmp);
  return r;
}

/* pragma_expect runs |sql| and checks that its first row's first column reads |want|. */
static int pragma_expect(struct keystore_sqlite *ks, const char *sql, const char *want,
                         char *err, size_t err_len) {
  sqlite3_stmt *st = NULL;
  const unsigned char *got;
  int rc, r = KMS_ERR_INTERNAL;

  rc = sqlite3_prepare_v2(ks->db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK) {
    kms_set_err(err, err_len, "keystore: %s: %s", sql, sqlite3_errmsg(ks->db));
    r = map_rc(rc);
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    kms_set_err(err, err_len, "keystore: %s: %s", sql,
            rc == SQLITE_DONE ? "not supported by this SQLite" : sqlite3_errmsg(ks->db));
    r = rc == SQLITE_DONE ? KMS_ERR_INTERNAL : map_rc(rc);
    goto out;
  }
  got = sqlite3_column_text(st, 0);
  if (got == NULL || strcasecmp((const char *)got, want) != 0) {
    kms_set_err(err, err_len, "keystore: %s gave \"%s\", need \"%s\"", sql,
            got != NULL ? (const char *)got : "", want);
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  r = KMS_OK;
out:
  sqlite3_finalize(st);
  return r;
}

static int exec_sql(struct keystore_sqlite *ks, const char *sql, char *err, size_t err_len) {
  int rc = sqlite3_exec(ks->db, sql, NULL, NULL, NULL);

  if (rc != SQLITE_OK) {
    kms_set_err(err, err_len, "keystore: %.60s: %s", sql, sqlite3_errmsg(ks->db));
    return map_rc(rc);
  }
  return KMS_OK;
}

/*
 * set_wal switches the database to WAL. On a new file opened by several
 * handles at once, the switch needs an exclusive lock that SQLite will not wait
 * for (waiting while holding a shared lock could deadlock): it fails with
 * SQLITE_BUSY at once, bypassing the busy timeout. So we retry for as long as
 * the busy timeout would have waited. Once the file is in WAL mode (it stays
 * so), this succeeds on the first try.
 */
static int set_wal(struct keystore_sqlite *ks, char *err, size_t err_len) {
  const struct timespec pause = {0, 10 * 1000 * 1000};
  int64_t deadline = kms_mono_ms() + BUSY_TIMEOUT_MS;
  int r;

  for (;;) {
    /* journal_mode answers with the mode in force; it stays put if it could not switch. */
    r = pragma_expect(ks, "PRAGMA journal_mode=WAL", "wal", err, err_len);
    if (r != KMS_ERR_UNAVAILABLE || kms_mono_ms() >= deadline) {
      return r;
    }
    nanosleep(&pause, NULL);
  }
}

static int configure(struct keystore_sqlite *ks, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;

  if (sqlite3_busy_timeout(ks->db, BUSY_TIMEOUT_MS) != SQLITE_OK) {
    kms_set_err(err, err_len, "keystore: cannot set busy timeout");
    goto out;
  }
  if ((r = set_wal(ks, err, err_len)) != KMS_OK) {
    goto out;
  }
  /* These answer nothing when set; read each back to be sure this build honours it. */
  if ((r = exec_sql(ks, "PRAGMA synchronous=FULL", err, err_len)) != KMS_OK ||
      (r = pragma_expect(ks, "PRAGMA synchronous", "2", err, err_len)) != KMS_OK) {
    goto out;
  }
  if ((r = exec_sql(ks, "PRAGMA foreign_keys=ON", err, err_len)) != KMS_OK ||
      (r = pragma_expect(ks, "PRAGMA foreign_keys", "1", err, err_len)) != KMS_OK) {
    goto out;
  }
  /* Crypto-shredding must not leave destroyed key tokens in free pages. */
  if ((r = exec_sql(ks, "PRAGMA secure_delete=ON", err, err_len)) != KMS_OK ||
      (r = pragma_expect(ks, "PRAGMA secure_delete", "1", err, err_len)) != KMS_OK) {
    goto out;
  }
  r = KMS_OK;
out:
  return r;
}

/* read_schema_version reads the newest applied migration (0 for a new database). */
static int read_schema_version(sqlite3_stmt *st, int *out) {
  int64_t v;
  int rc, r = KMS_ERR_INTERNAL;

  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_INTERNAL : map_rc(rc);
    goto out;
  }
  if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
    *out = 0;
  } else {
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER) {
      goto out;
    }
    v = sqlite3_column_int64(st, 0);
    if (v < 0 || v > 1000000) {
      goto out;
    }
    *out = (int)v;
  }
  r = KMS_OK;
out:
  stmt_done(st);
  return r;
}

/*
 * migrate brings the schema to SCHEMA_VERSION_LATEST, one migration per
 * transaction. The version is read again under the write lock (BEGIN
 * IMMEDIATE), so two processes opening a new file at once apply each migration
 * exactly once: the second waits, then finds it done.
 */
static int migrate(struct keystore_sqlite *ks, char *err, size_t err_len) {
  sqlite3_stmt *st = NULL;
  int version = 0, rc, r = KMS_ERR_INTERNAL;

  for (;;) {
    if ((r = exec_sql(ks, "BEGIN IMMEDIATE", err, err_len)) != KMS_OK ||
        (r = exec_sql(ks,
                      "CREATE TABLE IF NOT EXISTS schema_version ("
                      "  version INTEGER NOT NULL PRIMARY KEY,"
                      "  applied_ms INTEGER NOT NULL)",
                      err, err_len)) != KMS_OK) {
      goto out;
    }
    rc = sqlite3_prepare_v2(ks->db, "SELECT max(version) FROM schema_version", -1, &st, NULL);
    if (rc != SQLITE_OK) {
      kms_set_err(err, err_len, "keystore: reading schema version: %s", sqlite3_errmsg(ks->db));
      r = map_rc(rc);
      goto out;
    }
    r = read_schema_version(st, &version);
    sqlite3_finalize(st);
    st = NULL;
    if (r != KMS_OK) {
      kms_set_err(err, err_len, "keystore: cannot read schema version: %s", sqlite3_errmsg(ks->db));
      goto out;
    }
    if (version > SCHEMA_VERSION_LATEST) {
      /* A newer kmsd wrote this; running old code on it could lose data. */
      kms_set_err(err, err_len,
              "keystore schema version %d is newer than this kmsd supports (%d); "
              "refusing to downgrade",
              version, SCHEMA_VERSION_LATEST);
      r = KMS_ERR_FAILED_PRECONDITION;
      goto out;
    }
    if (version == SCHEMA_VERSION_LATEST) {
      r = exec_sql(ks, "COMMIT", err, err_len);
      goto out;
    }
    if ((r = exec_sql(ks, migrations[version], err, err_len)) != KMS_OK) {
      goto out;
    }
    rc = sqlite3_prepare_v2(ks->db,
                            "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
                            -1, &st, NULL);
    if (rc != SQLITE_OK || sqlite3_bind_int(st, 1, version + 1) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, kms_now_ms()) != SQLITE_OK) {
      kms_set_err(err, err_len, "keystore: recording migration %d: %s", version + 1,
              sqlite3_errmsg(ks->db));
      r = rc != SQLITE_OK ? map_rc(rc) : KMS_ERR_INTERNAL;
      goto out;
    }
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    st = NULL;
    if (rc != SQLITE_DONE) {
      kms_set_err(err, err_len, "keystore: recording migration %d: %s", version + 1,
              sqlite3_errmsg(ks->db));
      r = map_rc(rc);
      goto out;
    }
    if ((r = exec_sql(ks, "COMMIT", err, err_len)) != KMS_OK) {
      goto out;
    }
  }
out:
  sqlite3_finalize(st);
  tx_rollback(ks);
  return r;
}

static void sqlite_free(struct keystore_sqlite *ks) {
  size_t i;

  if (ks == NULL) {
    return;
  }
  for (i = 0; i < ST_COUNT_; i++) {
    sqlite3_finalize(ks->st[i]);
  }
  /* The last handle to close checkpoints the WAL and removes -wal and -shm. */
  sqlite3_close_v2(ks->db);
  free(ks);
}

static int sqlite_open(keystore **out, const char *location, char *err, size_t err_len) {
  struct keystore_sqlite *ks = NULL;
  const char *path = location;
  size_t i;
  int rc, r = KMS_ERR_INTERNAL;

  *out = NULL;
  /* Accept sqlite:///abs/path too (an empty URL authority), but no host. */
  if (strncmp(path, "//", 2) == 0) {
    if (path[2] != '/') {
      kms_set_err(err, err_len, "sqlite keystore URL takes a path, not a host: use sqlite:/path");
      r = KMS_ERR_CONFIG;
      goto out;
    }
    path += 2;
  }
  /* Keys must be durable and shared across handles: no in-memory or temporary databases. */
  if (path[0] == '\0' || strcmp(path, ":memory:") == 0) {
    kms_set_err(err, err_len, "sqlite keystore URL needs a file path: use sqlite:/path");
    r = KMS_ERR_CONFIG;
    goto out;
  }
  if ((ks = calloc(1, sizeof(*ks))) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  ks->base.ops = &keystore_sqlite_ops;
  if ((r = create_private(path, err, err_len)) != KMS_OK) {
    goto out;
  }
  /*
   * NOMUTEX: a handle is used by one thread at a time, so SQLite's own locking
   * is pure overhead. No SQLITE_OPEN_URI: the path is taken literally.
   */
  rc = sqlite3_open_v2(path, &ks->db,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    kms_set_err(err, err_len, "cannot open keystore %s: %s", path,
            ks->db != NULL ? sqlite3_errmsg(ks->db) : sqlite3_errstr(rc));
    r = (rc & 0xff) == SQLITE_CANTOPEN || (rc & 0xff) == SQLITE_PERM ? KMS_ERR_IO : map_rc(rc);
    goto out;
  }
  sqlite3_extended_result_codes(ks->db, 1);
  if ((r = configure(ks, err, err_len)) != KMS_OK) {
    goto out;
  }
  if ((r = migrate(ks, err, err_len)) != KMS_OK) {
    goto out;
  }
  /* Prepared after migrating: they name the tables the migrations create. */
  for (i = 0; i < ST_COUNT_; i++) {
    rc = sqlite3_prepare_v3(ks->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &ks->st[i],
                            NULL);
    if (rc != SQLITE_OK) {
      kms_set_err(err, err_len, "keystore: preparing statement %zu: %s", i, sqlite3_errmsg(ks->db));
      r = map_rc(rc);
      goto out;
    }
  }
  *out = &ks->base;
  ks = NULL;
  r = KMS_OK;
out:
  sqlite_free(ks);
  return r;
}

static void sqlite_close(keystore *base) {
  sqlite_free(ks_sqlite(base));
}

static int sqlite_schema_version(keystore *base, int *out_version) {
  struct keystore_sqlite *ks = ks_sqlite(base);

  return read_schema_version(ks->st[ST_SCHEMA_VERSION], out_version);
}

/* insert_kek records |kek| as |version|, active, with created_ms |created|. */
static int insert_kek(struct keystore_sqlite *ks, const struct ks_kek *kek, int64_t created) {
  sqlite3_stmt *st = ks->st[ST_KEK_INSERT];
  int r = KMS_ERR_INTERNAL;

  if (sqlite3_bind_text(st, 1, kek->tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int64(st, 2, kek->version) != SQLITE_OK ||
      sqlite3_bind_int(st, 3, KS_KEK_ACTIVE) != SQLITE_OK ||
      sqlite3_bind_int64(st, 4, kek->wrap_mech) != SQLITE_OK ||
      sqlite3_bind_int64(st, 5, kek->root_version) != SQLITE_OK ||
      sqlite3_bind_blob(st, 6, kek->token, (int)kek->token_len, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int64(st, 7, created) != SQLITE_OK) {
    stmt_done(st);
    goto out;
  }
  r = step_done(st);
out:
  return r;
}

static int sqlite_tenant_create(keystore *base, const struct ks_kek *kek) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = ks->st[ST_TENANT_INSERT];
  int64_t created = kek->created_ms != 0 ? kek->created_ms : kms_now_ms();
  int r = KMS_ERR_INTERNAL;

  if ((r = tx_begin(ks)) != KMS_OK) {
    goto out;
  }
  if (sqlite3_bind_text(st, 1, kek->tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int(st, 2, KS_TENANT_ACTIVE) != SQLITE_OK ||
      sqlite3_bind_int64(st, 3, created) != SQLITE_OK) {
    stmt_done(st);
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  /* A primary-key clash here is the ALREADY_EXISTS answer; the rollback undoes nothing. */
  if ((r = step_done(st)) != KMS_OK) {
    goto out;
  }
  if ((r = insert_kek(ks, kek, created)) != KMS_OK) {
    /* Version 1 of a tenant we just inserted cannot clash: that is a bug. */
    if (r == KMS_ERR_ALREADY_EXISTS) {
      r = KMS_ERR_INTERNAL;
    }
    goto out;
  }
  r = tx_commit(ks);
out:
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

/* col_text copies a TEXT column into |dst| (capacity |cap|); too long is a damaged row. */
static int col_text(sqlite3_stmt *st, int col, char *dst, size_t cap) {
  const unsigned char *t;
  int n;

  if (sqlite3_column_type(st, col) != SQLITE_TEXT) {
    return KMS_ERR_INTERNAL;
  }
  t = sqlite3_column_text(st, col);
  n = sqlite3_column_bytes(st, col);
  if (t == NULL || n < 0 || (size_t)n >= cap) {
    return KMS_ERR_INTERNAL;
  }
  memcpy(dst, t, (size_t)n);
  dst[n] = '\0';
  return KMS_OK;
}

/* read_tenant fills |out| (but its id) from the TENANT_COLUMNS starting at |col|. */
static int read_tenant(sqlite3_stmt *st, int col, struct ks_tenant *out) {
  int64_t created, changed, period, destroy_after, current_created;
  int r = KMS_ERR_INTERNAL;

  if ((r = col_state(st, col, &out->state)) != KMS_OK ||
      (r = col_u32(st, col + 1, &out->current_version)) != KMS_OK ||
      (r = col_i64(st, col + 2, 0, INT64_MAX, &created)) != KMS_OK ||
      (r = col_i64(st, col + 3, 0, INT64_MAX, &changed)) != KMS_OK ||
      (r = col_text(st, col + 4, out->state_changed_by, sizeof(out->state_changed_by))) !=
          KMS_OK ||
      (r = col_i64(st, col + 5, 0, UINT32_MAX, &period)) != KMS_OK ||
      (r = col_i64(st, col + 6, 0, INT64_MAX, &destroy_after)) != KMS_OK ||
      (r = col_i64(st, col + 7, 0, INT64_MAX, &current_created)) != KMS_OK) {
    return r;
  }
  out->created_ms = created;
  out->state_changed_ms = changed;
  out->rotation_period_days = (uint32_t)period;
  out->destroy_after_ms = destroy_after;
  out->current_created_ms = current_created;
  return KMS_OK;
}

static int sqlite_tenant_get(keystore *base, const char *tenant_id, struct ks_tenant *out) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = ks->st[ST_TENANT_GET];
  int rc, r = KMS_ERR_INTERNAL;

  if (sqlite3_bind_text(st, 1, tenant_id, -1, SQLITE_STATIC) != SQLITE_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
    goto out;
  }
  if ((r = read_tenant(st, 0, out)) != KMS_OK) {
    goto out;
  }
  snprintf(out->tenant_id, sizeof(out->tenant_id), "%s", tenant_id);
  r = KMS_OK;
out:
  stmt_done(st);
  return r;
}

/* kek_select runs a KEK query bound to (tenant_id[, version]) and reads its one row. */
static int kek_select(struct keystore_sqlite *ks, enum stmt_id which, const char *tenant_id,
                      uint32_t version, struct ks_kek *out) {
  sqlite3_stmt *st = ks->st[which];
  int rc, r = KMS_ERR_INTERNAL;

  if (sqlite3_bind_text(st, 1, tenant_id, -1, SQLITE_STATIC) != SQLITE_OK) {
    goto out;
  }
  if (which == ST_KEK_GET && sqlite3_bind_int64(st, 2, version) != SQLITE_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
    goto out;
  }
  r = read_kek(st, tenant_id, out);
out:
  stmt_done(st);
  return r;
}

static int sqlite_kek_get(keystore *base, const char *tenant_id, uint32_t version,
                          struct ks_kek *out) {
  return kek_select(ks_sqlite(base), ST_KEK_GET, tenant_id, version, out);
}

static int sqlite_kek_current(keystore *base, const char *tenant_id, struct ks_kek *out) {
  return kek_select(ks_sqlite(base), ST_KEK_CURRENT, tenant_id, 0, out);
}

static int add_event(struct keystore_sqlite *ks, const char *tenant_id, uint32_t version,
                     const char *event, const char *by, const char *detail, int64_t at);
static int run(struct keystore_sqlite *ks, int *out_changes, const char *sql, const char *fmt,
               ...);

/*
 * add_version is keystore_kek_add_version and keystore_kek_rotate: the new
 * version, the demotion of the active one and the event, in one transaction.
 * With |need_active| the tenant must be active.
 */
static int add_version(keystore *base, const struct ks_kek *kek, const char *by,
                       const char *reason, int need_active) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_tenant tenant;
  int64_t now = kms_now_ms();
  int64_t created = kek->created_ms != 0 ? kek->created_ms : now;
  int r = KMS_ERR_INTERNAL;

  if ((r = tx_begin(ks)) != KMS_OK) {
    goto out;
  }
  /* Read under the write lock: no other rotation can slip in before our commit. */
  memset(&tenant, 0, sizeof(tenant));
  if ((r = sqlite_tenant_get(base, kek->tenant_id, &tenant)) != KMS_OK) {
    goto out;
  }
  if (need_active && tenant.state != KS_TENANT_ACTIVE) {
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  if ((uint64_t)kek->version != (uint64_t)tenant.current_version + 1) {
    r = kek_exists(ks, kek->tenant_id, kek->version);
    if (r == KMS_OK) {
      r = KMS_ERR_ALREADY_EXISTS; /* a concurrent rotation won */
    } else if (r == KMS_ERR_NOT_FOUND) {
      r = KMS_ERR_INVALID_ARGUMENT; /* a gap in the version numbers */
    }
    goto out;
  }
  /* Demote first, so the new version is not caught by the demotion. */
  st = ks->st[ST_KEK_DEMOTE];
  if (sqlite3_bind_text(st, 1, kek->tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int(st, 2, KS_KEK_DECRYPT_ONLY) != SQLITE_OK ||
      sqlite3_bind_int64(st, 3, now) != SQLITE_OK ||
      sqlite3_bind_int(st, 4, KS_KEK_ACTIVE) != SQLITE_OK ||
      sqlite3_bind_text(st, 5, by, -1, SQLITE_STATIC) != SQLITE_OK) {
    stmt_done(st);
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  if ((r = step_done(st)) != KMS_OK) {
    goto out;
  }
  if ((r = insert_kek(ks, kek, created)) != KMS_OK) {
    goto out;
  }
  st = ks->st[ST_TENANT_SET_CURRENT];
  if (sqlite3_bind_text(st, 1, kek->tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int64(st, 2, kek->version) != SQLITE_OK) {
    stmt_done(st);
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  if ((r = step_done(st)) != KMS_OK) {
    goto out;
  }
  if (sqlite3_changes(ks->db) != 1) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  if ((r = add_event(ks, kek->tenant_id, kek->version, "rotated", by, reason, now)) != KMS_OK) {
    goto out;
  }
  /*
   * The tenant's stored session keys move to the new version in the
   * background (kmsd/sessions.c); recording the job in the rotation's own
   * transaction means no rotation is ever missed. A job still running for an
   * earlier rotation starts over towards the newer version.
   */
  r = run(ks, NULL,
          "INSERT INTO session_rewrap (tenant_id, target_version, after, started_ms)"
          " SELECT ?1, ?2, '', ?3 WHERE EXISTS (SELECT 1 FROM sessions WHERE tenant_id = ?1)"
          " ON CONFLICT (tenant_id) DO UPDATE SET target_version = excluded.target_version,"
          " after = '', started_ms = excluded.started_ms",
          "tii", kek->tenant_id, (int64_t)kek->version, now);
  if (r != KMS_OK) {
    goto out;
  }
  r = tx_commit(ks);
out:
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

static int sqlite_kek_add_version(keystore *base, const struct ks_kek *kek) {
  /* Only the use budget rotates this way (kmsd/keyops.c), on kmsd's own authority. */
  return add_version(base, kek, "kmsd", "use limit reached", 0);
}

static int sqlite_kek_rotate(keystore *base, const struct ks_kek *kek, const char *by,
                             const char *reason) {
  return add_version(base, kek, by, reason, 1);
}

static int sqlite_kek_reserve_uses(keystore *base, const char *tenant_id, uint32_t version,
                                   uint64_t n, uint64_t limit, uint64_t *out_total) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = ks->st[ST_USES_RESERVE];
  uint64_t total = 0;
  int64_t v = 0;
  int rc, r = KMS_ERR_INTERNAL;

  /* SQLite integers are signed 64-bit; no counter can get past that anyway. */
  if (limit > INT64_MAX) {
    limit = INT64_MAX;
  }
  if (n > limit) {
    r = kek_exists(ks, tenant_id, version);
    if (r == KMS_OK) {
      r = KMS_ERR_KEY_LIMIT;
    }
    goto out;
  }
  if (sqlite3_bind_text(st, 1, tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int64(st, 2, version) != SQLITE_OK ||
      sqlite3_bind_int64(st, 3, (int64_t)n) != SQLITE_OK ||
      sqlite3_bind_int64(st, 4, (int64_t)limit) != SQLITE_OK) {
    stmt_done(st);
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    r = col_i64(st, 0, 0, INT64_MAX, &v);
    /* Run to completion: in autocommit mode the commit (and its fsync) happens here. */
    rc = sqlite3_step(st);
    stmt_done(st);
    if (rc != SQLITE_DONE) {
      r = map_rc(rc);
      goto out;
    }
    total = (uint64_t)v;
    goto out;
  }
  stmt_done(st);
  if (rc != SQLITE_DONE) {
    r = map_rc(rc);
    goto out;
  }
  /* No row changed: the version is unknown, or the reservation would pass the limit. */
  r = kek_exists(ks, tenant_id, version);
  if (r == KMS_OK) {
    r = KMS_ERR_KEY_LIMIT;
  }
out:
  if (r == KMS_OK && out_total != NULL) {
    *out_total = total;
  }
  return r;
}

/* ---- Key lifecycle (schema 2) ---------------------------------------------------- */

/*
 * Lifecycle statements run on officer requests and on kmsd's timer, rarely
 * next to data-key traffic, so they are prepared per call rather than kept.
 */

#define DAY_MS INT64_C(86400000)

/*
 * bind_fmt binds ?1, ?2, ... from |fmt|: 't' a string (const char *), 'i' an
 * int64_t. The strings must outlive the statement's step.
 */
static int bind_fmt(sqlite3_stmt *st, const char *fmt, va_list ap) {
  int i, rc = SQLITE_OK;

  for (i = 0; fmt[i] != '\0' && rc == SQLITE_OK; i++) {
    if (fmt[i] == 't') {
      rc = sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_STATIC);
    } else if (fmt[i] == 'i') {
      rc = sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
    } else {
      return KMS_ERR_INTERNAL;
    }
  }
  return rc == SQLITE_OK ? KMS_OK : KMS_ERR_INTERNAL;
}

/* query prepares |sql| and binds it; the caller steps and finalizes *out. */
static int query(struct keystore_sqlite *ks, sqlite3_stmt **out, const char *sql,
                 const char *fmt, ...) {
  va_list ap;
  int rc, r;

  *out = NULL;
  rc = sqlite3_prepare_v2(ks->db, sql, -1, out, NULL);
  if (rc != SQLITE_OK) {
    return map_rc(rc);
  }
  va_start(ap, fmt);
  r = bind_fmt(*out, fmt, ap);
  va_end(ap);
  if (r != KMS_OK) {
    sqlite3_finalize(*out);
    *out = NULL;
  }
  return r;
}

/* run prepares, binds and runs a statement that returns no rows; *out_changes if not NULL. */
static int run(struct keystore_sqlite *ks, int *out_changes, const char *sql, const char *fmt,
               ...) {
  sqlite3_stmt *st = NULL;
  va_list ap;
  int rc, r;

  rc = sqlite3_prepare_v2(ks->db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK) {
    return map_rc(rc);
  }
  va_start(ap, fmt);
  r = bind_fmt(st, fmt, ap);
  va_end(ap);
  if (r == KMS_OK) {
    rc = sqlite3_step(st);
    r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
    if (rc == SQLITE_ROW) {
      r = KMS_ERR_INTERNAL;
    }
  }
  if (r == KMS_OK && out_changes != NULL) {
    *out_changes = sqlite3_changes(ks->db);
  }
  sqlite3_finalize(st);
  return r;
}

static int add_event(struct keystore_sqlite *ks, const char *tenant_id, uint32_t version,
                     const char *event, const char *by, const char *detail, int64_t at) {
  return run(ks, NULL,
             "INSERT INTO key_events (tenant_id, version, event, actor, detail, at_ms)"
             " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
             "tittti", tenant_id, (int64_t)version, event, by,
             detail != NULL ? detail : "", at);
}

/* grow makes room for one more element in a malloc'd list. */
static int grow(void **list, size_t *cap, size_t n, size_t elem) {
  void *p;
  size_t ncap;

  if (n < *cap) {
    return KMS_OK;
  }
  ncap = *cap == 0 ? 8 : *cap * 2;
  if (ncap > SIZE_MAX / elem) {
    return KMS_ERR_ALLOC;
  }
  p = realloc(*list, ncap * elem);
  if (p == NULL) {
    return KMS_ERR_ALLOC;
  }
  *list = p;
  *cap = ncap;
  return KMS_OK;
}

static int tenant_exists(struct keystore_sqlite *ks, const char *tenant_id) {
  sqlite3_stmt *st = NULL;
  int rc, r;

  r = query(ks, &st, "SELECT 1 FROM tenants WHERE tenant_id = ?1", "t", tenant_id);
  if (r != KMS_OK) {
    return r;
  }
  rc = sqlite3_step(st);
  r = rc == SQLITE_ROW ? KMS_OK : rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
  sqlite3_finalize(st);
  return r;
}

static int sqlite_tenant_list(keystore *base, const char *after, size_t limit,
                              struct ks_tenant **out, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_tenant *list = NULL;
  size_t n = 0, cap = 0;
  int rc, r;

  r = query(ks, &st,
            "SELECT t.tenant_id, " TENANT_COLUMNS TENANT_FROM
            " WHERE t.tenant_id > ?1 ORDER BY t.tenant_id LIMIT ?2",
            "ti", after, (int64_t)(limit > INT64_MAX ? INT64_MAX : limit));
  if (r != KMS_OK) {
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((r = grow((void **)&list, &cap, n, sizeof(*list))) != KMS_OK) {
      goto out;
    }
    memset(&list[n], 0, sizeof(list[n]));
    if ((r = col_text(st, 0, list[n].tenant_id, sizeof(list[n].tenant_id))) != KMS_OK ||
        (r = read_tenant(st, 1, &list[n])) != KMS_OK) {
      goto out;
    }
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    free(list);
    return r;
  }
  *out = list;
  *out_n = n;
  return KMS_OK;
}

static int sqlite_kek_list(keystore *base, const char *tenant_id, struct ks_version_info **out,
                           size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_version_info *list = NULL, *v;
  size_t n = 0, cap = 0;
  int64_t created, changed, uses, destroy_after;
  int rc, r;

  if ((r = tenant_exists(ks, tenant_id)) != KMS_OK) {
    goto out;
  }
  r = query(ks, &st,
            "SELECT version, state, root_version, created_ms, state_changed_ms,"
            " state_changed_by, uses, destroy_after_ms FROM kek_versions"
            " WHERE tenant_id = ?1 ORDER BY version",
            "t", tenant_id);
  if (r != KMS_OK) {
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((r = grow((void **)&list, &cap, n, sizeof(*list))) != KMS_OK) {
      goto out;
    }
    v = &list[n];
    memset(v, 0, sizeof(*v));
    if ((r = col_u32(st, 0, &v->version)) != KMS_OK ||
        (r = col_state(st, 1, &v->state)) != KMS_OK ||
        (r = col_u32(st, 2, &v->root_version)) != KMS_OK ||
        (r = col_i64(st, 3, 0, INT64_MAX, &created)) != KMS_OK ||
        (r = col_i64(st, 4, 0, INT64_MAX, &changed)) != KMS_OK ||
        (r = col_text(st, 5, v->state_changed_by, sizeof(v->state_changed_by))) != KMS_OK ||
        (r = col_i64(st, 6, 0, INT64_MAX, &uses)) != KMS_OK ||
        (r = col_i64(st, 7, 0, INT64_MAX, &destroy_after)) != KMS_OK) {
      goto out;
    }
    v->created_ms = created;
    v->state_changed_ms = changed;
    v->uses = (uint64_t)uses;
    v->destroy_after_ms = destroy_after;
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    free(list);
    return r;
  }
  *out = list;
  *out_n = n;
  return KMS_OK;
}

/* read_event fills |e| from the columns at_ms, version, event, actor, detail starting at |col|. */
static int read_event(sqlite3_stmt *st, int col, struct ks_event *e) {
  int64_t at;
  int r;

  memset(e, 0, sizeof(*e));
  if ((r = col_i64(st, col, 0, INT64_MAX, &at)) != KMS_OK ||
      (r = col_u32(st, col + 1, &e->version)) != KMS_OK ||
      (r = col_text(st, col + 2, e->event, sizeof(e->event))) != KMS_OK ||
      (r = col_text(st, col + 3, e->by, sizeof(e->by))) != KMS_OK ||
      (r = col_text(st, col + 4, e->detail, sizeof(e->detail))) != KMS_OK) {
    return r;
  }
  e->at_ms = at;
  return KMS_OK;
}

static int sqlite_event_list(keystore *base, const char *tenant_id, size_t limit,
                             struct ks_event **out, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_event *list = NULL, *e;
  size_t n = 0, cap = 0;
  int rc, r;

  r = query(ks, &st,
            "SELECT at_ms, version, event, actor, detail FROM ("
            " SELECT id, at_ms, version, event, actor, detail FROM key_events"
            " WHERE tenant_id = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
            "ti", tenant_id, (int64_t)(limit > INT64_MAX ? INT64_MAX : limit));
  if (r != KMS_OK) {
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((r = grow((void **)&list, &cap, n, sizeof(*list))) != KMS_OK) {
      goto out;
    }
    e = &list[n];
    if ((r = read_event(st, 0, e)) != KMS_OK) {
      goto out;
    }
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    free(list);
    return r;
  }
  *out = list;
  *out_n = n;
  return KMS_OK;
}

static int sqlite_event_add(keystore *base, const char *tenant_id, uint32_t version,
                            const char *event, const char *by, const char *detail) {
  return add_event(ks_sqlite(base), tenant_id, version, event, by, detail, kms_now_ms());
}

/* change_locked is keystore_change_state inside the caller's transaction. */
static int change_locked(struct keystore_sqlite *ks, const struct ks_change *c, int64_t now,
                         int *out_state) {
  sqlite3_stmt *st = NULL;
  int64_t state = 0, prior = 0, current = 0;
  int to, rc, changes = 0, r = KMS_ERR_INTERNAL;

  if (c->version == 0) {
    r = query(ks, &st, "SELECT state, prior_state, current_version FROM tenants"
                       " WHERE tenant_id = ?1", "t", c->tenant_id);
  } else {
    r = query(ks, &st,
              "SELECT k.state, k.prior_state, t.current_version FROM kek_versions k"
              " JOIN tenants t ON t.tenant_id = k.tenant_id"
              " WHERE k.tenant_id = ?1 AND k.version = ?2",
              "ti", c->tenant_id, (int64_t)c->version);
  }
  if (r != KMS_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
    goto out;
  }
  if ((r = col_i64(st, 0, 1, 31, &state)) != KMS_OK ||
      (r = col_i64(st, 1, 0, 31, &prior)) != KMS_OK ||
      (r = col_i64(st, 2, 1, UINT32_MAX, &current)) != KMS_OK) {
    goto out;
  }
  sqlite3_finalize(st);
  st = NULL;
  *out_state = (int)state;
  if ((c->from_states & KS_STATE_BIT(state)) == 0) {
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  to = c->to_state;
  if (to == 0) {
    to = prior != 0 ? (int)prior : KS_KEK_ACTIVE; /* KS_KEK_ACTIVE == KS_TENANT_ACTIVE */
  }
  /* Only the newest version may encrypt: an older one comes back decrypt-only. */
  if (c->version != 0 && to == KS_KEK_ACTIVE && c->version != (uint64_t)current) {
    to = KS_KEK_DECRYPT_ONLY;
  }
  {
    int pending = c->version == 0 ? to == KS_TENANT_PENDING_DESTRUCTION
                                  : to == KS_KEK_PENDING_DESTRUCTION;
    int64_t new_prior = pending ? state : 0;
    int64_t after = pending ? c->destroy_after_ms : 0;
    int64_t req = pending ? (int64_t)c->request_id : 0;

    if (c->version == 0) {
      r = run(ks, &changes,
              "UPDATE tenants SET state = ?2, state_changed_ms = ?3, state_changed_by = ?4,"
              " prior_state = ?5, destroy_after_ms = ?6, destroy_request_id = ?7"
              " WHERE tenant_id = ?1",
              "tiitiii", c->tenant_id, (int64_t)to, now, c->by, new_prior, after, req);
    } else {
      r = run(ks, &changes,
              "UPDATE kek_versions SET state = ?3, state_changed_ms = ?4, state_changed_by = ?5,"
              " prior_state = ?6, destroy_after_ms = ?7, destroy_request_id = ?8"
              " WHERE tenant_id = ?1 AND version = ?2",
              "tiiitiii", c->tenant_id, (int64_t)c->version, (int64_t)to, now, c->by, new_prior,
              after, req);
    }
  }
  if (r != KMS_OK) {
    goto out;
  }
  if (changes != 1) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  if ((r = add_event(ks, c->tenant_id, c->version, c->event, c->by, c->detail, now)) !=
      KMS_OK) {
    goto out;
  }
  *out_state = to;
  r = KMS_OK;
out:
  sqlite3_finalize(st);
  return r;
}

static int sqlite_change_state(keystore *base, const struct ks_change *c, int *out_state) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  int r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  r = change_locked(ks, c, kms_now_ms(), out_state);
  if (r == KMS_OK) {
    r = tx_commit(ks);
  }
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

static int sqlite_tenant_set_rotation(keystore *base, const char *tenant_id, uint32_t days,
                                      const char *by) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  char detail[64];
  int changes = 0, r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  r = run(ks, &changes, "UPDATE tenants SET rotation_period_days = ?2 WHERE tenant_id = ?1",
          "ti", tenant_id, (int64_t)days);
  if (r == KMS_OK && changes != 1) {
    r = KMS_ERR_NOT_FOUND;
  }
  if (r == KMS_OK) {
    if (days == 0) {
      snprintf(detail, sizeof(detail), "rotation period: kmsd default");
    } else {
      snprintf(detail, sizeof(detail), "rotation period: %u days", days);
    }
    r = add_event(ks, tenant_id, 0, "rotation_period_set", by, detail, kms_now_ms());
  }
  if (r == KMS_OK) {
    r = tx_commit(ks);
  }
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

static int sqlite_rotation_due(keystore *base, int64_t now, uint32_t default_days,
                               struct ks_kek *out, size_t cap, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  char id[KS_TENANT_ID_MAX + 1];
  size_t n = 0;
  int rc = SQLITE_DONE, r;

  /* Only an active tenant whose newest version is active and old enough. */
  r = query(ks, &st,
            "SELECT " KEK_COLUMNS ", t.tenant_id FROM tenants t JOIN kek_versions k"
            " ON k.tenant_id = t.tenant_id AND k.version = t.current_version"
            " WHERE t.state = 1 AND k.state = 1"
            " AND (CASE WHEN t.rotation_period_days > 0 THEN t.rotation_period_days"
            "      ELSE ?2 END) > 0"
            " AND k.created_ms <= ?1 - (CASE WHEN t.rotation_period_days > 0"
            "      THEN t.rotation_period_days ELSE ?2 END) * 86400000"
            " ORDER BY k.created_ms LIMIT ?3",
            "iii", now, (int64_t)default_days, (int64_t)(cap > INT64_MAX ? INT64_MAX : cap));
  if (r != KMS_OK) {
    goto out;
  }
  while (n < cap && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    memset(&out[n], 0, sizeof(out[n]));
    if ((r = col_text(st, 8, id, sizeof(id))) != KMS_OK ||
        (r = read_kek(st, id, &out[n])) != KMS_OK) {
      goto out;
    }
    n++;
  }
  r = rc == SQLITE_DONE || rc == SQLITE_ROW ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  *out_n = r == KMS_OK ? n : 0;
  return r;
}

static const char *action_name(int action) {
  switch (action) {
  case KS_ACTION_DISABLE_TENANT:
    return "disable_tenant";
  case KS_ACTION_DESTROY_TENANT:
    return "destroy_tenant";
  case KS_ACTION_DESTROY_VERSION:
    return "destroy_version";
  default:
    return "unknown";
  }
}

#define REQUEST_COLUMNS                                                                  \
  "id, action, tenant_id, version, waiting_days, requested_by, requested_ms, expires_ms," \
  " approvals_required, state, closed_ms"

/* read_request fills |out| from REQUEST_COLUMNS and then reads its approvals. */
static int read_request(struct keystore_sqlite *ks, sqlite3_stmt *st, struct ks_request *out) {
  sqlite3_stmt *ap = NULL;
  int64_t id, action, version, days, req_ms, exp_ms, need, state, closed;
  int rc, r;

  memset(out, 0, sizeof(*out));
  if ((r = col_i64(st, 0, 1, INT64_MAX, &id)) != KMS_OK ||
      (r = col_i64(st, 1, KS_ACTION_DISABLE_TENANT, KS_ACTION_DESTROY_VERSION, &action)) !=
          KMS_OK ||
      (r = col_text(st, 2, out->tenant_id, sizeof(out->tenant_id))) != KMS_OK ||
      (r = col_i64(st, 3, 0, UINT32_MAX, &version)) != KMS_OK ||
      (r = col_i64(st, 4, 0, UINT32_MAX, &days)) != KMS_OK ||
      (r = col_text(st, 5, out->requested_by, sizeof(out->requested_by))) != KMS_OK ||
      (r = col_i64(st, 6, 0, INT64_MAX, &req_ms)) != KMS_OK ||
      (r = col_i64(st, 7, 0, INT64_MAX, &exp_ms)) != KMS_OK ||
      (r = col_i64(st, 8, 2, KS_APPROVERS_MAX, &need)) != KMS_OK ||
      (r = col_i64(st, 9, KS_REQUEST_PENDING, KS_REQUEST_CANCELLED, &state)) != KMS_OK ||
      (r = col_i64(st, 10, 0, INT64_MAX, &closed)) != KMS_OK) {
    return r;
  }
  out->id = (uint64_t)id;
  out->action = (int)action;
  out->version = (uint32_t)version;
  out->waiting_days = (uint32_t)days;
  out->requested_ms = req_ms;
  out->expires_ms = exp_ms;
  out->approvals_required = (uint32_t)need;
  out->state = (int)state;
  out->closed_ms = closed;
  /* The requester first, then in the order they approved. */
  r = query(ks, &ap,
            "SELECT approver FROM approvals WHERE request_id = ?1"
            " ORDER BY approver = ?2 DESC, approved_ms, approver",
            "it", id, out->requested_by);
  if (r != KMS_OK) {
    return r;
  }
  while ((rc = sqlite3_step(ap)) == SQLITE_ROW) {
    if (out->n_approved >= KS_APPROVERS_MAX) {
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    if ((r = col_text(ap, 0, out->approved_by[out->n_approved],
                      sizeof(out->approved_by[0]))) != KMS_OK) {
      goto out;
    }
    out->n_approved++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(ap);
  return r;
}

static int request_load(struct keystore_sqlite *ks, uint64_t id, struct ks_request *out) {
  sqlite3_stmt *st = NULL;
  int rc, r;

  r = query(ks, &st, "SELECT " REQUEST_COLUMNS " FROM approval_requests WHERE id = ?1", "i",
            (int64_t)id);
  if (r != KMS_OK) {
    return r;
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    r = read_request(ks, st, out);
  } else {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
  }
  sqlite3_finalize(st);
  return r;
}

static int sqlite_request_get(keystore *base, uint64_t id, struct ks_request *out) {
  return request_load(ks_sqlite(base), id, out);
}

static int sqlite_request_create(keystore *base, struct ks_request *req) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  char detail[96];
  int64_t id = 0;
  int rc, r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  if ((r = tenant_exists(ks, req->tenant_id)) != KMS_OK) {
    goto out;
  }
  if (req->version != 0 && (r = kek_exists(ks, req->tenant_id, req->version)) != KMS_OK) {
    goto out;
  }
  /* One open request per action and target: a second would only split the approvals. */
  r = query(ks, &st,
            "SELECT id FROM approval_requests WHERE state = 1 AND action = ?1"
            " AND tenant_id = ?2 AND version = ?3 AND expires_ms > ?4",
            "itii", (int64_t)req->action, req->tenant_id, (int64_t)req->version,
            req->requested_ms);
  if (r != KMS_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    req->id = (uint64_t)sqlite3_column_int64(st, 0);
    r = KMS_ERR_ALREADY_EXISTS;
    goto out;
  }
  if (rc != SQLITE_DONE) {
    r = map_rc(rc);
    goto out;
  }
  sqlite3_finalize(st);
  st = NULL;
  r = run(ks, NULL,
          "INSERT INTO approval_requests (action, tenant_id, version, waiting_days,"
          " requested_by, requested_ms, expires_ms, approvals_required, state)"
          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1)",
          "itiitiii", (int64_t)req->action, req->tenant_id, (int64_t)req->version,
          (int64_t)req->waiting_days, req->requested_by, req->requested_ms, req->expires_ms,
          (int64_t)req->approvals_required);
  if (r != KMS_OK) {
    goto out;
  }
  id = sqlite3_last_insert_rowid(ks->db);
  /* The requester is the first of the M officers. */
  r = run(ks, NULL,
          "INSERT INTO approvals (request_id, approver, approved_ms) VALUES (?1, ?2, ?3)", "iti",
          id, req->requested_by, req->requested_ms);
  if (r != KMS_OK) {
    goto out;
  }
  snprintf(detail, sizeof(detail), "request %lld: %s, %u of %u approvals", (long long)id,
           action_name(req->action), 1u, req->approvals_required);
  if ((r = add_event(ks, req->tenant_id, req->version, "approval_requested", req->requested_by,
                     detail, req->requested_ms)) != KMS_OK) {
    goto out;
  }
  if ((r = tx_commit(ks)) != KMS_OK) {
    goto out;
  }
  req->id = (uint64_t)id;
  req->state = KS_REQUEST_PENDING;
  req->closed_ms = 0;
  memset(req->approved_by, 0, sizeof(req->approved_by));
  snprintf(req->approved_by[0], sizeof(req->approved_by[0]), "%s", req->requested_by);
  req->n_approved = 1;
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

static int sqlite_request_list(keystore *base, const char *tenant_id, int include_closed,
                               struct ks_request **out, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_request *list = NULL;
  size_t n = 0, cap = 0;
  int rc, r;

  r = query(ks, &st,
            "SELECT " REQUEST_COLUMNS " FROM approval_requests"
            " WHERE (?1 = '' OR tenant_id = ?1) AND (?2 OR state = 1) ORDER BY id",
            "ti", tenant_id, (int64_t)(include_closed != 0));
  if (r != KMS_OK) {
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((r = grow((void **)&list, &cap, n, sizeof(*list))) != KMS_OK ||
        (r = read_request(ks, st, &list[n])) != KMS_OK) {
      goto out;
    }
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    free(list);
    return r;
  }
  *out = list;
  *out_n = n;
  return KMS_OK;
}

/* close_request marks a pending request |state| and records why. */
static int close_request(struct keystore_sqlite *ks, const struct ks_request *req, int state,
                         const char *event, const char *by, int64_t now) {
  char detail[64];
  int changes = 0, r;

  r = run(ks, &changes,
          "UPDATE approval_requests SET state = ?2, closed_ms = ?3 WHERE id = ?1 AND state = 1",
          "iii", (int64_t)req->id, (int64_t)state, now);
  if (r != KMS_OK) {
    return r;
  }
  if (changes != 1) {
    return KMS_ERR_INTERNAL;
  }
  snprintf(detail, sizeof(detail), "request %llu: %s", (unsigned long long)req->id,
           action_name(req->action));
  return add_event(ks, req->tenant_id, req->version, event, by, detail, now);
}

static int sqlite_request_approve(keystore *base, uint64_t id, const char *approver,
                                  int64_t now, struct ks_request *out, int *out_executed,
                                  int *out_refusal) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  struct ks_request req;
  struct ks_change c;
  char detail[KS_PRINCIPAL_MAX + 64];
  int state = 0, commit_refusal = 0, r;
  size_t i;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  if ((r = request_load(ks, id, &req)) != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_FAILED_PRECONDITION;
  if (req.state == KS_REQUEST_EXPIRED) {
    *out_refusal = KS_APPROVE_EXPIRED;
    goto out;
  }
  if (req.state != KS_REQUEST_PENDING) {
    *out_refusal = KS_APPROVE_CLOSED;
    goto out;
  }
  if (now >= req.expires_ms) {
    /* Record the expiry, so the request reads "expired" from now on. */
    if ((r = close_request(ks, &req, KS_REQUEST_EXPIRED, "request_expired", "kmsd", now)) !=
        KMS_OK) {
      goto out;
    }
    commit_refusal = 1;
    *out_refusal = KS_APPROVE_EXPIRED;
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  if (strcmp(req.requested_by, approver) == 0) {
    *out_refusal = KS_APPROVE_SELF;
    goto out;
  }
  for (i = 0; i < req.n_approved; i++) {
    if (strcmp(req.approved_by[i], approver) == 0) {
      *out_refusal = KS_APPROVE_TWICE;
      goto out;
    }
  }
  r = run(ks, NULL,
          "INSERT INTO approvals (request_id, approver, approved_ms) VALUES (?1, ?2, ?3)", "iti",
          (int64_t)id, approver, now);
  if (r != KMS_OK) {
    goto out;
  }
  snprintf(detail, sizeof(detail), "request %llu: %s, %zu of %u approvals",
           (unsigned long long)id, action_name(req.action), req.n_approved + 1,
           req.approvals_required);
  if ((r = add_event(ks, req.tenant_id, req.version, "approved", approver, detail, now)) !=
      KMS_OK) {
    goto out;
  }
  if (req.n_approved + 1 >= req.approvals_required) {
    memset(&c, 0, sizeof(c));
    c.tenant_id = req.tenant_id;
    c.version = req.action == KS_ACTION_DESTROY_VERSION ? req.version : 0;
    c.request_id = id;
    c.by = approver;
    snprintf(detail, sizeof(detail), "request %llu by %s", (unsigned long long)id,
             req.requested_by);
    c.detail = detail;
    if (req.action == KS_ACTION_DISABLE_TENANT) {
      c.from_states = KS_STATE_BIT(KS_TENANT_ACTIVE);
      c.to_state = KS_TENANT_DISABLED;
      c.event = "disabled";
    } else {
      c.from_states = req.action == KS_ACTION_DESTROY_TENANT
                          ? KS_STATE_BIT(KS_TENANT_ACTIVE) | KS_STATE_BIT(KS_TENANT_DISABLED)
                          : KS_STATE_BIT(KS_KEK_ACTIVE) | KS_STATE_BIT(KS_KEK_DECRYPT_ONLY) |
                                KS_STATE_BIT(KS_KEK_DISABLED);
      c.to_state = req.action == KS_ACTION_DESTROY_TENANT ? KS_TENANT_PENDING_DESTRUCTION
                                                          : KS_KEK_PENDING_DESTRUCTION;
      c.destroy_after_ms = now + (int64_t)req.waiting_days * DAY_MS;
      c.event = "destruction_scheduled";
    }
    r = change_locked(ks, &c, now, &state);
    if (r == KMS_ERR_FAILED_PRECONDITION) {
      *out_refusal = KS_APPROVE_TARGET;
      goto out;
    }
    if (r != KMS_OK) {
      goto out;
    }
    if ((r = close_request(ks, &req, KS_REQUEST_EXECUTED, "request_executed", approver, now)) !=
        KMS_OK) {
      goto out;
    }
    *out_executed = 1;
  }
  r = tx_commit(ks);
out:
  if (commit_refusal) {
    int cr = tx_commit(ks);
    if (cr != KMS_OK) {
      r = cr;
    }
  }
  if (r != KMS_OK && !(commit_refusal && r == KMS_ERR_FAILED_PRECONDITION)) {
    tx_rollback(ks);
  }
  if (r == KMS_OK || r == KMS_ERR_FAILED_PRECONDITION) {
    /* The request as it stands now (after our commit or rollback). */
    int lr = request_load(ks, id, out);
    if (lr != KMS_OK) {
      memset(out, 0, sizeof(*out));
    }
  }
  if (r != KMS_OK) {
    *out_executed = 0;
  }
  return r;
}

static int sqlite_request_cancel(keystore *base, const char *tenant_id, uint32_t version,
                                 int action, const char *by, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  struct ks_request *list = NULL;
  size_t n = 0, i, done = 0;
  int64_t now = kms_now_ms();
  int r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  if ((r = sqlite_request_list(base, tenant_id, 0, &list, &n)) != KMS_OK) {
    goto out;
  }
  for (i = 0; i < n; i++) {
    if (list[i].action != action || list[i].version != version) {
      continue;
    }
    if ((r = close_request(ks, &list[i], KS_REQUEST_CANCELLED, "request_cancelled", by, now)) !=
        KMS_OK) {
      goto out;
    }
    done++;
  }
  r = tx_commit(ks);
out:
  free(list);
  if (r != KMS_OK) {
    tx_rollback(ks);
    done = 0;
  }
  *out_n = done;
  return r;
}

static int sqlite_requests_expire(keystore *base, int64_t now, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  struct ks_request *list = NULL;
  size_t n = 0, i, done = 0;
  int r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  if ((r = sqlite_request_list(base, "", 0, &list, &n)) != KMS_OK) {
    goto out;
  }
  for (i = 0; i < n; i++) {
    if (list[i].expires_ms > now) {
      continue;
    }
    if ((r = close_request(ks, &list[i], KS_REQUEST_EXPIRED, "request_expired", "kmsd", now)) !=
        KMS_OK) {
      goto out;
    }
    done++;
  }
  r = tx_commit(ks);
out:
  free(list);
  if (r != KMS_OK) {
    tx_rollback(ks);
    done = 0;
  }
  *out_n = done;
  return r;
}

static int sqlite_destruction_due(keystore *base, int64_t now, struct ks_due *out, size_t cap,
                                  size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  size_t n = 0;
  int rc = SQLITE_DONE, r;

  r = query(ks, &st,
            "SELECT tenant_id, 0 FROM tenants WHERE state = 3 AND destroy_after_ms <= ?1"
            " UNION ALL"
            " SELECT tenant_id, version FROM kek_versions WHERE state = 4"
            " AND destroy_after_ms <= ?1 LIMIT ?2",
            "ii", now, (int64_t)(cap > INT64_MAX ? INT64_MAX : cap));
  if (r != KMS_OK) {
    goto out;
  }
  while (n < cap && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    memset(&out[n], 0, sizeof(out[n]));
    if ((r = col_text(st, 0, out[n].tenant_id, sizeof(out[n].tenant_id))) != KMS_OK ||
        (r = col_u32(st, 1, &out[n].version)) != KMS_OK) {
      goto out;
    }
    n++;
  }
  r = rc == SQLITE_DONE || rc == SQLITE_ROW ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  *out_n = r == KMS_OK ? n : 0;
  return r;
}

/* join_approvers writes the approvers but the requester, one a line, into |dst|. */
static void join_approvers(const struct ks_request *req, char *dst, size_t cap) {
  size_t i, used = 0;

  dst[0] = '\0';
  for (i = 0; i < req->n_approved; i++) {
    int w;

    if (strcmp(req->approved_by[i], req->requested_by) == 0) {
      continue;
    }
    w = snprintf(dst + used, cap - used, "%s%s", used > 0 ? "\n" : "", req->approved_by[i]);
    if (w < 0 || (size_t)w >= cap - used) {
      break;
    }
    used += (size_t)w;
  }
}

/* split_approvers is the reverse of join_approvers. */
static void split_approvers(const char *s, struct ks_receipt *out) {
  out->n_approved = 0;
  while (*s != '\0' && out->n_approved < KS_APPROVERS_MAX) {
    const char *nl = strchr(s, '\n');
    size_t len = nl != NULL ? (size_t)(nl - s) : strlen(s);

    if (len >= sizeof(out->approved_by[0])) {
      len = sizeof(out->approved_by[0]) - 1;
    }
    memcpy(out->approved_by[out->n_approved], s, len);
    out->approved_by[out->n_approved][len] = '\0';
    out->n_approved++;
    s += nl != NULL ? (size_t)(nl - s) + 1 : strlen(s);
  }
}

static int sqlite_destroy(keystore *base, const char *tenant_id, uint32_t version, int64_t now,
                          struct ks_receipt *out) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_request req;
  char approvers[KS_APPROVERS_MAX * (KS_PRINCIPAL_MAX + 1)];
  char detail[64];
  int64_t state = 0, after = 0, req_id = 0, v;
  size_t used = 0;
  int rc, changes = 0, r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  if (version == 0) {
    r = query(ks, &st,
              "SELECT state, destroy_after_ms, destroy_request_id FROM tenants"
              " WHERE tenant_id = ?1",
              "t", tenant_id);
  } else {
    r = query(ks, &st,
              "SELECT state, destroy_after_ms, destroy_request_id FROM kek_versions"
              " WHERE tenant_id = ?1 AND version = ?2",
              "ti", tenant_id, (int64_t)version);
  }
  if (r != KMS_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
    goto out;
  }
  if ((r = col_i64(st, 0, 1, 31, &state)) != KMS_OK ||
      (r = col_i64(st, 1, 0, INT64_MAX, &after)) != KMS_OK ||
      (r = col_i64(st, 2, 0, INT64_MAX, &req_id)) != KMS_OK) {
    goto out;
  }
  sqlite3_finalize(st);
  st = NULL;
  if (state != (version == 0 ? KS_TENANT_PENDING_DESTRUCTION : KS_KEK_PENDING_DESTRUCTION) ||
      after > now) {
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  /* The versions about to lose their tokens, for the receipt. */
  r = query(ks, &st,
            "SELECT version FROM kek_versions WHERE tenant_id = ?1 AND state != 5"
            " AND (?2 = 0 OR version = ?2) ORDER BY version",
            "ti", tenant_id, (int64_t)version);
  if (r != KMS_OK) {
    goto out;
  }
  out->versions[0] = '\0';
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int w;

    if ((r = col_i64(st, 0, 1, UINT32_MAX, &v)) != KMS_OK) {
      goto out;
    }
    w = snprintf(out->versions + used, sizeof(out->versions) - used, "%s%lld",
                 used > 0 ? "," : "", (long long)v);
    if (w < 0 || (size_t)w >= sizeof(out->versions) - used) {
      /* Hundreds of versions: the receipt says so rather than failing the shred. */
      snprintf(out->versions + (used < sizeof(out->versions) - 5 ? used : sizeof(out->versions) - 5),
               5, ",...");
      break;
    }
    used += (size_t)w;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    r = map_rc(rc);
    goto out;
  }
  sqlite3_finalize(st);
  st = NULL;
  /* The shredding: the tokens go (secure_delete zeroes the freed bytes). */
  r = run(ks, &changes,
          "UPDATE kek_versions SET key_token = x'', state = 5, state_changed_ms = ?3,"
          " state_changed_by = 'kmsd', prior_state = 0, destroy_after_ms = 0"
          " WHERE tenant_id = ?1 AND (?2 = 0 OR version = ?2)",
          "tii", tenant_id, (int64_t)version, now);
  if (r != KMS_OK) {
    goto out;
  }
  if (version == 0) {
    r = run(ks, NULL,
            "UPDATE tenants SET state = 4, state_changed_ms = ?2, state_changed_by = 'kmsd',"
            " prior_state = 0, destroy_after_ms = 0 WHERE tenant_id = ?1",
            "ti", tenant_id, now);
    if (r != KMS_OK) {
      goto out;
    }
  }
  /*
   * Session keys wrapped under what is destroyed are gone with it: their rows
   * are shredded in the same transaction (wrapped keys and metadata deleted),
   * so no listing shows a session as alive whose key no longer exists.
   */
  r = run(ks, NULL,
          "UPDATE sessions SET wrapped_key = x'', metadata = x'', state = 3, shredded_ms = ?3,"
          " shredded_by = 'kmsd' WHERE tenant_id = ?1 AND state != 3"
          " AND (?2 = 0 OR kek_version = ?2)",
          "tii", tenant_id, (int64_t)version, now);
  if (r == KMS_OK && version == 0) {
    r = run(ks, NULL, "DELETE FROM session_rewrap WHERE tenant_id = ?1", "t", tenant_id);
  }
  if (r != KMS_OK) {
    goto out;
  }
  memset(&req, 0, sizeof(req));
  if (req_id != 0 && (r = request_load(ks, (uint64_t)req_id, &req)) != KMS_OK) {
    goto out;
  }
  join_approvers(&req, approvers, sizeof(approvers));
  r = run(ks, NULL,
          "INSERT INTO destruction_receipts (tenant_id, version, versions, request_id,"
          " requested_by, approved_by, requested_ms, approved_ms, destroyed_ms)"
          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
          "titittiii", tenant_id, (int64_t)version, out->versions, req_id, req.requested_by,
          approvers, req.requested_ms, req.closed_ms, now);
  if (r != KMS_OK) {
    goto out;
  }
  out->id = (uint64_t)sqlite3_last_insert_rowid(ks->db);
  snprintf(detail, sizeof(detail), "receipt %llu, versions %.40s", (unsigned long long)out->id,
           out->versions);
  if ((r = add_event(ks, tenant_id, version, "destroyed", "kmsd", detail, now)) != KMS_OK) {
    goto out;
  }
  if ((r = tx_commit(ks)) != KMS_OK) {
    goto out;
  }
  snprintf(out->tenant_id, sizeof(out->tenant_id), "%s", tenant_id);
  out->version = version;
  out->request_id = (uint64_t)req_id;
  snprintf(out->requested_by, sizeof(out->requested_by), "%s", req.requested_by);
  split_approvers(approvers, out);
  out->requested_ms = req.requested_ms;
  out->approved_ms = req.closed_ms;
  out->destroyed_ms = now;
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

static int sqlite_shred_sync(keystore *base) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  int log_frames = -1, ckpt_frames = -1, rc;

  /*
   * TRUNCATE waits (busy timeout) for readers to leave the WAL, copies every
   * frame into the database (whose freed bytes secure_delete zeroed) and cuts
   * the -wal file to zero bytes: no old page holding a deleted token remains.
   */
  rc = sqlite3_wal_checkpoint_v2(ks->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log_frames,
                                 &ckpt_frames);
  if (rc != SQLITE_OK) {
    return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED ? KMS_ERR_UNAVAILABLE
                                                                      : map_rc(rc);
  }
  return log_frames == ckpt_frames ? KMS_OK : KMS_ERR_UNAVAILABLE;
}

/* fsync_path opens |path| (a file or a directory) read-only and fsyncs it. */
static int fsync_path(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  int r = KMS_OK;

  if (fd < 0) {
    return KMS_ERR_IO;
  }
  if (fsync(fd) != 0) {
    r = KMS_ERR_IO;
  }
  close(fd);
  return r;
}

/*
 * sqlite_backup: the online backup API copies every page in one step, i.e.
 * from one read snapshot (WAL: writers carry on meanwhile), into a new 0600
 * file; the copy is switched to a rollback journal so it is one
 * self-contained file, then fsynced and renamed into place.
 */
static int sqlite_backup(keystore *base, const char *path) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  char tmp[4096], dir[4096];
  sqlite3 *dst = NULL;
  sqlite3_backup *b = NULL;
  int r = KMS_ERR_IO, rc = SQLITE_OK, fin, fd = -1;
  char *slash;

  if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  (void)unlink(tmp);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    goto out;
  }
  close(fd);
  if (sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    goto out;
  }
  b = sqlite3_backup_init(dst, "main", ks->db, "main");
  if (b == NULL) {
    r = map_rc(sqlite3_errcode(dst));
    goto out;
  }
  for (int tries = 0; tries < 100; tries++) {
    rc = sqlite3_backup_step(b, -1);
    if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
      break;
    }
    sqlite3_sleep(20);
  }
  fin = sqlite3_backup_finish(b);
  b = NULL;
  if (rc != SQLITE_DONE) {
    r = rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? KMS_ERR_UNAVAILABLE : KMS_ERR_IO;
    goto out;
  }
  if (fin != SQLITE_OK ||
      sqlite3_exec(dst, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL) != SQLITE_OK) {
    goto out;
  }
  if (sqlite3_close(dst) != SQLITE_OK) {
    goto out;
  }
  dst = NULL;
  if (fsync_path(tmp) != KMS_OK || rename(tmp, path) != 0) {
    goto out;
  }
  snprintf(dir, sizeof(dir), "%s", path);
  slash = strrchr(dir, '/');
  if (slash == dir) {
    slash[1] = '\0';
  } else if (slash != NULL) {
    *slash = '\0';
  } else {
    snprintf(dir, sizeof(dir), ".");
  }
  r = fsync_path(dir);
out:
  if (b != NULL) {
    (void)sqlite3_backup_finish(b);
  }
  if (dst != NULL) {
    (void)sqlite3_close(dst);
  }
  if (r != KMS_OK) {
    (void)unlink(tmp);
  }
  return r;
}

static int sqlite_receipt_list(keystore *base, const char *tenant_id, struct ks_receipt **out,
                               size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_receipt *list = NULL, *e;
  char approvers[KS_APPROVERS_MAX * (KS_PRINCIPAL_MAX + 1)];
  size_t n = 0, cap = 0;
  int64_t id, version, req_id, req_ms, app_ms, des_ms;
  int rc, r;

  r = query(ks, &st,
            "SELECT id, tenant_id, version, versions, request_id, requested_by, approved_by,"
            " requested_ms, approved_ms, destroyed_ms FROM destruction_receipts"
            " WHERE ?1 = '' OR tenant_id = ?1 ORDER BY id",
            "t", tenant_id);
  if (r != KMS_OK) {
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((r = grow((void **)&list, &cap, n, sizeof(*list))) != KMS_OK) {
      goto out;
    }
    e = &list[n];
    memset(e, 0, sizeof(*e));
    if ((r = col_i64(st, 0, 1, INT64_MAX, &id)) != KMS_OK ||
        (r = col_text(st, 1, e->tenant_id, sizeof(e->tenant_id))) != KMS_OK ||
        (r = col_i64(st, 2, 0, UINT32_MAX, &version)) != KMS_OK ||
        (r = col_text(st, 3, e->versions, sizeof(e->versions))) != KMS_OK ||
        (r = col_i64(st, 4, 0, INT64_MAX, &req_id)) != KMS_OK ||
        (r = col_text(st, 5, e->requested_by, sizeof(e->requested_by))) != KMS_OK ||
        (r = col_text(st, 6, approvers, sizeof(approvers))) != KMS_OK ||
        (r = col_i64(st, 7, 0, INT64_MAX, &req_ms)) != KMS_OK ||
        (r = col_i64(st, 8, 0, INT64_MAX, &app_ms)) != KMS_OK ||
        (r = col_i64(st, 9, 0, INT64_MAX, &des_ms)) != KMS_OK) {
      goto out;
    }
    e->id = (uint64_t)id;
    e->version = (uint32_t)version;
    e->request_id = (uint64_t)req_id;
    split_approvers(approvers, e);
    e->requested_ms = req_ms;
    e->approved_ms = app_ms;
    e->destroyed_ms = des_ms;
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    free(list);
    return r;
  }
  *out = list;
  *out_n = n;
  return KMS_OK;
}

/* The audit export's history of the tenants changed in a period (keystore_event_range). */
static int sqlite_event_range(keystore *base, const char *tenant_id, int64_t from_ms,
                              int64_t to_ms, size_t limit, struct ks_event_row **out,
                              size_t *out_n, int *out_more) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_event_row *list = NULL, *e;
  size_t n = 0, cap = 0;
  int rc, r;

  r = query(ks, &st,
            "SELECT tenant_id, at_ms, version, event, actor, detail FROM key_events"
            " WHERE at_ms < ?3 AND tenant_id IN (SELECT DISTINCT tenant_id FROM key_events"
            "  WHERE (?1 = '' OR tenant_id = ?1) AND at_ms >= ?2 AND at_ms < ?3)"
            " ORDER BY tenant_id, id LIMIT ?4",
            "tiii", tenant_id, from_ms, to_ms,
            (int64_t)(limit >= INT64_MAX ? INT64_MAX : limit + 1));
  if (r != KMS_OK) {
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (n == limit) {
      *out_more = 1;
      rc = SQLITE_DONE;
      break;
    }
    if ((r = grow((void **)&list, &cap, n, sizeof(*list))) != KMS_OK) {
      goto out;
    }
    e = &list[n];
    memset(e, 0, sizeof(*e));
    if ((r = col_text(st, 0, e->tenant_id, sizeof(e->tenant_id))) != KMS_OK ||
        (r = read_event(st, 1, &e->e)) != KMS_OK) {
      goto out;
    }
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    free(list);
    *out_more = 0;
    return r;
  }
  *out = list;
  *out_n = n;
  return KMS_OK;
}

/* ---- Session keys (schema 3) ----------------------------------------------------- */

/* col_blob copies a BLOB column into |dst| (capacity |cap|); too long is a damaged row. */
static int col_blob(sqlite3_stmt *st, int col, uint8_t *dst, size_t cap, size_t *out_len) {
  const void *p;
  int n;

  if (sqlite3_column_type(st, col) != SQLITE_BLOB) {
    return KMS_ERR_INTERNAL;
  }
  p = sqlite3_column_blob(st, col);
  n = sqlite3_column_bytes(st, col);
  if (n < 0 || (size_t)n > cap || (n > 0 && p == NULL)) {
    return KMS_ERR_INTERNAL;
  }
  if (n > 0) {
    memcpy(dst, p, (size_t)n);
  }
  *out_len = (size_t)n;
  return KMS_OK;
}

/*
 * read_session fills |out| (but its tenant id) from the SESSION_COLUMNS
 * starting at |col|. Without |with_key| the wrapped key is not read.
 */
static int read_session(sqlite3_stmt *st, int col, int with_key, struct ks_session *out) {
  int64_t state, created, closed, shredded;
  int r;

  if ((r = col_text(st, col, out->session_id, sizeof(out->session_id))) != KMS_OK ||
      (r = col_i64(st, col + 1, 1, 3, &state)) != KMS_OK ||
      (r = col_u32(st, col + 2, &out->kek_version)) != KMS_OK ||
      (r = col_blob(st, col + 4, out->metadata, sizeof(out->metadata), &out->metadata_len)) !=
          KMS_OK ||
      (r = col_i64(st, col + 5, 0, INT64_MAX, &created)) != KMS_OK ||
      (r = col_text(st, col + 6, out->created_by, sizeof(out->created_by))) != KMS_OK ||
      (r = col_i64(st, col + 7, 0, INT64_MAX, &closed)) != KMS_OK ||
      (r = col_text(st, col + 8, out->closed_by, sizeof(out->closed_by))) != KMS_OK ||
      (r = col_i64(st, col + 9, 0, INT64_MAX, &shredded)) != KMS_OK ||
      (r = col_text(st, col + 10, out->shredded_by, sizeof(out->shredded_by))) != KMS_OK) {
    return r;
  }
  out->wrapped_len = 0;
  if (with_key &&
      (r = col_blob(st, col + 3, out->wrapped, sizeof(out->wrapped), &out->wrapped_len)) !=
          KMS_OK) {
    return r;
  }
  /* A live session always has its key; a shredded one never does. */
  if (with_key && ((state == KS_SESSION_SHREDDED) != (out->wrapped_len == 0))) {
    return KMS_ERR_INTERNAL;
  }
  out->state = (int)state;
  out->created_ms = created;
  out->closed_ms = closed;
  out->shredded_ms = shredded;
  return KMS_OK;
}

/* session_select reads one session (SESSION_COLUMNS) inside the caller's transaction. */
static int session_select(struct keystore_sqlite *ks, const char *tenant_id,
                          const char *session_id, struct ks_session *out) {
  sqlite3_stmt *st = NULL;
  int rc, r;

  r = query(ks, &st,
            "SELECT " SESSION_COLUMNS " FROM sessions s WHERE s.tenant_id = ?1"
            " AND s.session_id = ?2",
            "tt", tenant_id, session_id);
  if (r != KMS_OK) {
    return r;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
  } else {
    memset(out, 0, sizeof(*out));
    r = read_session(st, 0, 1, out);
    snprintf(out->tenant_id, sizeof(out->tenant_id), "%s", tenant_id);
  }
  sqlite3_finalize(st);
  return r;
}

static int sqlite_session_create(keystore *base, const struct ks_session *s, int *out_state) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = ks->st[ST_SESSION_INSERT];
  struct ks_session old;
  int r;

  /* Autocommit: one statement, one transaction, one fsync of the WAL. */
  if (sqlite3_bind_text(st, 1, s->tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_text(st, 2, s->session_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int64(st, 3, s->kek_version) != SQLITE_OK ||
      sqlite3_bind_blob(st, 4, s->wrapped, (int)s->wrapped_len, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_blob(st, 5, s->metadata_len > 0 ? (const void *)s->metadata : "",
                        (int)s->metadata_len, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_int64(st, 6, s->created_ms != 0 ? s->created_ms : kms_now_ms()) != SQLITE_OK ||
      sqlite3_bind_text(st, 7, s->created_by, -1, SQLITE_STATIC) != SQLITE_OK) {
    stmt_done(st);
    return KMS_ERR_INTERNAL;
  }
  r = step_done(st);
  if (r == KMS_ERR_ALREADY_EXISTS && session_select(ks, s->tenant_id, s->session_id, &old) ==
                                         KMS_OK) {
    *out_state = old.state;
  }
  return r;
}

static int sqlite_session_get(keystore *base, const char *tenant_id, const char *session_id,
                              struct ks_session *out, struct ks_kek *out_kek) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = ks->st[ST_SESSION_GET];
  int rc, r = KMS_ERR_INTERNAL;

  if (sqlite3_bind_text(st, 1, tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_bind_text(st, 2, session_id, -1, SQLITE_STATIC) != SQLITE_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
    goto out;
  }
  memset(out, 0, sizeof(*out));
  if ((r = read_kek(st, tenant_id, out_kek)) != KMS_OK ||
      (r = read_session(st, 8, 1, out)) != KMS_OK) {
    goto out;
  }
  snprintf(out->tenant_id, sizeof(out->tenant_id), "%s", tenant_id);
  r = KMS_OK;
out:
  stmt_done(st);
  return r;
}

static int sqlite_session_close(keystore *base, const char *tenant_id, const char *session_id,
                                const char *by, int64_t now, struct ks_session *out) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  int r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  if ((r = session_select(ks, tenant_id, session_id, out)) != KMS_OK) {
    goto out;
  }
  if (out->state == KS_SESSION_SHREDDED) {
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  if (out->state == KS_SESSION_OPEN) {
    r = run(ks, NULL,
            "UPDATE sessions SET state = 2, closed_ms = ?3, closed_by = ?4"
            " WHERE tenant_id = ?1 AND session_id = ?2 AND state = 1",
            "ttit", tenant_id, session_id, now, by);
    if (r != KMS_OK) {
      goto out;
    }
    out->state = KS_SESSION_CLOSED;
    out->closed_ms = now;
    snprintf(out->closed_by, sizeof(out->closed_by), "%s", by);
  }
  r = tx_commit(ks);
out:
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  /* The caller gets the session as officers see it: without its wrapped key. */
  memset(out->wrapped, 0, sizeof(out->wrapped));
  out->wrapped_len = 0;
  return r;
}

static int sqlite_session_shred(keystore *base, const char *tenant_id, const char *session_id,
                                const char *by, int64_t now, struct ks_session_receipt *out) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  struct ks_session s;
  int changes = 0, r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  if ((r = session_select(ks, tenant_id, session_id, &s)) != KMS_OK) {
    goto out;
  }
  if (s.state == KS_SESSION_SHREDDED) {
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  /* secure_delete zeroes the old cell's bytes in the page; the WAL is the caller's (shred_sync). */
  r = run(ks, &changes,
          "UPDATE sessions SET wrapped_key = x'', metadata = x'', state = 3, shredded_ms = ?3,"
          " shredded_by = ?4 WHERE tenant_id = ?1 AND session_id = ?2 AND state != 3",
          "ttit", tenant_id, session_id, now, by);
  if (r != KMS_OK) {
    goto out;
  }
  if (changes != 1) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  r = run(ks, NULL,
          "INSERT INTO session_receipts (tenant_id, session_id, kek_version, created_ms,"
          " shredded_ms, shredded_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
          "ttiiit", tenant_id, session_id, (int64_t)s.kek_version, s.created_ms, now, by);
  if (r != KMS_OK) {
    goto out;
  }
  out->id = (uint64_t)sqlite3_last_insert_rowid(ks->db);
  if ((r = tx_commit(ks)) != KMS_OK) {
    goto out;
  }
  snprintf(out->tenant_id, sizeof(out->tenant_id), "%s", tenant_id);
  snprintf(out->session_id, sizeof(out->session_id), "%s", session_id);
  snprintf(out->shredded_by, sizeof(out->shredded_by), "%s", by);
  out->kek_version = s.kek_version;
  out->created_ms = s.created_ms;
  out->shredded_ms = now;
out:
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

static int sqlite_session_list(keystore *base, const struct ks_session_filter *f,
                               struct ks_session **out, size_t *out_n, int *out_more) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_session *list = NULL;
  size_t n = 0;
  int64_t from = f->created_from_ms, to = f->created_to_ms != 0 ? f->created_to_ms : INT64_MAX;
  const char *after = f->after_session != NULL ? f->after_session : "";
  int rc, r;

  /*
   * The scan starts in the (tenant_id, created_ms) index at the page
   * position: a page costs its own rows, not the ones before it. The index
   * carries session_id (the primary key), so the order is total.
   */
  if (after[0] != '\0' && f->after_created_ms > from) {
    from = f->after_created_ms;
  }
  r = query(ks, &st,
            "SELECT " SESSION_COLUMNS " FROM sessions s INDEXED BY sessions_by_created"
            " WHERE s.tenant_id = ?1 AND s.created_ms >= ?2 AND s.created_ms < ?3"
            " AND (?4 = 0 OR s.state = ?4)"
            " AND (?6 = '' OR s.created_ms > ?5 OR (s.created_ms = ?5 AND s.session_id > ?6))"
            " ORDER BY s.created_ms, s.session_id LIMIT ?7",
            "tiiiiti", f->tenant_id, from, to, (int64_t)f->state, f->after_created_ms, after,
            (int64_t)f->limit + 1);
  if (r != KMS_OK) {
    goto out;
  }
  if ((list = calloc(f->limit, sizeof(*list))) == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (n == f->limit) {
      *out_more = 1;
      break;
    }
    if ((r = read_session(st, 0, 0, &list[n])) != KMS_OK) {
      goto out;
    }
    snprintf(list[n].tenant_id, sizeof(list[n].tenant_id), "%s", f->tenant_id);
    n++;
  }
  r = rc == SQLITE_DONE || rc == SQLITE_ROW ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK || n == 0) {
    free(list);
    list = NULL;
    if (r != KMS_OK) {
      n = 0;
      *out_more = 0;
    }
  }
  *out = list;
  *out_n = n;
  return r;
}

static int sqlite_rewrap_jobs(keystore *base, struct ks_rewrap_job *out, size_t cap,
                              size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  int64_t v;
  size_t n = 0;
  int rc, r;

  r = query(ks, &st,
            "SELECT tenant_id, target_version, after FROM session_rewrap"
            " ORDER BY started_ms, tenant_id LIMIT ?1",
            "i", (int64_t)cap);
  if (r != KMS_OK) {
    return r;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    memset(&out[n], 0, sizeof(out[n]));
    if ((r = col_text(st, 0, out[n].tenant_id, sizeof(out[n].tenant_id))) != KMS_OK ||
        (r = col_i64(st, 1, 1, UINT32_MAX, &v)) != KMS_OK ||
        (r = col_text(st, 2, out[n].after, sizeof(out[n].after))) != KMS_OK) {
      goto out;
    }
    out[n].target_version = (uint32_t)v;
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  *out_n = r == KMS_OK ? n : 0;
  return r;
}

static int sqlite_rewrap_batch(keystore *base, const struct ks_rewrap_job *job, size_t limit,
                               struct ks_session *out, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  size_t n = 0;
  int rc, r;

  /* Primary-key order from the cursor on: resumable, and each batch costs its own rows. */
  r = query(ks, &st,
            "SELECT " SESSION_COLUMNS " FROM sessions s WHERE s.tenant_id = ?1"
            " AND s.session_id > ?2 AND s.state != 3 ORDER BY s.session_id LIMIT ?3",
            "tti", job->tenant_id, job->after, (int64_t)limit);
  if (r != KMS_OK) {
    return r;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    memset(&out[n], 0, sizeof(out[n]));
    if ((r = read_session(st, 0, 1, &out[n])) != KMS_OK) {
      goto out;
    }
    snprintf(out[n].tenant_id, sizeof(out[n].tenant_id), "%s", job->tenant_id);
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  *out_n = r == KMS_OK ? n : 0;
  return r;
}

static int sqlite_rewrap_commit(keystore *base, const struct ks_rewrap_job *job,
                                const struct ks_rewrap_update *u, size_t n, const char *after,
                                int done, size_t *out_moved, int *out_stale) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  int rc, changes = 0, r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  /* A rotation since the batch was read restarted the job: its keys may be stale. */
  r = query(ks, &st,
            "SELECT 1 FROM session_rewrap WHERE tenant_id = ?1 AND target_version = ?2"
            " AND after = ?3",
            "tit", job->tenant_id, (int64_t)job->target_version, job->after);
  if (r != KMS_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  st = NULL;
  if (rc == SQLITE_DONE) {
    *out_stale = 1;
    r = KMS_OK;
    goto out;
  }
  if (rc != SQLITE_ROW) {
    r = map_rc(rc);
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    /* Only if unchanged since read: never resurrect a shredded key or undo another move. */
    rc = sqlite3_prepare_v2(ks->db,
                            "UPDATE sessions SET wrapped_key = ?3, kek_version = ?4"
                            " WHERE tenant_id = ?1 AND session_id = ?2 AND kek_version = ?5"
                            " AND state != 3",
                            -1, &st, NULL);
    if (rc != SQLITE_OK) {
      r = map_rc(rc);
      goto out;
    }
    if (sqlite3_bind_text(st, 1, job->tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, u[i].session_id, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, 3, u[i].wrapped, (int)u[i].wrapped_len, SQLITE_STATIC) !=
            SQLITE_OK ||
        sqlite3_bind_int64(st, 4, job->target_version) != SQLITE_OK ||
        sqlite3_bind_int64(st, 5, u[i].old_version) != SQLITE_OK) {
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    st = NULL;
    if (rc != SQLITE_DONE) {
      r = map_rc(rc);
      goto out;
    }
    *out_moved += (size_t)sqlite3_changes(ks->db);
  }
  if (done) {
    r = run(ks, &changes, "DELETE FROM session_rewrap WHERE tenant_id = ?1", "t",
            job->tenant_id);
  } else {
    r = run(ks, &changes, "UPDATE session_rewrap SET after = ?2 WHERE tenant_id = ?1", "tt",
            job->tenant_id, after);
  }
  if (r != KMS_OK) {
    goto out;
  }
  r = tx_commit(ks);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK || *out_stale) {
    tx_rollback(ks);
    *out_moved = 0;
  }
  return r;
}

/* ---- Root key rotation (schema 4) ------------------------------------------------ */

static int sqlite_root_note(keystore *base, uint32_t version, int trusted, int64_t now_ms) {
  return run(ks_sqlite(base), NULL,
             "INSERT INTO root_keys (version, trusted, state, seen_ms) VALUES (?1, ?2, 2, ?3)"
             " ON CONFLICT (version) DO NOTHING",
             "iii", (int64_t)version, (int64_t)(trusted != 0), now_ms);
}

static int sqlite_root_set_current(keystore *base, uint32_t version, int trusted, const char *by,
                                   int64_t now_ms, uint32_t *out_previous) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  int64_t prev = 0, state = 0;
  int rc, r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  r = query(ks, &st, "SELECT coalesce((SELECT version FROM root_keys WHERE state = 1), 0),"
                     " coalesce((SELECT state FROM root_keys WHERE version = ?1), 0)",
            "i", (int64_t)version);
  if (r != KMS_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = map_rc(rc);
    goto out;
  }
  if ((r = col_i64(st, 0, 0, UINT32_MAX, &prev)) != KMS_OK ||
      (r = col_i64(st, 1, 0, 3, &state)) != KMS_OK) {
    goto out;
  }
  if (state == KS_ROOT_DESTROYED) {
    r = KMS_ERR_FAILED_PRECONDITION;
    goto out;
  }
  if (prev != (int64_t)version) {
    if ((r = run(ks, NULL, "UPDATE root_keys SET state = 2 WHERE state = 1", "")) != KMS_OK ||
        (r = run(ks, NULL,
                 "INSERT INTO root_keys (version, trusted, state, seen_ms, current_since_ms,"
                 " current_by) VALUES (?1, ?2, 1, ?3, ?3, ?4) ON CONFLICT (version) DO UPDATE"
                 " SET state = 1, trusted = ?2, current_since_ms = ?3, current_by = ?4",
                 "iiit", (int64_t)version, (int64_t)(trusted != 0), now_ms, by)) != KMS_OK) {
      goto out;
    }
  }
  r = tx_commit(ks);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    tx_rollback(ks);
  } else if (out_previous != NULL) {
    *out_previous = (uint32_t)prev;
  }
  return r;
}

static int sqlite_root_list(keystore *base, struct ks_root **out, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_root *v = NULL, *grown;
  size_t n = 0, cap = 0;
  int64_t x[7];
  int rc, r;

  *out = NULL;
  *out_n = 0;
  /* Every recorded root, and every root a key token names even if never recorded. */
  r = query(ks, &st,
            "SELECT vs.v, coalesce(r.trusted, -1), coalesce(r.state, 0), coalesce(r.seen_ms, 0),"
            " coalesce(r.current_since_ms, 0), coalesce(r.destroyed_ms, 0),"
            " coalesce(c.n, 0), coalesce(r.current_by, '')"
            " FROM (SELECT version AS v FROM root_keys UNION SELECT root_version FROM"
            " kek_versions WHERE length(key_token) > 0) vs"
            " LEFT JOIN root_keys r ON r.version = vs.v"
            " LEFT JOIN (SELECT root_version, count(*) AS n FROM kek_versions"
            " WHERE length(key_token) > 0 GROUP BY root_version) c ON c.root_version = vs.v"
            " ORDER BY vs.v",
            "");
  if (r != KMS_OK) {
    return r;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (n == cap) {
      cap = cap == 0 ? 8 : cap * 2;
      if ((grown = realloc(v, cap * sizeof(*v))) == NULL) {
        r = KMS_ERR_ALLOC;
        goto out;
      }
      v = grown;
    }
    memset(&v[n], 0, sizeof(v[n]));
    if ((r = col_i64(st, 0, 1, UINT32_MAX, &x[0])) != KMS_OK ||
        (r = col_i64(st, 1, -1, 1, &x[1])) != KMS_OK ||
        (r = col_i64(st, 2, 0, 3, &x[2])) != KMS_OK ||
        (r = col_i64(st, 3, 0, INT64_MAX, &x[3])) != KMS_OK ||
        (r = col_i64(st, 4, 0, INT64_MAX, &x[4])) != KMS_OK ||
        (r = col_i64(st, 5, 0, INT64_MAX, &x[5])) != KMS_OK ||
        (r = col_i64(st, 6, 0, INT64_MAX, &x[6])) != KMS_OK ||
        (r = col_text(st, 7, v[n].current_by, sizeof(v[n].current_by))) != KMS_OK) {
      goto out;
    }
    v[n].version = (uint32_t)x[0];
    v[n].trusted = (int)x[1];
    v[n].state = (int)x[2];
    v[n].seen_ms = x[3];
    v[n].current_since_ms = x[4];
    v[n].destroyed_ms = x[5];
    v[n].key_tokens = (uint64_t)x[6];
    n++;
  }
  r = rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    free(v);
    return r;
  }
  *out = v;
  *out_n = n;
  return KMS_OK;
}

static int sqlite_root_pending(keystore *base, uint32_t current, struct ks_token_move *out,
                               size_t cap, size_t *out_n) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  int64_t version, mech, root;
  size_t n = 0;
  int rc, r;

  *out_n = 0;
  /* Tokens under an older trusted root only: a legacy root's KEKs cannot move. */
  r = query(ks, &st,
            "SELECT k.tenant_id, k.version, k.wrap_mech, k.root_version, k.key_token"
            " FROM kek_versions k JOIN root_keys r ON r.version = k.root_version"
            " WHERE r.trusted = 1 AND k.root_version != ?1 AND length(k.key_token) > 0"
            " ORDER BY k.root_version, k.tenant_id, k.version LIMIT ?2",
            "ii", (int64_t)current, (int64_t)cap);
  if (r != KMS_OK) {
    return r;
  }
  while (n < cap && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    memset(&out[n], 0, sizeof(out[n]));
    if ((r = col_text(st, 0, out[n].tenant_id, sizeof(out[n].tenant_id))) != KMS_OK ||
        (r = col_i64(st, 1, 1, UINT32_MAX, &version)) != KMS_OK ||
        (r = col_i64(st, 2, 0, UINT32_MAX, &mech)) != KMS_OK ||
        (r = col_i64(st, 3, 1, UINT32_MAX, &root)) != KMS_OK ||
        (r = col_blob(st, 4, out[n].old_token, sizeof(out[n].old_token), &out[n].old_len)) !=
            KMS_OK) {
      goto out;
    }
    out[n].version = (uint32_t)version;
    out[n].old_mech = (uint32_t)mech;
    out[n].old_root = (uint32_t)root;
    n++;
  }
  r = n == cap || rc == SQLITE_DONE ? KMS_OK : map_rc(rc);
out:
  sqlite3_finalize(st);
  *out_n = r == KMS_OK ? n : 0;
  return r;
}

static int sqlite_root_move_tokens(keystore *base, const struct ks_token_move *m, size_t n,
                                   size_t *out_moved) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  int rc, r;

  *out_moved = 0;
  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  rc = sqlite3_prepare_v2(ks->db,
                          "UPDATE kek_versions SET key_token = ?3, wrap_mech = ?4,"
                          " root_version = ?5 WHERE tenant_id = ?1 AND version = ?2"
                          " AND root_version = ?6 AND key_token = ?7",
                          -1, &st, NULL);
  if (rc != SQLITE_OK) {
    r = map_rc(rc);
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    /* Only if unchanged since read: never resurrect a shredded token or undo another move. */
    if (sqlite3_bind_text(st, 1, m[i].tenant_id, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, m[i].version) != SQLITE_OK ||
        sqlite3_bind_blob(st, 3, m[i].token, (int)m[i].token_len, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, 4, m[i].mech) != SQLITE_OK ||
        sqlite3_bind_int64(st, 5, m[i].root) != SQLITE_OK ||
        sqlite3_bind_int64(st, 6, m[i].old_root) != SQLITE_OK ||
        sqlite3_bind_blob(st, 7, m[i].old_token, (int)m[i].old_len, SQLITE_STATIC) !=
            SQLITE_OK) {
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    rc = sqlite3_step(st);
    stmt_done(st);
    if (rc != SQLITE_DONE) {
      r = map_rc(rc);
      goto out;
    }
    *out_moved += (size_t)sqlite3_changes(ks->db);
  }
  r = tx_commit(ks);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    tx_rollback(ks);
    *out_moved = 0;
  }
  return r;
}

static int sqlite_state_gen(keystore *base, uint64_t *out) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  int64_t gen = 0;
  int r = query(ks, &st, "SELECT gen FROM state_gen WHERE id = 1", "");
  if (r == KMS_OK) {
    int rc = sqlite3_step(st);
    r = rc == SQLITE_ROW ? col_i64(st, 0, 0, INT64_MAX, &gen) : map_rc(rc);
  }
  sqlite3_finalize(st);
  *out = r == KMS_OK ? (uint64_t)gen : 0;
  return r;
}

static int sqlite_root_destroyed(keystore *base, uint32_t version, int64_t now_ms) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  int64_t refs = 0;
  int rc, changes = 0, r;

  if ((r = tx_begin(ks)) != KMS_OK) {
    return r;
  }
  r = query(ks, &st,
            "SELECT count(*) FROM kek_versions WHERE root_version = ?1 AND length(key_token) > 0",
            "i", (int64_t)version);
  if (r != KMS_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = map_rc(rc);
    goto out;
  }
  if ((r = col_i64(st, 0, 0, INT64_MAX, &refs)) != KMS_OK) {
    goto out;
  }
  if (refs > 0) {
    r = KMS_ERR_FAILED_PRECONDITION; /* a token still needs it */
    goto out;
  }
  r = run(ks, &changes,
          "UPDATE root_keys SET state = 3, destroyed_ms = ?2 WHERE version = ?1 AND state = 2",
          "ii", (int64_t)version, now_ms);
  if (r != KMS_OK) {
    goto out;
  }
  if (changes == 0) {
    r = KMS_ERR_FAILED_PRECONDITION; /* current, unknown, or destroyed already */
    goto out;
  }
  r = tx_commit(ks);
out:
  sqlite3_finalize(st);
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
}

const struct keystore_ops keystore_sqlite_ops = {
    .scheme = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .schema_version = sqlite_schema_version,
    .tenant_create = sqlite_tenant_create,
    .tenant_get = sqlite_tenant_get,
    .kek_get = sqlite_kek_get,
    .kek_current = sqlite_kek_current,
    .kek_add_version = sqlite_kek_add_version,
    .kek_reserve_uses = sqlite_kek_reserve_uses,
    .tenant_list = sqlite_tenant_list,
    .kek_list = sqlite_kek_list,
    .event_list = sqlite_event_list,
    .event_add = sqlite_event_add,
    .kek_rotate = sqlite_kek_rotate,
    .change_state = sqlite_change_state,
    .tenant_set_rotation = sqlite_tenant_set_rotation,
    .rotation_due = sqlite_rotation_due,
    .request_create = sqlite_request_create,
    .request_get = sqlite_request_get,
    .request_list = sqlite_request_list,
    .request_approve = sqlite_request_approve,
    .request_cancel = sqlite_request_cancel,
    .requests_expire = sqlite_requests_expire,
    .destruction_due = sqlite_destruction_due,
    .destroy = sqlite_destroy,
    .shred_sync = sqlite_shred_sync,
    .receipt_list = sqlite_receipt_list,
    .event_range = sqlite_event_range,
    .session_create = sqlite_session_create,
    .session_get = sqlite_session_get,
    .session_close = sqlite_session_close,
    .session_shred = sqlite_session_shred,
    .session_list = sqlite_session_list,
    .rewrap_jobs = sqlite_rewrap_jobs,
    .rewrap_batch = sqlite_rewrap_batch,
    .rewrap_commit = sqlite_rewrap_commit,
    .backup = sqlite_backup,
    .root_note = sqlite_root_note,
    .root_set_current = sqlite_root_set_current,
    .root_list = sqlite_root_list,
    .root_pending = sqlite_root_pending,
    .root_move_tokens = sqlite_root_move_tokens,
    .root_destroyed = sqlite_root_destroyed,
    .state_gen = sqlite_state_gen,
};
