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
  ST_COUNT_
};

/* The columns read_kek takes, in order, starting at its |col|. */
#define KEK_COLUMNS "version, state, wrap_mech, root_version, key_token, created_ms, uses"

static const char *const stmt_sql[ST_COUNT_] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SCHEMA_VERSION] = "SELECT max(version) FROM schema_version",
    [ST_TENANT_INSERT] = "INSERT INTO tenants (tenant_id, state, current_version, created_ms)"
                         " VALUES (?1, ?2, 1, ?3)",
    [ST_TENANT_GET] = "SELECT state, current_version, created_ms FROM tenants"
                      " WHERE tenant_id = ?1",
    [ST_TENANT_SET_CURRENT] = "UPDATE tenants SET current_version = ?2 WHERE tenant_id = ?1",
    [ST_KEK_INSERT] = "INSERT INTO kek_versions (tenant_id, version, state, wrap_mech,"
                      " root_version, key_token, created_ms, uses, state_changed_ms)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?7)",
    [ST_KEK_GET] = "SELECT " KEK_COLUMNS " FROM kek_versions"
                   " WHERE tenant_id = ?1 AND version = ?2",
    /* One statement, so the tenant row and the version row come from one snapshot. */
    [ST_KEK_CURRENT] = "SELECT k.version, k.state, k.wrap_mech, k.root_version, k.key_token,"
                       " k.created_ms, k.uses"
                       " FROM tenants t JOIN kek_versions k"
                       " ON k.tenant_id = t.tenant_id AND k.version = t.current_version"
                       " WHERE t.tenant_id = ?1",
    [ST_KEK_EXISTS] = "SELECT 1 FROM kek_versions WHERE tenant_id = ?1 AND version = ?2",
    [ST_KEK_DEMOTE] = "UPDATE kek_versions SET state = ?2, state_changed_ms = ?3"
                      " WHERE tenant_id = ?1 AND state = ?4",
    /*
     * The check and the increment are one statement, so two handles cannot both
     * pass the check. Written as uses <= limit - n (the caller ensures n <=
     * limit) because uses + n could overflow 64 bits, which SQLite would
     * silently turn into a float.
     */
    [ST_USES_RESERVE] = "UPDATE kek_versions SET uses = uses + ?3"
                        " WHERE tenant_id = ?1 AND version = ?2 AND uses <= ?4 - ?3"
                        " RETURNING uses",
};

struct keystore_sqlite {
  struct keystore base; /* first, so keystore.c can dispatch */
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT_];
};

static struct keystore_sqlite *ks_sqlite(keystore *ks) {
  return (struct keystore_sqlite *)ks;
}

