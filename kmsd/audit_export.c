/* Audit export: reads the log read-only, filters records and proves each against a checkpoint. */
#include "audit_export.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "kms_auditlog.h"
#include "kms_err.h"
#include "kms_note.h"

#define PATH_CAP 700
#define PAGE_BYTES_MIN 4096

struct leaf_pos {
  uint32_t file; /* audit-NNNNNNNN.jsonl */
  uint64_t off;  /* where the record's line starts */
};

/*
 * Leaf hashes and where each record is, read once and extended as the log
 * grows: records are immutable once written. One cache for the process; a
 * request holds its lock from start to end (exports are rare, and this keeps
 * it simple). Checked against the checkpoint's root on every request, so a
 * log replaced under the same path is noticed and read again.
 */
static struct {
  pthread_mutex_t mu;
  char dir[PATH_CAP];
  uint64_t n, cap;
  uint8_t (*leaves)[KMS_MERKLE_HASH_LEN];
  struct leaf_pos *pos;
  uint32_t cur_file;
  uint64_t cur_off;
  uint8_t (*levels)[KMS_MERKLE_HASH_LEN]; /* for lv_n leaves */
  uint64_t lv_n;
} g_cache = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void
cache_reset(const char *dir)
{
  free(g_cache.leaves);
  free(g_cache.pos);
  free(g_cache.levels);
  g_cache.leaves = NULL;
  g_cache.pos = NULL;
  g_cache.levels = NULL;
  g_cache.n = g_cache.cap = g_cache.lv_n = 0;
  g_cache.cur_file = 1;
  g_cache.cur_off = 0;
  snprintf(g_cache.dir, sizeof(g_cache.dir), "%s", dir);
}

static void
file_path(char *out, size_t cap, const char *dir, uint32_t no)
{
  snprintf(out, cap, "%s/audit-%08" PRIu32 ".jsonl", dir, no);
}

