/* Session key cost at 10 and at 10^6 sessions per tenant: a real kmsd, figures for docs/SESSIONS.md. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "harness.h"
#include "tenantkey.h"

/*
 * Run: meson test -C BUILD --benchmark sessions-scale -v
 * (BENCH_SESSIONS=N overrides the 10^6 filler sessions, BENCH_ROUNDS the 2000
 * calls measured per operation and tenant). Prints medians and 99th
 * percentiles of one client's round trips; the two tenants are measured
 * alternately in blocks, so machine noise hits both alike.
 */

static void
die(const char *what)
{
  fprintf(stderr, "bench_sessions: %s (kmsd log: %s/kmsd.log)\n", what, harness_dir());
  harness_stop_kmsd();
  exit(1);
}

static double
now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Filler sessions straight into the keystore (their wrapped keys are never unwrapped). */
static double
bulk_insert(const char *t, long n)
{
  char db[600];
  sqlite3 *h = NULL;
  sqlite3_stmt *st = NULL;
  uint8_t w[65];
  double t0 = now_s();
  snprintf(db, sizeof(db), "%s/keystore.db", harness_dir());
  if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    die("open keystore");
  }
  sqlite3_busy_timeout(h, 10000);
  if (sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(h,
                         "INSERT INTO sessions (tenant_id, session_id, state, kek_version,"
                         " wrapped_key, metadata, created_ms, created_by)"
                         " VALUES (?1, ?2, 1, 1, ?3, x'', ?4, 'bulk')",
                         -1, &st, NULL) != SQLITE_OK) {
    die("prepare");
  }
  int64_t base = (int64_t)time(NULL) * 1000 - 86400000;
  for (long i = 0; i < n; i++) {
    char sid[64];
    /* Spread over the key space, so lookups of real ids land between fillers. */
    snprintf(sid, sizeof(sid), "%08lx-bulk-%ld", (unsigned long)(i * 2654435761u), i);
    RAND_bytes(w, sizeof(w));
    w[0] = 1;
    sqlite3_bind_text(st, 1, t, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, sid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, w, sizeof(w), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, base + i / 16);
    if (sqlite3_step(st) != SQLITE_DONE) {
      die("insert");
    }
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  if (sqlite3_exec(h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    die("commit");
  }
  sqlite3_close(h);
  return now_s() - t0;
}

static int
cmp_d(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

struct stats {
  double *v;
  size_t n;
};

static void
report(const char *what, struct stats *s)
{
  qsort(s->v, s->n, sizeof(double), cmp_d);
  printf("  %-34s median %.3f ms  p99 %.3f ms  (n=%zu)\n", what, s->v[s->n / 2],
         s->v[(s->n * 99) / 100], s->n);
}

int
main(void)
{
  long filler = getenv("BENCH_SESSIONS") != NULL ? atol(getenv("BENCH_SESSIONS")) : 1000000;
  int rounds = getenv("BENCH_ROUNDS") != NULL ? atoi(getenv("BENCH_ROUNDS")) : 2000;
  const char *tenants[2] = {"bench-small", "bench-big"};
  struct stats open_st[2], get_st[2];
  char sid[64];

  harness_setup("log_level = info");
  harness_start_kmsd();
  tk_client *officer = harness_client("officer"), *rec = harness_client("recording"),
            *ai = harness_client("ai");
  if (officer == NULL || rec == NULL || ai == NULL) {
    die("clients");
  }
  for (int t = 0; t < 2; t++) {
    uint32_t v;
    if (tk_tenant_create(officer, &v, tenants[t]) != TK_OK) {
      die("create tenant");
    }
    open_st[t].v = calloc((size_t)rounds, sizeof(double));
    get_st[t].v = calloc((size_t)rounds, sizeof(double));
    open_st[t].n = get_st[t].n = 0;
  }
  /* 10 sessions in the small tenant; 10^6 (filler + real) in the big one. */
  for (int i = 0; i < 10; i++) {
    tk_session *s = NULL;
    snprintf(sid, sizeof(sid), "small-%d", i);
    if (tk_session_open(rec, &s, tenants[0], sid, NULL) != TK_OK) {
      die("open small");
    }
    tk_session_free(s);
  }
  double ins = bulk_insert(tenants[1], filler - 10);
  for (int i = 0; i < 10; i++) {
    tk_session *s = NULL;
    snprintf(sid, sizeof(sid), "big-%d", i);
    if (tk_session_open(rec, &s, tenants[1], sid, NULL) != TK_OK) {
      die("open big");
    }
    tk_session_free(s);
  }
  printf("sessions per tenant: %s 10, %s %ld (filler inserted in %.1f s)\n", tenants[0],
         tenants[1], filler, ins);
  /* Warm both paths (connections, KEK cache, SQLite page cache). */
  for (int i = 0; i < 50; i++) {
    tk_session *s = NULL;
    if (tk_session_get(ai, &s, tenants[i % 2], i % 2 ? "big-1" : "small-1", "transcription") !=
        TK_OK) {
      die("warm-up");
    }
    tk_session_free(s);
  }
  /* Alternating blocks of 100 calls per tenant. */
  for (int done = 0; done < rounds; done += 100) {
    for (int t = 0; t < 2; t++) {
      for (int i = done; i < done + 100 && i < rounds; i++) {
        tk_session *s = NULL;
        snprintf(sid, sizeof(sid), "o-%d", i);
        double t0 = now_s();
        if (tk_session_open(rec, &s, tenants[t], sid, NULL) != TK_OK) {
          die("OpenSession");
        }
        open_st[t].v[open_st[t].n++] = (now_s() - t0) * 1000;
        tk_session_free(s);
        snprintf(sid, sizeof(sid), "%s-%d", t == 0 ? "small" : "big", i % 10);
        t0 = now_s();
        if (tk_session_get(ai, &s, tenants[t], sid, "transcription") != TK_OK) {
          die("GetSessionKey");
        }
        get_st[t].v[get_st[t].n++] = (now_s() - t0) * 1000;
        tk_session_free(s);
      }
    }
  }
  for (int t = 0; t < 2; t++) {
    char what[64];
    snprintf(what, sizeof(what), "OpenSession, %s", tenants[t]);
    report(what, &open_st[t]);
    snprintf(what, sizeof(what), "GetSessionKey, %s", tenants[t]);
    report(what, &get_st[t]);
  }
  printf("ratios (10^6 / 10): OpenSession median %.2f, GetSessionKey median %.2f\n",
         open_st[1].v[open_st[1].n / 2] / open_st[0].v[open_st[0].n / 2],
         get_st[1].v[get_st[1].n / 2] / get_st[0].v[get_st[0].n / 2]);
  fflush(stdout);
  tk_client_free(officer);
  tk_client_free(rec);
  tk_client_free(ai);
  for (int t = 0; t < 2; t++) {
    free(open_st[t].v);
    free(get_st[t].v);
  }
  int st = harness_stop_kmsd();
  if (st == 0 && getenv("TKMS_KEEP_DIR") == NULL) {
    char rm[1024];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", harness_dir());
    if (system(rm) != 0) {
      fprintf(stderr, "could not remove %s\n", harness_dir());
    }
  }
  return st == 0 ? 0 : 1;
}