static void set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_len, const char *fmt, ...) {
  va_list ap;

  if (err == NULL || err_len == 0) {
    return;
  }
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

static int64_t now_ms(void) {
  struct timespec ts;

  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
    return 0;
  }
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
      (r = col_i64(st, 6, 0, INT64_MAX, &uses)) != KMS_OK) {
    goto out;
  }
  r = KMS_ERR_INTERNAL;
  if (sqlite3_column_type(st, 4) != SQLITE_BLOB) {
    goto out;
  }
  token = sqlite3_column_blob(st, 4);
  token_len = sqlite3_column_bytes(st, 4);
  if (token == NULL || token_len <= 0 || token_len > HSM_KEY_TOKEN_MAX) {
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
    set_err(err, err_len, "keystore %s: %s", path, strerror(errno));
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
    set_err(err, err_len, "cannot create keystore %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  created = 1;
  /* mkostemp already asks for 0600; an odd umask could leave less. */
  if (fchmod(fd, S_IRUSR | S_IWUSR) != 0) {
    set_err(err, err_len, "cannot chmod keystore %s: %s", path, strerror(errno));
    r = KMS_ERR_IO;
    goto out;
  }
  close(fd);
  fd = -1;
  /* link, unlike rename, never replaces a file another opener just created. */
  if (link(tmp, path) != 0 && errno != EEXIST) {
    set_err(err, err_len, "cannot create keystore %s: %s", path, strerror(errno));
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
    set_err(err, err_len, "keystore: %s: %s", sql, sqlite3_errmsg(ks->db));
    r = map_rc(rc);
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    set_err(err, err_len, "keystore: %s: %s", sql,
            rc == SQLITE_DONE ? "not supported by this SQLite" : sqlite3_errmsg(ks->db));
    r = rc == SQLITE_DONE ? KMS_ERR_INTERNAL : map_rc(rc);
    goto out;
  }
  got = sqlite3_column_text(st, 0);
  if (got == NULL || strcasecmp((const char *)got, want) != 0) {
    set_err(err, err_len, "keystore: %s gave \"%s\", need \"%s\"", sql,
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
    set_err(err, err_len, "keystore: %.60s: %s", sql, sqlite3_errmsg(ks->db));
    return map_rc(rc);
  }
  return KMS_OK;
}

static int64_t mono_ms(void) {
  struct timespec ts;

  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
    return 0;
  }
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
  int64_t deadline = mono_ms() + BUSY_TIMEOUT_MS;
  int r;

  for (;;) {
    /* journal_mode answers with the mode in force; it stays put if it could not switch. */
    r = pragma_expect(ks, "PRAGMA journal_mode=WAL", "wal", err, err_len);
    if (r != KMS_ERR_UNAVAILABLE || mono_ms() >= deadline) {
      return r;
    }
    nanosleep(&pause, NULL);
  }
}

static int configure(struct keystore_sqlite *ks, char *err, size_t err_len) {
  int r = KMS_ERR_INTERNAL;

  if (sqlite3_busy_timeout(ks->db, BUSY_TIMEOUT_MS) != SQLITE_OK) {
    set_err(err, err_len, "keystore: cannot set busy timeout");
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
      set_err(err, err_len, "keystore: reading schema version: %s", sqlite3_errmsg(ks->db));
      r = map_rc(rc);
      goto out;
    }
    r = read_schema_version(st, &version);
    sqlite3_finalize(st);
    st = NULL;
    if (r != KMS_OK) {
      set_err(err, err_len, "keystore: cannot read schema version: %s", sqlite3_errmsg(ks->db));
      goto out;
    }
    if (version > SCHEMA_VERSION_LATEST) {
      /* A newer kmsd wrote this; running old code on it could lose data. */
      set_err(err, err_len,
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
        sqlite3_bind_int64(st, 2, now_ms()) != SQLITE_OK) {
      set_err(err, err_len, "keystore: recording migration %d: %s", version + 1,
              sqlite3_errmsg(ks->db));
      r = rc != SQLITE_OK ? map_rc(rc) : KMS_ERR_INTERNAL;
      goto out;
    }
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    st = NULL;
    if (rc != SQLITE_DONE) {
      set_err(err, err_len, "keystore: recording migration %d: %s", version + 1,
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
      set_err(err, err_len, "sqlite keystore URL takes a path, not a host: use sqlite:/path");
      r = KMS_ERR_CONFIG;
      goto out;
    }
    path += 2;
  }
  /* Keys must be durable and shared across handles: no in-memory or temporary databases. */
  if (path[0] == '\0' || strcmp(path, ":memory:") == 0) {
    set_err(err, err_len, "sqlite keystore URL needs a file path: use sqlite:/path");
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
    set_err(err, err_len, "cannot open keystore %s: %s", path,
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
      set_err(err, err_len, "keystore: preparing statement %zu: %s", i, sqlite3_errmsg(ks->db));
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
  int64_t created = kek->created_ms != 0 ? kek->created_ms : now_ms();
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

static int sqlite_tenant_get(keystore *base, const char *tenant_id, struct ks_tenant *out) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = ks->st[ST_TENANT_GET];
  int64_t created;
  int rc, r = KMS_ERR_INTERNAL;

  if (sqlite3_bind_text(st, 1, tenant_id, -1, SQLITE_STATIC) != SQLITE_OK) {
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    r = rc == SQLITE_DONE ? KMS_ERR_NOT_FOUND : map_rc(rc);
    goto out;
  }
  if ((r = col_state(st, 0, &out->state)) != KMS_OK ||
      (r = col_u32(st, 1, &out->current_version)) != KMS_OK ||
      (r = col_i64(st, 2, 0, INT64_MAX, &created)) != KMS_OK) {
    goto out;
  }
  snprintf(out->tenant_id, sizeof(out->tenant_id), "%s", tenant_id);
  out->created_ms = created;
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

static int sqlite_kek_add_version(keystore *base, const struct ks_kek *kek) {
  struct keystore_sqlite *ks = ks_sqlite(base);
  sqlite3_stmt *st = NULL;
  struct ks_tenant tenant;
  int64_t now = now_ms();
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
      sqlite3_bind_int(st, 4, KS_KEK_ACTIVE) != SQLITE_OK) {
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
  r = tx_commit(ks);
out:
  if (r != KMS_OK) {
    tx_rollback(ks);
  }
  return r;
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
};