/* cache_extend reads records until the cache holds |size| of them. */
static int
cache_extend(uint64_t size, char *why, size_t why_len)
{
  char path[PATH_CAP + 32];
  char *line = NULL;
  size_t line_cap = 0;
  FILE *f = NULL;
  int r = KMS_ERR_INTERNAL;

  if (size > g_cache.cap) {
    uint64_t ncap = g_cache.cap ? g_cache.cap : 1024;
    while (ncap < size) {
      ncap *= 2;
    }
    void *l = realloc(g_cache.leaves, ncap * sizeof(*g_cache.leaves));
    if (l == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    g_cache.leaves = l;
    void *p = realloc(g_cache.pos, ncap * sizeof(*g_cache.pos));
    if (p == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    g_cache.pos = p;
    g_cache.cap = ncap;
  }
  while (g_cache.n < size) {
    if (f == NULL) {
      file_path(path, sizeof(path), g_cache.dir, g_cache.cur_file);
      f = fopen(path, "rb");
      if (f == NULL || fseeko(f, (off_t)g_cache.cur_off, SEEK_SET) != 0) {
        snprintf(why, why_len, "audit log file %" PRIu32 " unreadable: %s", g_cache.cur_file,
                 strerror(errno));
        r = KMS_ERR_IO;
        goto out;
      }
    }
    ssize_t len = getline(&line, &line_cap, f);
    if (len <= 0) {
      /* End of this file: the tree continues in the next one. */
      fclose(f);
      f = NULL;
      g_cache.cur_file++;
      g_cache.cur_off = 0;
      continue;
    }
    uint64_t seq = 0;
    if (line[len - 1] != '\n' || kms_auditlog_parse_seq(line, (size_t)len - 1, &seq) != 0 ||
        seq != g_cache.n) {
      snprintf(why, why_len, "audit log: record %" PRIu64 " is not where it should be",
               g_cache.n);
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    kms_merkle_leaf_hash(g_cache.leaves[g_cache.n], (const uint8_t *)line, (size_t)len - 1);
    g_cache.pos[g_cache.n].file = g_cache.cur_file;
    g_cache.pos[g_cache.n].off = g_cache.cur_off;
    g_cache.cur_off += (uint64_t)len;
    g_cache.n++;
  }
  r = KMS_OK;
out:
  if (f != NULL) {
    fclose(f);
  }
  free(line);
  return r;
}

int
audit_export_levels(const uint8_t (*leaves)[KMS_MERKLE_HASH_LEN], uint64_t n,
                    uint8_t (**out)[KMS_MERKLE_HASH_LEN], uint64_t *out_total)
{
  uint64_t total = 0;
  uint8_t (*lv)[KMS_MERKLE_HASH_LEN] = NULL;

  *out = NULL;
  *out_total = 0;
  for (uint64_t s = n; s > 0; s = s == 1 ? 0 : (s + 1) / 2) {
    total += s;
  }
  if (total == 0) {
    return KMS_OK;
  }
  lv = malloc(total * sizeof(*lv));
  if (lv == NULL) {
    return KMS_ERR_ALLOC;
  }
  memcpy(lv, leaves, n * sizeof(*lv));
  uint64_t off = 0;
  for (uint64_t s = n; s > 1; s = (s + 1) / 2) {
    uint64_t up = off + s;
    for (uint64_t i = 0; i < s / 2; i++) {
      kms_merkle_node_hash(lv[up + i], lv[off + 2 * i], lv[off + 2 * i + 1]);
    }
    if (s % 2 == 1) {
      /* A lone last node is carried up: RFC 6962 splits at the largest power of two. */
      memcpy(lv[up + s / 2], lv[off + s - 1], KMS_MERKLE_HASH_LEN);
    }
    off = up;
  }
  *out = lv;
  *out_total = total;
  return KMS_OK;
}

void
audit_export_proof(const uint8_t (*levels)[KMS_MERKLE_HASH_LEN], uint64_t n, uint64_t index,
                   uint8_t (*path)[KMS_MERKLE_HASH_LEN], size_t *path_len)
{
  uint64_t off = 0, idx = index;
  size_t k = 0;

  for (uint64_t s = n; s > 1; s = (s + 1) / 2) {
    uint64_t sib = idx ^ 1;
    if (sib < s && k < KMS_MERKLE_MAX_PROOF) {
      memcpy(path[k++], levels[off + sib], KMS_MERKLE_HASH_LEN);
    }
    off += s;
    idx >>= 1;
  }
  *path_len = k;
}

/*
 * find_checkpoint reads the checkpoints file and returns the note (malloc'd,
 * NUL-terminated) of size |want|, or the last one when |want| is 0, after
 * verifying its signature: what a client gets is what kmsd signed.
 */
static int
find_checkpoint(audit *a, uint64_t want, struct kms_checkpoint *cp, char **out_note, char *why,
                size_t why_len)
{
  char path[PATH_CAP + 32];
  char *buf = NULL;
  size_t len = 0, pos = 0, best_start = 0, best_len = 0;
  bool found = false;
  int r = KMS_ERR_INTERNAL;

  *out_note = NULL;
  snprintf(path, sizeof(path), "%s/checkpoints", audit_dir(a));
  r = kms_auditlog_read_file(path, &buf, &len, why, why_len);
  if (r == KMS_ERR_NOT_FOUND) {
    snprintf(why, why_len, "no signed checkpoint yet: try again after audit_checkpoint_seconds");
    r = KMS_ERR_FAILED_PRECONDITION;
  }
  if (r != KMS_OK) {
    goto out;
  }
  for (;;) {
    size_t start = 0, note_len = 0, used = 0;
    if (kms_note_next(buf + pos, len - pos, &start, &note_len, &used) != KMS_OK) {
      break; /* the end, or a note being written: not signed yet as far as we know */
    }
    const char *note = buf + pos + start;
    const char *blank = memmem(note, note_len, "\n\n", 2);
    struct kms_checkpoint c;
    if (blank != NULL &&
        kms_checkpoint_parse(&c, note, (size_t)(blank - note) + 1) == KMS_OK &&
        (want == 0 || c.size == want)) {
      best_start = pos + start;
      best_len = note_len;
      found = true;
    }
    pos += used;
  }
  if (!found) {
    snprintf(why, why_len,
             want == 0 ? "no signed checkpoint yet: try again after audit_checkpoint_seconds"
                       : "tree_size: no checkpoint of that size");
    r = want == 0 ? KMS_ERR_FAILED_PRECONDITION : KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  size_t text_len = 0;
  if (kms_note_verify(buf + best_start, best_len, audit_vkey(a), &text_len) != KMS_OK ||
      kms_checkpoint_parse(cp, buf + best_start, text_len) != KMS_OK) {
    snprintf(why, why_len, "the checkpoint does not verify with the log's key");
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  *out_note = strndup(buf + best_start, best_len);
  r = *out_note != NULL ? KMS_OK : KMS_ERR_ALLOC;
out:
  free(buf);
  return r;
}

/* ms_to_iso writes the record time format (fixed width, so strings compare as times). */
static void
ms_to_iso(int64_t ms, char *out, size_t cap)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  char day[32];
  gmtime_r(&t, &tm);
  if (strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
    day[0] = '\0';
  }
  snprintf(out, cap, "%s.%03dZ", day, (int)(ms % 1000));
}

static const char *
jstr(json_t *o, const char *k)
{
  return json_string_value(json_object_get(o, k));
}

/* Does the record match the filters? |session_hmac| is "" when there is no session filter. */
static bool
matches(json_t *rec, const Tkms__ExportAuditRequest *req, const char *from, const char *to,
        const char *session_hmac)
{
  const char *t = jstr(rec, "time"), *tenant = jstr(rec, "tenant"), *op = jstr(rec, "op");
  if (t == NULL) {
    return false;
  }
  if ((from[0] != '\0' && strcmp(t, from) < 0) || (to[0] != '\0' && strcmp(t, to) >= 0)) {
    return false;
  }
  if (req->tenant_id != NULL && req->tenant_id[0] != '\0' &&
      (tenant == NULL || strcmp(tenant, req->tenant_id) != 0)) {
    return false;
  }
  if (req->operation != NULL && req->operation[0] != '\0' &&
      (op == NULL || strcmp(op, req->operation) != 0)) {
    return false;
  }
  if (session_hmac[0] != '\0') {
    const char *s = jstr(rec, "session");
    const char *cs = jstr(json_object_get(rec, "context"), "session_id");
    if ((s == NULL || strcmp(s, session_hmac) != 0) &&
        (cs == NULL || strcmp(cs, session_hmac) != 0)) {
      return false;
    }
  }
  return true;
}

static Tkms__AuditRecordProof *
record_new(uint64_t index, const char *line, size_t len, uint64_t n)
{
  uint8_t path[KMS_MERKLE_MAX_PROOF][KMS_MERKLE_HASH_LEN];
  size_t path_len = 0;
  Tkms__AuditRecordProof *p = malloc(sizeof(*p));

  if (p == NULL) {
    return NULL;
  }
  tkms__audit_record_proof__init(p);
  p->index = index;
  audit_export_proof((const uint8_t (*)[KMS_MERKLE_HASH_LEN])g_cache.levels, n, index, path,
                     &path_len);
  p->record = strndup(line, len);
  p->proof = calloc(path_len + 1, sizeof(*p->proof));
  if (p->record == NULL || p->proof == NULL) {
    goto fail;
  }
  for (size_t i = 0; i < path_len; i++) {
    p->proof[i].data = malloc(KMS_MERKLE_HASH_LEN);
    if (p->proof[i].data == NULL) {
      goto fail;
    }
    memcpy(p->proof[i].data, path[i], KMS_MERKLE_HASH_LEN);
    p->proof[i].len = KMS_MERKLE_HASH_LEN;
    p->n_proof = i + 1;
  }
  return p;
fail:
  protobuf_c_message_free_unpacked(&p->base, NULL);
  return NULL;
}

/* tree_ready brings the cache (leaves and levels) to |cp|'s size and checks its root. */
static int
tree_ready(audit *a, const struct kms_checkpoint *cp, char *why, size_t why_len)
{
  int r = KMS_OK;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (attempt > 0 || strcmp(g_cache.dir, audit_dir(a)) != 0 || g_cache.n > cp->size) {
      cache_reset(audit_dir(a));
    }
    if ((r = cache_extend(cp->size, why, why_len)) != KMS_OK) {
      continue;
    }
    if (g_cache.lv_n != cp->size || g_cache.levels == NULL) {
      uint64_t total = 0;
      free(g_cache.levels);
      g_cache.levels = NULL;
      g_cache.lv_n = 0;
      if ((r = audit_export_levels((const uint8_t (*)[KMS_MERKLE_HASH_LEN])g_cache.leaves,
                                   cp->size, &g_cache.levels, &total)) != KMS_OK) {
        return r;
      }
      g_cache.lv_n = cp->size;
    }
    uint8_t root[KMS_MERKLE_HASH_LEN];
    kms_merkle_root(root, (const uint8_t (*)[KMS_MERKLE_HASH_LEN])g_cache.leaves, cp->size);
    if (memcmp(root, cp->root, KMS_MERKLE_HASH_LEN) == 0) {
      return KMS_OK;
    }
    snprintf(why, why_len, "the log does not hash to its checkpoint of size %" PRIu64,
             cp->size);
    r = KMS_ERR_INTERNAL;
  }
  return r;
}

int
audit_export_page(audit *a, const Tkms__ExportAuditRequest *req, size_t max_bytes, char *why,
                  size_t why_len, Tkms__ExportAuditResponse **out)
{
  struct kms_checkpoint cp;
  char *note = NULL, *line = NULL;
  char from[48] = "", to[48] = "", session_hmac[33] = "", path[PATH_CAP + 32];
  size_t line_cap = 0, bytes = 0, cap_records = 0;
  uint64_t start = 0, i;
  uint32_t open_file = 0;
  FILE *f = NULL;
  Tkms__ExportAuditResponse *resp = NULL;
  bool locked = false;
  int r = KMS_ERR_INTERNAL;
  uint32_t limit = req->limit != 0 ? req->limit : AUDIT_EXPORT_LIMIT_DEFAULT;

  *out = NULL;
  if (max_bytes < PAGE_BYTES_MIN) {
    max_bytes = PAGE_BYTES_MIN;
  }
  if (req->page_token != NULL && req->page_token[0] != '\0') {
    char *end = NULL;
    errno = 0;
    start = strtoull(req->page_token, &end, 10);
    if (errno != 0 || end == req->page_token || *end != '\0') {
      snprintf(why, why_len, "page_token: not one of ours");
      r = KMS_ERR_INVALID_ARGUMENT;
      goto out;
    }
  }
  if (req->from_ms > 0) {
    ms_to_iso(req->from_ms, from, sizeof(from));
  }
  if (req->to_ms > 0) {
    ms_to_iso(req->to_ms, to, sizeof(to));
  }
  if (req->session_id != NULL && req->session_id[0] != '\0' &&
      (r = audit_hmac_hex(a, "session_id", req->session_id, session_hmac)) != KMS_OK) {
    goto out;
  }
  if ((r = find_checkpoint(a, req->tree_size, &cp, &note, why, why_len)) != KMS_OK) {
    goto out;
  }
  if (start > cp.size) {
    snprintf(why, why_len, "page_token: beyond the checkpoint");
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  pthread_mutex_lock(&g_cache.mu);
  locked = true;
  if ((r = tree_ready(a, &cp, why, why_len)) != KMS_OK) {
    goto out;
  }
  resp = malloc(sizeof(*resp));
  if (resp == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  tkms__export_audit_response__init(resp);
  resp->checkpoint = note;
  note = NULL;
  resp->tree_size = cp.size;
  bytes = strlen(resp->checkpoint);
  for (i = start; i < cp.size; i++) {
    if (resp->n_records >= limit || (resp->n_records > 0 && bytes >= max_bytes)) {
      break;
    }
    if (f == NULL || open_file != g_cache.pos[i].file) {
      if (f != NULL) {
        fclose(f);
      }
      open_file = g_cache.pos[i].file;
      file_path(path, sizeof(path), audit_dir(a), open_file);
      f = fopen(path, "rb");
      if (f == NULL || fseeko(f, (off_t)g_cache.pos[i].off, SEEK_SET) != 0) {
        snprintf(why, why_len, "audit log file %" PRIu32 " unreadable", open_file);
        r = KMS_ERR_IO;
        goto out;
      }
    }
    ssize_t len = getline(&line, &line_cap, f);
    uint8_t lh[KMS_MERKLE_HASH_LEN];
    if (len <= 0 || line[len - 1] != '\n') {
      snprintf(why, why_len, "audit log: record %" PRIu64 " unreadable", i);
      r = KMS_ERR_IO;
      goto out;
    }
    len--;
    kms_merkle_leaf_hash(lh, (const uint8_t *)line, (size_t)len);
    if (memcmp(lh, g_cache.leaves[i], KMS_MERKLE_HASH_LEN) != 0) {
      /* The file changed under us: nothing is exported from a log that no longer verifies. */
      snprintf(why, why_len, "audit log: record %" PRIu64 " changed since it was signed", i);
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    json_t *rec = json_loadb(line, (size_t)len, 0, NULL);
    bool hit = rec != NULL && matches(rec, req, from, to, session_hmac);
    json_decref(rec);
    if (!hit) {
      continue;
    }
    if (resp->n_records == cap_records) {
      size_t ncap = cap_records ? cap_records * 2 : 64;
      void *p = realloc(resp->records, ncap * sizeof(*resp->records));
      if (p == NULL) {
        r = KMS_ERR_ALLOC;
        goto out;
      }
      resp->records = p;
      cap_records = ncap;
    }
    Tkms__AuditRecordProof *p = record_new(i, line, (size_t)len, cp.size);
    if (p == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    resp->records[resp->n_records++] = p;
    bytes += (size_t)len + 40 + p->n_proof * (KMS_MERKLE_HASH_LEN + 2);
  }
  if (i < cp.size) {
    char tok[32];
    snprintf(tok, sizeof(tok), "%" PRIu64, i);
    resp->next_page_token = strdup(tok);
    if (resp->next_page_token == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
  }
  *out = resp;
  resp = NULL;
  r = KMS_OK;
out:
  if (locked) {
    pthread_mutex_unlock(&g_cache.mu);
  }
  if (f != NULL) {
    fclose(f);
  }
  if (resp != NULL) {
    protobuf_c_message_free_unpacked(&resp->base, NULL);
  }
  free(line);
  free(note);
  return r;
}

/* ---- Key state changes for the summary ------------------------------------------- */

/* A replayed state: "" when the history does not say (before it was recorded). */
struct rstate {
  uint32_t version; /* 0: the tenant */
  const char *state;
  const char *prior; /* before pending destruction */
};

struct replay {
  struct rstate *s;
  size_t n, cap;
  uint32_t newest;
};

static struct rstate *
rstate_get(struct replay *rp, uint32_t version)
{
  for (size_t i = 0; i < rp->n; i++) {
    if (rp->s[i].version == version) {
      return &rp->s[i];
    }
  }
  if (rp->n == rp->cap) {
    size_t ncap = rp->cap ? rp->cap * 2 : 8;
    struct rstate *p = realloc(rp->s, ncap * sizeof(*p));
    if (p == NULL) {
      return NULL;
    }
    rp->s = p;
    rp->cap = ncap;
  }
  rp->s[rp->n] = (struct rstate){.version = version, .state = "", .prior = ""};
  return &rp->s[rp->n++];
}

/* detail_id reads N from a detail starting "|word| N" (our own formats, keystore_sqlite.c). */
static uint64_t
detail_id(const char *detail, const char *word)
{
  size_t wl = strlen(word);
  if (strncmp(detail, word, wl) != 0 || detail[wl] != ' ') {
    return 0;
  }
  return strtoull(detail + wl + 1, NULL, 10);
}

/*
 * replay_event applies one event to the tenant's states. Returns 1 and fills
 * |c| when it changed a state, 0 when it is no state change, <0 on error.
 */
static int
replay_event(struct replay *rp, const struct ks_event_row *row, struct audit_change *c)
{
  const struct ks_event *e = &row->e;
  const char *to = NULL;
  struct rstate *t = rstate_get(rp, e->version);

  if (t == NULL) {
    return KMS_ERR_ALLOC;
  }
  memset(c, 0, sizeof(*c));
  c->row = row;
  snprintf(c->old_state, sizeof(c->old_state), "%s", t->state);
  if (strcmp(e->event, "created") == 0 || strcmp(e->event, "rotated") == 0) {
    struct rstate *tenant = rstate_get(rp, 0);
    if (tenant == NULL) {
      return KMS_ERR_ALLOC;
    }
    t = rstate_get(rp, e->version); /* rstate_get may have moved the array */
    if (strcmp(e->event, "created") == 0) {
      tenant->state = "active";
    }
    /* The same transaction demoted the active version (docs/LIFECYCLE.md). */
    for (size_t i = 0; i < rp->n; i++) {
      if (rp->s[i].version != 0 && rp->s[i].version != e->version &&
          strcmp(rp->s[i].state, "active") == 0) {
        rp->s[i].state = "decrypt-only";
      }
    }
    rp->newest = e->version > rp->newest ? e->version : rp->newest;
    c->old_state[0] = '\0';
    to = "active";
  } else if (strcmp(e->event, "disabled") == 0) {
    to = "disabled";
  } else if (strcmp(e->event, "enabled") == 0) {
    to = e->version == 0 || e->version >= rp->newest ? "active" : "decrypt-only";
  } else if (strcmp(e->event, "destruction_scheduled") == 0) {
    t->prior = t->state;
    to = "pending destruction";
  } else if (strcmp(e->event, "destruction_cancelled") == 0) {
    to = t->prior;
    if (e->version != 0 && strcmp(to, "active") == 0 && e->version < rp->newest) {
      to = "decrypt-only";
    }
    t->prior = "";
  } else if (strcmp(e->event, "destroyed") == 0) {
    to = "destroyed";
    if (e->version == 0) {
      for (size_t i = 0; i < rp->n; i++) {
        rp->s[i].state = "destroyed";
      }
    }
  } else {
    return 0;
  }
  t->state = to;
  snprintf(c->new_state, sizeof(c->new_state), "%s", to);
  c->request_id = detail_id(e->detail, "request");
  c->receipt_id = detail_id(e->detail, "receipt");
  return 1;
}

int
audit_export_replay(const struct ks_event_row *rows, size_t n, int64_t from_ms, int64_t to_ms,
                    struct audit_change **out, size_t *out_n)
{
  struct replay rp = {0};
  struct audit_change *list = NULL, c;
  size_t nl = 0, cap = 0;
  int r = KMS_OK;

  *out = NULL;
  *out_n = 0;
  for (size_t i = 0; i < n; i++) {
    if (i == 0 || strcmp(rows[i].tenant_id, rows[i - 1].tenant_id) != 0) {
      rp.n = 0;
      rp.newest = 0;
    }
    int changed = replay_event(&rp, &rows[i], &c);
    if (changed < 0) {
      r = changed;
      goto out;
    }
    if (changed == 0 || rows[i].e.at_ms < from_ms || (to_ms > 0 && rows[i].e.at_ms >= to_ms)) {
      continue;
    }
    if (nl == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      struct audit_change *p = realloc(list, ncap * sizeof(*p));
      if (p == NULL) {
        r = KMS_ERR_ALLOC;
        goto out;
      }
      list = p;
      cap = ncap;
    }
    list[nl++] = c;
  }
  *out = list;
  *out_n = nl;
  list = NULL;
out:
  free(rp.s);
  free(list);
  return r;
}

/* audit_op_for names the RPC whose audit record stands for a change; "" when kmsd acted alone. */
static const char *
audit_op_for(const struct audit_change *c)
{
  const char *ev = c->row->e.event;
  if (strcmp(c->row->e.by, "kmsd") == 0) {
    return "";
  }
  if (strcmp(ev, "created") == 0) {
    return "CreateTenant";
  }
  if (strcmp(ev, "rotated") == 0) {
    return "RotateKey";
  }
  if (strcmp(ev, "disabled") == 0) {
    return "DisableKey";
  }
  if (strcmp(ev, "enabled") == 0) {
    return "EnableKey";
  }
  if (strcmp(ev, "destruction_scheduled") == 0) {
    return "ScheduleDestruction";
  }
  if (strcmp(ev, "destruction_cancelled") == 0) {
    return "CancelDestruction";
  }
  return "";
}

static char *
xstrdup0(const char *s)
{
  return strdup(s != NULL ? s : "");
}

/* change_new builds one KeyStateChange; approvers from the request or the receipt. */
static Tkms__KeyStateChange *
change_new(keystore *ks, const struct audit_change *c, struct ks_receipt *receipts, size_t n_rc)
{
  Tkms__KeyStateChange *m = calloc(1, sizeof(*m));
  const struct ks_event *e = &c->row->e;
  struct ks_request q;
  const char *actor = e->by;
  const char(*approvers)[KS_PRINCIPAL_MAX + 1] = NULL;
  size_t n_approvers = 0;

  if (m == NULL) {
    return NULL;
  }
  tkms__key_state_change__init(m);
  m->at_ms = e->at_ms;
  m->version = e->version;
  m->request_id = c->request_id;
  m->receipt_id = c->receipt_id;
  memset(&q, 0, sizeof(q));
  if (c->receipt_id != 0) {
    for (size_t i = 0; i < n_rc; i++) {
      if (receipts[i].id == c->receipt_id) {
        m->request_id = receipts[i].request_id;
        m->requested_ms = receipts[i].requested_ms;
        actor = receipts[i].requested_by;
        approvers = (const char(*)[KS_PRINCIPAL_MAX + 1])receipts[i].approved_by;
        n_approvers = receipts[i].n_approved;
        break;
      }
    }
  } else if (c->request_id != 0 && keystore_request_get(ks, c->request_id, &q) == KMS_OK) {
    m->requested_ms = q.requested_ms;
    actor = q.requested_by;
    approvers = (const char(*)[KS_PRINCIPAL_MAX + 1])q.approved_by;
    n_approvers = q.n_approved;
  }
  m->tenant_id = xstrdup0(c->row->tenant_id);
  m->event = xstrdup0(e->event);
  m->old_state = xstrdup0(c->old_state);
  m->new_state = xstrdup0(c->new_state);
  m->actor = xstrdup0(actor);
  m->executed_by = xstrdup0(e->by);
  m->audit_op = xstrdup0(audit_op_for(c));
  m->approvers = calloc(n_approvers + 1, sizeof(*m->approvers));
  if (m->tenant_id == NULL || m->event == NULL || m->old_state == NULL || m->new_state == NULL ||
      m->actor == NULL || m->executed_by == NULL || m->audit_op == NULL || m->approvers == NULL) {
    goto fail;
  }
  for (size_t i = 0; i < n_approvers; i++) {
    if (strcmp(approvers[i], actor) == 0) {
      continue; /* a request lists its requester first: not an approver */
    }
    if ((m->approvers[m->n_approvers] = strdup(approvers[i])) == NULL) {
      goto fail;
    }
    m->n_approvers++;
  }
  return m;
fail:
  protobuf_c_message_free_unpacked(&m->base, NULL);
  return NULL;
}

int
audit_export_state_changes(keystore *ks, const Tkms__ExportAuditRequest *req,
                           size_t max_bytes, Tkms__ExportAuditResponse *resp)
{
  size_t bytes = 0;
  struct ks_event_row *rows = NULL;
  struct audit_change *ch = NULL;
  struct ks_receipt *receipts = NULL;
  size_t n_rows = 0, n_ch = 0, n_rc = 0;
  int more = 0, r;
  const char *tenant = req->tenant_id != NULL ? req->tenant_id : "";
  int64_t to = req->to_ms > 0 ? req->to_ms : INT64_MAX;

  r = keystore_event_range(ks, tenant, req->from_ms > 0 ? req->from_ms : 0, to,
                           AUDIT_EXPORT_HISTORY_ROWS, &rows, &n_rows, &more);
  if (r != KMS_OK) {
    goto out;
  }
  if ((r = audit_export_replay(rows, n_rows, req->from_ms, req->to_ms, &ch, &n_ch)) != KMS_OK) {
    goto out;
  }
  for (size_t i = 0; i < n_ch; i++) {
    if (ch[i].receipt_id != 0) {
      /* Receipts of the tenant(s) in scope, read once. */
      r = keystore_receipt_list(ks, tenant, &receipts, &n_rc);
      if (r != KMS_OK) {
        goto out;
      }
      break;
    }
  }
  resp->state_changes = calloc(n_ch + 1, sizeof(*resp->state_changes));
  if (resp->state_changes == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  for (size_t i = 0; i < n_ch; i++) {
    if (bytes >= max_bytes) {
      more = 1; /* the page must stay under a frame: the auditor narrows the period */
      break;
    }
    Tkms__KeyStateChange *m = change_new(ks, &ch[i], receipts, n_rc);
    if (m == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    resp->state_changes[resp->n_state_changes++] = m;
    bytes += protobuf_c_message_get_packed_size(&m->base) + 8;
  }
  /* A cut history would replay wrong states: say so rather than guess. */
  resp->state_changes_truncated = more != 0;
  r = KMS_OK;
out:
  free(rows);
  free(ch);
  free(receipts);
  return r;
}
