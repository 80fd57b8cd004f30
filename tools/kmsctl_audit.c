/* kmsctl audit: offline verification of audit logs, checkpoints and exports; export over RPC. */
#include "kmsctl_audit.h"

#include <getopt.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "kms_auditlog.h"
#include "kms_auditsum.h"
#include "kms_err.h"
#include "kms_merkle.h"
#include "kms_note.h"
#include "kms_time.h"
#include "tenantkey.h"
#include "tk_internal.h"

#define PATH_CAP 4096

static void
audit_usage(FILE *f)
{
  fprintf(f,
          "usage: kmsctl audit verify FILE... --key VKEY [--checkpoints FILE] "
          "[--checkpoint TRUSTED]...\n"
          "       kmsctl audit verifier-key DIR\n"
          "       kmsctl [--config FILE] audit export --from T --to T [--tenant T] [--session S]\n"
          "              [--op OP] [--format jsonl|csv] [--out FILE] [--quiet]\n"
          "       kmsctl audit verify-export FILE --key VKEY\n"
          "       kmsctl audit summary FILE\n"
          "\n"
          "verify     recomputes the Merkle tree of the log FILEs (in order: audit-*.jsonl),\n"
          "           checks every signed checkpoint (default: DIR/checkpoints beside the first\n"
          "           FILE) and every TRUSTED checkpoint kept elsewhere, and names the first\n"
          "           record edited, inserted, removed or reordered, or a log cut short.\n"
          "           VKEY is a note verifier key, or a file holding one.\n"
          "           Exit 0: verified; 1: tampering or a bad checkpoint; 2: usage or I/O.\n"
          "verifier-key  prints the verifier key kmsd wrote into its audit directory DIR.\n"
          "export     asks kmsd (auditor principal) for the records of the period [from, to),\n"
          "           each with its inclusion proof against one signed checkpoint, then a\n"
          "           summary: counts per tenant, key version, operation and outcome; who\n"
          "           accessed which session's key; every key state change (from kmsd's key\n"
          "           history) with actor, approvers, receipt and the audit record of the call.\n"
          "           T is ms since the epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).\n"
          "           OP is an RPC name (GetSessionKey, RotateKey, ...). A tenant-bound auditor\n"
          "           must give --tenant (its own). With --out the summary is also printed as\n"
          "           tables (not with --quiet); on a terminal without --out only the tables.\n"
          "           csv: the records, then after blank lines the checkpoint, summary,\n"
          "           session_access and state_change sections.\n"
          "verify-export  checks an export (jsonl or csv) offline: the checkpoint's signature,\n"
          "           every record's inclusion proof (csv: and that the row's columns say what\n"
          "           the record says), the summary's counts, and that every state change's\n"
          "           audit record is a verified record of the export. Exit 0: verified; 1: not.\n"
          "summary    prints the summary of a jsonl export as tables.\n");
}

/* read_small reads a whole small file (a key, a note) into a NUL-terminated buffer. */
static char *
read_small(const char *path, size_t *out_len)
{
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t n = 0;

  *out_len = 0;
  if (f == NULL) {
    return NULL;
  }
  buf = malloc(KMS_NOTE_MAX + 1);
  if (buf != NULL) {
    n = fread(buf, 1, KMS_NOTE_MAX, f);
    if (ferror(f) || !feof(f)) {
      /* Unreadable, or bigger than any key or note we accept. */
      free(buf);
      buf = NULL;
    } else {
      buf[n] = '\0';
      *out_len = n;
    }
  }
  fclose(f);
  return buf;
}

static int
load_vkey(struct kms_note_vkey *k, const char *arg)
{
  size_t len = 0;
  char *text;

  if (kms_note_vkey_parse(k, arg, strlen(arg)) == KMS_OK) {
    return KMS_OK;
  }
  text = read_small(arg, &len);
  if (text == NULL) {
    return KMS_ERR_IO;
  }
  int r = kms_note_vkey_parse(k, text, len);
  free(text);
  return r;
}

static int
cmd_verifier_key(int argc, char **argv)
{
  char path[PATH_CAP], out[KMS_NOTE_VKEY_MAX];
  struct kms_note_vkey k;
  size_t len = 0;
  char *text;

  if (argc != 2) {
    audit_usage(stderr);
    return 2;
  }
  snprintf(path, sizeof(path), "%s/verifier-key", argv[1]);
  text = read_small(path, &len);
  if (text == NULL || kms_note_vkey_parse(&k, text, len) != KMS_OK ||
      kms_note_vkey_format(out, sizeof(out), &k) != KMS_OK) {
    fprintf(stderr, "kmsctl: %s: missing or not a verifier key\n", path);
    free(text);
    return 2;
  }
  free(text);
  printf("%s\n", out);
  return 0;
}

static int
cmd_verify(int argc, char **argv)
{
  static const struct option longopts[] = {
      {"key", required_argument, NULL, 'k'},
      {"checkpoints", required_argument, NULL, 'c'},
      {"checkpoint", required_argument, NULL, 't'},
      {NULL, 0, NULL, 0},
  };
  const char *key_arg = NULL, *cps_path = NULL;
  const char *trusted[16];
  size_t n_trusted = 0, n_cps = 0, n_all = 0;
  struct kms_note_vkey k;
  struct kms_auditlog_cp *cps = NULL, *all = NULL;
  struct kms_auditlog_result *res = NULL;
  char default_cps[PATH_CAP], why[512];
  uint64_t good_len = 0;
  int opt, rc = 2, r;

  optind = 0; /* glibc: 0 re-initialises getopt, which kmsctl's main already ran */
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case 'k':
      key_arg = optarg;
      break;
    case 'c':
      cps_path = optarg;
      break;
    case 't':
      if (n_trusted == sizeof(trusted) / sizeof(trusted[0])) {
        fprintf(stderr, "kmsctl: too many --checkpoint\n");
        return 2;
      }
      trusted[n_trusted++] = optarg;
      break;
    default:
      audit_usage(stderr);
      return 2;
    }
  }
  if (key_arg == NULL || optind >= argc) {
    audit_usage(stderr);
    return 2;
  }
  if (load_vkey(&k, key_arg) != KMS_OK) {
    fprintf(stderr, "kmsctl: --key %s: not a verifier key (or a file holding one)\n", key_arg);
    return 2;
  }
  const char *const *files = (const char *const *)argv + optind;
  size_t n_files = (size_t)(argc - optind);
  if (cps_path == NULL) {
    const char *slash = strrchr(files[0], '/');
    snprintf(default_cps, sizeof(default_cps), "%.*scheckpoints",
             slash != NULL ? (int)(slash - files[0] + 1) : 0, files[0]);
    cps_path = default_cps;
  }
  r = kms_auditlog_load_checkpoints(cps_path, &k, &cps, &n_cps, &good_len, why, sizeof(why));
  if (r == KMS_ERR_DECRYPT) {
    printf("FAILED: %s\n", why);
    rc = 1;
    goto out;
  }
  if (r == KMS_ERR_NOT_FOUND) {
    fprintf(stderr, "kmsctl: warning: no checkpoints file %s: only sequence numbers are checked\n",
            cps_path);
  } else if (r != KMS_OK) {
    fprintf(stderr, "kmsctl: %s\n", why);
    goto out;
  }
  all = calloc(n_cps + n_trusted + 1, sizeof(*all));
  res = calloc(1, sizeof(*res));
  if (all == NULL || res == NULL) {
    fprintf(stderr, "kmsctl: out of memory\n");
    goto out;
  }
  for (size_t i = 0; i < n_cps; i++) {
    all[n_all++] = cps[i];
  }
  for (size_t i = 0; i < n_trusted; i++) {
    size_t len = 0, text_len = 0;
    struct kms_checkpoint cp;
    char *note = read_small(trusted[i], &len);
    if (note == NULL) {
      fprintf(stderr, "kmsctl: --checkpoint %s: cannot read\n", trusted[i]);
      goto out;
    }
    if (kms_note_verify(note, len, &k, &text_len) != KMS_OK ||
        kms_checkpoint_parse(&cp, note, text_len) != KMS_OK || strcmp(cp.origin, k.name) != 0) {
      printf("FAILED: trusted checkpoint %s is not a checkpoint signed by %s\n", trusted[i],
             k.name);
      free(note);
      rc = 1;
      goto out;
    }
    free(note);
    all[n_all].size = cp.size;
    memcpy(all[n_all].root, cp.root, sizeof(cp.root));
    snprintf(all[n_all].source, sizeof(all[n_all].source), "trusted checkpoint %zu", i + 1);
    n_all++;
  }
  r = kms_auditlog_replay(files, n_files, all, n_all, res);
  if (r == KMS_ERR_IO) {
    fprintf(stderr, "kmsctl: %s\n", res->why);
    goto out;
  }
  if (res->torn_bytes > 0) {
    fprintf(stderr,
            "kmsctl: note: %s ends in an incomplete line (%" PRIu64 " bytes): a write cut by a "
            "crash, never acknowledged; kmsd removes it when it starts\n",
            files[n_files - 1], res->torn_bytes);
  }
  if (r != KMS_OK) {
    if (res->bad_seq != UINT64_MAX) {
      printf("FAILED at record %" PRIu64 ": %s\n", res->bad_seq, res->why);
    } else {
      printf("FAILED: %s\n", res->why);
    }
    rc = 1;
    goto out;
  }
  {
    uint8_t root[KMS_MERKLE_HASH_LEN];
    char b64[48];
    uint64_t covered = 0;
    for (size_t i = 0; i < n_all; i++) {
      covered = all[i].size > covered ? all[i].size : covered;
    }
    kms_merkle_frontier_root(&res->tree, root);
    kms_b64_encode(b64, sizeof(b64), root, sizeof(root));
    printf("OK: %" PRIu64 " records in %zu file(s); %" PRIu64
           " checkpoint(s) verified against the tree; root %s\n",
           res->tree.size, n_files, res->checkpoints_matched, b64);
    if (covered < res->tree.size) {
      printf("note: records %" PRIu64 "..%" PRIu64
             " are after the last checkpoint: not yet covered by a signature\n",
             covered, res->tree.size - 1);
    }
  }
  rc = 0;
out:
  free(cps);
  free(all);
  free(res);
  return rc;
}

/* ---- export (over RPC) and verify-export (offline) ------------------------------ */

/* csv_field writes |s| as one CSV field (RFC 4180 quoting). */
static void
csv_field(FILE *o, const char *s)
{
  fputc('"', o);
  for (; *s != '\0'; s++) {
    if (*s == '"') {
      fputc('"', o);
    }
    fputc(*s, o);
  }
  fputc('"', o);
}

static const char *
jstr_or(json_t *o, const char *k, const char *dflt)
{
  const char *v = json_string_value(json_object_get(o, k));
  return v != NULL ? v : dflt;
}

/* ms_iso writes the record time format for |ms|. */
static void
ms_iso(int64_t ms, char *out, size_t cap)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  char day[32] = "";
  gmtime_r(&t, &tm);
  strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, cap, "%s.%03dZ", day, (int)(ms % 1000));
}

/*
 * The summary, built from the records as they stream by; verify-export builds
 * it again from the records it verified and compares. Candidate records for
 * the state-change cross-check (OK lifecycle calls) are kept with their JSON.
 */
struct sumb {
  json_t *counts, *sessions, *keep;
  struct kms_auditsum_rec *recs;
  size_t n_recs, cap;
  uint64_t n_records;
};

static const char *const lifecycle_ops[] = {"CreateTenant",        "RotateKey",
                                            "DisableKey",          "EnableKey",
                                            "ScheduleDestruction", "CancelDestruction"};

static int
sumb_init(struct sumb *b)
{
  memset(b, 0, sizeof(*b));
  b->counts = json_object();
  b->sessions = json_object();
  b->keep = json_array();
  return b->counts != NULL && b->sessions != NULL && b->keep != NULL ? 0 : -1;
}

static void
sumb_free(struct sumb *b)
{
  json_decref(b->counts);
  json_decref(b->sessions);
  json_decref(b->keep);
  free(b->recs);
  memset(b, 0, sizeof(*b));
}

/* count_add adds one to counts[key] (a JSON object used as a map). */
static void
count_add(json_t *counts, const char *key)
{
  json_t *n = json_object_get(counts, key);
  json_object_set_new(counts, key, json_integer(n != NULL ? json_integer_value(n) + 1 : 1));
}

/* rec_session is the record's session HMAC: its own, or its context's session_id. */
static const char *
rec_session(json_t *rec)
{
  const char *s = jstr_or(rec, "session", NULL);
  return s != NULL ? s : jstr_or(json_object_get(rec, "context"), "session_id", NULL);
}

static void
rec_version(json_t *rec, char *out, size_t cap)
{
  json_t *kv = json_object_get(rec, "kek_version");
  if (json_is_integer(kv)) {
    snprintf(out, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(kv));
  } else {
    out[0] = '\0';
  }
}

static int
sumb_add(struct sumb *b, uint64_t index, json_t *rec)
{
  char ver[24], key[2048];
  const char *tenant = jstr_or(rec, "tenant", "-"), *op = jstr_or(rec, "op", "-");
  const char *outcome = jstr_or(rec, "outcome", "-"), *principal = jstr_or(rec, "principal", "-");
  const char *sess = rec_session(rec);

  rec_version(rec, ver, sizeof(ver));
  snprintf(key, sizeof(key), "%s\t%s\t%s\t%s", tenant, ver[0] ? ver : "0", op, outcome);
  count_add(b->counts, key);
  if (sess != NULL) {
    snprintf(key, sizeof(key), "%s\t%s\t%s\t%s\t%s", sess, tenant, principal, op, outcome);
    count_add(b->sessions, key);
  }
  b->n_records++;
  if (strcmp(outcome, "ok") != 0) {
    return 0;
  }
  for (size_t i = 0; i < sizeof(lifecycle_ops) / sizeof(lifecycle_ops[0]); i++) {
    if (strcmp(op, lifecycle_ops[i]) != 0) {
      continue;
    }
    if (b->n_recs == b->cap) {
      size_t ncap = b->cap ? b->cap * 2 : 64;
      void *p = realloc(b->recs, ncap * sizeof(*b->recs));
      if (p == NULL) {
        return -1;
      }
      b->recs = p;
      b->cap = ncap;
    }
    json_array_append(b->keep, rec); /* the strings below live as long as it */
    b->recs[b->n_recs++] = (struct kms_auditsum_rec){
        .index = index,
        .at_ms = kms_auditsum_parse_time(jstr_or(rec, "time", "")),
        .principal = principal,
        .op = op,
        .tenant = jstr_or(rec, "tenant", NULL),
    };
    break;
  }
  return 0;
}

/* summary_array turns "a\tb\tc..." -> count into [{names[0]:a,...,"count":n}]. */
static json_t *
summary_array(json_t *counts, const char *const *names, size_t n_names, const char *session)
{
  json_t *arr = json_array();
  const char *key;
  json_t *val;
  json_object_foreach(counts, key, val)
  {
    json_t *o = json_object();
    char *copy = strdup(key);
    char *save = NULL, *tok = copy != NULL ? strtok_r(copy, "\t", &save) : NULL;
    for (size_t i = 0; i < n_names && tok != NULL; i++, tok = strtok_r(NULL, "\t", &save)) {
      if (strcmp(names[i], "kek_version") == 0) {
        json_object_set_new(o, names[i], json_integer(strtoll(tok, NULL, 10)));
      } else {
        json_object_set_new(o, names[i], json_string(tok));
      }
      if (i == 0 && strcmp(names[0], "session_hmac") == 0) {
        /* The plain id is known only to who asked for it (--session). */
        json_object_set_new(o, "session", session != NULL ? json_string(session) : json_null());
      }
    }
    free(copy);
    json_object_set(o, "count", val);
    json_array_append_new(arr, o);
  }
  return arr;
}

static const char *const count_names[] = {"tenant", "kek_version", "op", "outcome"};
static const char *const session_names[] = {"session_hmac", "tenant", "principal", "op",
                                            "outcome"};

/* change_json turns a KeyStateChange into the summary's state_changes entry. */
static json_t *
change_json(const Tkms__KeyStateChange *c)
{
  char at[40], req[40];
  json_t *appr = json_array();
  ms_iso(c->at_ms, at, sizeof(at));
  ms_iso(c->requested_ms, req, sizeof(req));
  for (size_t i = 0; i < c->n_approvers; i++) {
    json_array_append_new(appr, json_string(c->approvers[i]));
  }
  return json_pack("{s:s,s:I,s:s,s:I,s:s,s:s,s:s,s:s,s:o,s:I,s:o,s:I,s:s,s:s,s:s}", "time", at,
                   "at_ms", (json_int_t)c->at_ms, "tenant", c->tenant_id, "version",
                   (json_int_t)c->version, "event", c->event, "old_state", c->old_state,
                   "new_state", c->new_state, "actor", c->actor, "approvers", appr, "request_id",
                   (json_int_t)c->request_id, "requested",
                   c->request_id != 0 ? json_string(req) : json_null(), "receipt_id",
                   (json_int_t)c->receipt_id, "executed_by", c->executed_by, "source", "keystore",
                   "audit_op", c->audit_op);
}

/*
 * crosscheck names, for every state change, the audit record that stands for
 * it: the call of |audit_op| by the requester at the request's time (dual
 * control) or by whoever made the change at its time.
 */
static void
crosscheck(struct sumb *b, json_t *changes, int64_t from_ms)
{
  size_t i;
  json_t *c;
  json_array_foreach(changes, i, c)
  {
    const char *op = jstr_or(c, "audit_op", "");
    bool dual = json_integer_value(json_object_get(c, "request_id")) != 0;
    const char *who = jstr_or(c, dual ? "actor" : "executed_by", "");
    int64_t t = dual ? kms_auditsum_parse_time(jstr_or(c, "requested", ""))
                     : json_integer_value(json_object_get(c, "at_ms"));
    char msg[160];
    if (op[0] == '\0') {
      json_object_set_new(c, "audit_index", json_null());
      json_object_set_new(c, "audit_check", json_string("none: kmsd's own lifecycle tick"));
      continue;
    }
    long k = kms_auditsum_match(b->recs, b->n_recs, op, who, jstr_or(c, "tenant", ""), t);
    if (k >= 0) {
      json_object_set_new(c, "audit_index", json_integer((json_int_t)b->recs[k].index));
      snprintf(msg, sizeof(msg), "record %" PRIu64 ": %s by the %s", b->recs[k].index, op,
               dual ? "requester" : "actor");
    } else {
      json_object_set_new(c, "audit_index", json_null());
      snprintf(msg, sizeof(msg), "%s: no %s record in this export",
               t < from_ms ? "before the period" : "MISSING", op);
    }
    json_object_set_new(c, "audit_check", json_string(msg));
  }
}

/* summary_new builds the summary line's object; |changes| is taken. */
static json_t *
summary_new(struct sumb *b, const Tkms__ExportAuditRequest *m, json_t *changes, bool truncated)
{
  const char *session = m->session_id != NULL && m->session_id[0] ? m->session_id : NULL;
  return json_pack(
      "{s:s,s:I,s:I,s:I,s:o,s:o,s:o,s:o,s:o,s:b,s:[s,s,s]}", "type", "summary", "records",
      (json_int_t)b->n_records, "from_ms", (json_int_t)m->from_ms, "to_ms", (json_int_t)m->to_ms,
      "tenant", m->tenant_id != NULL && m->tenant_id[0] ? json_string(m->tenant_id) : json_null(),
      "session", session != NULL ? json_string(session) : json_null(), "counts",
      summary_array(b->counts, count_names, 4, NULL), "session_access",
      summary_array(b->sessions, session_names, 5, session), "state_changes", changes,
      "state_changes_truncated", truncated, "notes",
      "counts and session_access are computed from the records above (verify-export recomputes "
      "them); session ids appear as keyed HMACs (HMAC-SHA256(K, \"session_id\" 0x00 id)[:16]): "
      "match a known session with kmsctl audit export --session ID",
      "state_changes come from kmsd's keystore history (source: keystore), not from the Merkle "
      "log: each names in audit_index the proven record of the call that made or requested it "
      "(audit_op), which verify-export checks; null with audit_check saying why otherwise",
      "old_state is empty where the history does not say (a new version); a rotation also "
      "demotes the previously active version to decrypt-only");
}

/* ---- tables ----------------------------------------------------------------------- */

static const char *
jstr_or_idx(json_t *arr, size_t i)
{
  const char *v = json_string_value(json_array_get(arr, i));
  return v != NULL ? v : "";
}

/* table_print prints rows (arrays of strings) under |hdr|, columns as wide as their widest cell. */
static void
table_print(FILE *o, const char *const *hdr, size_t ncol, json_t *rows)
{
  size_t w[16] = {0}, i;
  json_t *row;
  for (size_t c = 0; c < ncol; c++) {
    w[c] = strlen(hdr[c]);
  }
  json_array_foreach(rows, i, row)
  {
    for (size_t c = 0; c < ncol; c++) {
      size_t l = strlen(jstr_or_idx(row, c));
      w[c] = l > w[c] ? l : w[c];
    }
  }
  for (size_t c = 0; c < ncol; c++) {
    fprintf(o, "%-*s%s", c + 1 < ncol ? (int)w[c] : 0, hdr[c], c + 1 < ncol ? "  " : "\n");
  }
  json_array_foreach(rows, i, row)
  {
    for (size_t c = 0; c < ncol; c++) {
      fprintf(o, "%-*s%s", c + 1 < ncol ? (int)w[c] : 0, jstr_or_idx(row, c),
              c + 1 < ncol ? "  " : "\n");
    }
  }
  if (json_array_size(rows) == 0) {
    fprintf(o, "(none)\n");
  }
}

static json_t *
sfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *
sfmt(const char *fmt, ...)
{
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return json_string(buf);
}

/* approvers_text joins a change's approvers with ", " into |out|. */
static void
approvers_text(json_t *c, char *out, size_t cap)
{
  size_t i, used = 0;
  json_t *a;
  out[0] = '\0';
  json_array_foreach(json_object_get(c, "approvers"), i, a)
  {
    int n = snprintf(out + used, cap - used, "%s%s", used ? ", " : "", json_string_value(a));
    if (n < 0 || (size_t)n >= cap - used) {
      break;
    }
    used += (size_t)n;
  }
}

/* print_summary_tables prints a summary object for a human (the default on a terminal). */
static void
print_summary_tables(FILE *o, json_t *sum)
{
  static const char *const ch[] = {"TENANT", "VERSION", "OPERATION", "OUTCOME", "COUNT"};
  static const char *const sh[] = {"SESSION", "TENANT", "PRINCIPAL", "OPERATION", "OUTCOME",
                                   "COUNT"};
  static const char *const kh[] = {"TIME",    "TENANT",    "VERSION", "EVENT",   "STATE",
                                   "ACTOR",   "APPROVERS", "REQUEST", "RECEIPT", "AUDIT RECORD"};
  char from[40], to[40];
  json_t *rows, *e;
  size_t i;

  ms_iso(json_integer_value(json_object_get(sum, "from_ms")), from, sizeof(from));
  ms_iso(json_integer_value(json_object_get(sum, "to_ms")), to, sizeof(to));
  fprintf(o, "Audit export summary: %" JSON_INTEGER_FORMAT " records from %s to %s, %s%s\n",
          json_integer_value(json_object_get(sum, "records")), from, to,
          json_is_string(json_object_get(sum, "tenant")) ? "tenant " : "all tenants",
          jstr_or(sum, "tenant", ""));

  fprintf(o, "\nUsage by tenant, key version, operation and outcome (from the records)\n");
  rows = json_array();
  json_array_foreach(json_object_get(sum, "counts"), i, e)
  {
    json_array_append_new(
        rows, json_pack("[s,o,s,s,o]", jstr_or(e, "tenant", ""),
                        sfmt("%" JSON_INTEGER_FORMAT,
                             json_integer_value(json_object_get(e, "kek_version"))),
                        jstr_or(e, "op", ""), jstr_or(e, "outcome", ""),
                        sfmt("%" JSON_INTEGER_FORMAT,
                             json_integer_value(json_object_get(e, "count")))));
  }
  table_print(o, ch, 5, rows);
  json_decref(rows);

  fprintf(o, "\nWho accessed which session's key (session: keyed HMAC, or the id asked for)\n");
  rows = json_array();
  json_array_foreach(json_object_get(sum, "session_access"), i, e)
  {
    json_array_append_new(
        rows, json_pack("[s,s,s,s,s,o]", jstr_or(e, "session", jstr_or(e, "session_hmac", "")),
                        jstr_or(e, "tenant", ""), jstr_or(e, "principal", ""),
                        jstr_or(e, "op", ""), jstr_or(e, "outcome", ""),
                        sfmt("%" JSON_INTEGER_FORMAT,
                             json_integer_value(json_object_get(e, "count")))));
  }
  table_print(o, sh, 6, rows);
  json_decref(rows);

  fprintf(o, "\nKey state changes (from the keystore's history; AUDIT RECORD: the proven record "
             "of the call)\n");
  rows = json_array();
  json_array_foreach(json_object_get(sum, "state_changes"), i, e)
  {
    char appr[1024], ver[24], st[64], rq[24], rc[24];
    json_int_t v = json_integer_value(json_object_get(e, "version"));
    json_int_t q = json_integer_value(json_object_get(e, "request_id"));
    json_int_t r = json_integer_value(json_object_get(e, "receipt_id"));
    approvers_text(e, appr, sizeof(appr));
    snprintf(ver, sizeof(ver), v == 0 ? "tenant" : "%" JSON_INTEGER_FORMAT, v);
    snprintf(st, sizeof(st), "%s -> %s", jstr_or(e, "old_state", "")[0] ? jstr_or(e, "old_state", "") : "(new)",
             jstr_or(e, "new_state", ""));
    snprintf(rq, sizeof(rq), q ? "%" JSON_INTEGER_FORMAT : "-", q);
    snprintf(rc, sizeof(rc), r ? "%" JSON_INTEGER_FORMAT : "-", r);
    json_array_append_new(rows, json_pack("[s,s,s,s,s,s,s,s,s,s]", jstr_or(e, "time", ""),
                                          jstr_or(e, "tenant", ""), ver, jstr_or(e, "event", ""),
                                          st, jstr_or(e, "actor", ""), appr[0] ? appr : "-", rq,
                                          rc, jstr_or(e, "audit_check", "")));
  }
  table_print(o, kh, 10, rows);
  json_decref(rows);
  if (json_is_true(json_object_get(sum, "state_changes_truncated"))) {
    fprintf(o, "WARNING: more state changes than one export holds: narrow the period\n");
  }
}

/* ---- export ------------------------------------------------------------------------ */

static const char csv_header[] =
    "index,time,principal,peer,op,tenant,kek_version,session,outcome,status,record,proof";
static const char *const csv_cols[] = {"time", "principal", "peer", "op", "tenant"};

static void
csv_summary(FILE *o, json_t *sum, uint64_t tree_size, const char *note)
{
  size_t k;
  json_t *e;
  /* After the records, each section after a blank line and its own header row. */
  fprintf(o, "\ncheckpoint,tree_size,note\ncheckpoint,%" PRIu64 ",", tree_size);
  csv_field(o, note);
  fprintf(o, "\n\nsummary,tenant,kek_version,op,outcome,count\n");
  json_array_foreach(json_object_get(sum, "counts"), k, e)
  {
    fprintf(o, "summary,");
    csv_field(o, jstr_or(e, "tenant", ""));
    fprintf(o, ",%" JSON_INTEGER_FORMAT ",", json_integer_value(json_object_get(e, "kek_version")));
    csv_field(o, jstr_or(e, "op", ""));
    fputc(',', o);
    csv_field(o, jstr_or(e, "outcome", ""));
    fprintf(o, ",%" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(e, "count")));
  }
  fprintf(o, "\nsession_access,session_hmac,session,tenant,principal,op,outcome,count\n");
  json_array_foreach(json_object_get(sum, "session_access"), k, e)
  {
    const char *cols[] = {"session_hmac", "session", "tenant", "principal", "op", "outcome"};
    fprintf(o, "session_access");
    for (size_t c = 0; c < 6; c++) {
      fputc(',', o);
      csv_field(o, jstr_or(e, cols[c], ""));
    }
    fprintf(o, ",%" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(e, "count")));
  }
  fprintf(o, "\nstate_change,time,tenant,version,event,old_state,new_state,actor,approvers,"
             "request_id,requested,receipt_id,executed_by,source,audit_op,audit_index,"
             "audit_check\n");
  json_array_foreach(json_object_get(sum, "state_changes"), k, e)
  {
    char appr[1024];
    json_t *ai = json_object_get(e, "audit_index");
    approvers_text(e, appr, sizeof(appr));
    fprintf(o, "state_change,");
    csv_field(o, jstr_or(e, "time", ""));
    fputc(',', o);
    csv_field(o, jstr_or(e, "tenant", ""));
    fprintf(o, ",%" JSON_INTEGER_FORMAT ",", json_integer_value(json_object_get(e, "version")));
    const char *cols[] = {"event", "old_state", "new_state", "actor"};
    for (size_t c = 0; c < 4; c++) {
      csv_field(o, jstr_or(e, cols[c], ""));
      fputc(',', o);
    }
    csv_field(o, appr);
    fprintf(o, ",%" JSON_INTEGER_FORMAT ",", json_integer_value(json_object_get(e, "request_id")));
    csv_field(o, jstr_or(e, "requested", ""));
    fprintf(o, ",%" JSON_INTEGER_FORMAT ",", json_integer_value(json_object_get(e, "receipt_id")));
    csv_field(o, jstr_or(e, "executed_by", ""));
    fputc(',', o);
    csv_field(o, jstr_or(e, "source", ""));
    fputc(',', o);
    csv_field(o, jstr_or(e, "audit_op", ""));
    if (json_is_integer(ai)) {
      fprintf(o, ",%" JSON_INTEGER_FORMAT ",", json_integer_value(ai));
    } else {
      fputs(",,", o);
    }
    csv_field(o, jstr_or(e, "audit_check", ""));
    fputc('\n', o);
  }
  if (json_is_true(json_object_get(sum, "state_changes_truncated"))) {
    fprintf(o, "state_change,TRUNCATED: narrow the period\n");
  }
}

static void
csv_record(FILE *o, const Tkms__AuditRecordProof *p, json_t *rec)
{
  char b64[48], ver[24];
  const char *sess = rec_session(rec);
  rec_version(rec, ver, sizeof(ver));
  fprintf(o, "%" PRIu64 ",", p->index);
  for (size_t k = 0; k < sizeof(csv_cols) / sizeof(csv_cols[0]); k++) {
    csv_field(o, jstr_or(rec, csv_cols[k], ""));
    fputc(',', o);
  }
  fprintf(o, "%s,", ver);
  csv_field(o, sess != NULL ? sess : "");
  fputc(',', o);
  csv_field(o, jstr_or(rec, "outcome", ""));
  fputc(',', o);
  csv_field(o, jstr_or(rec, "status", ""));
  fputc(',', o);
  csv_field(o, p->record);
  fputs(",\"", o);
  for (size_t k = 0; k < p->n_proof; k++) {
    kms_b64_encode(b64, sizeof(b64), p->proof[k].data, p->proof[k].len);
    fprintf(o, "%s%s", k > 0 ? ";" : "", b64);
  }
  fputs("\"\n", o);
}

static void
jsonl_record(FILE *o, const Tkms__AuditRecordProof *p)
{
  char b64[48];
  /* The record verbatim: verify-export hashes exactly these bytes. */
  fprintf(o, "{\"index\":%" PRIu64 ",\"record\":%s,\"proof\":[", p->index, p->record);
  for (size_t k = 0; k < p->n_proof; k++) {
    kms_b64_encode(b64, sizeof(b64), p->proof[k].data, p->proof[k].len);
    fprintf(o, "%s\"%s\"", k > 0 ? "," : "", b64);
  }
  fprintf(o, "]}\n");
}

static int
cmd_export(const char *config, int argc, char **argv)
{
  static const struct option longopts[] = {
      {"from", required_argument, NULL, 'f'},   {"to", required_argument, NULL, 't'},
      {"tenant", required_argument, NULL, 'T'}, {"session", required_argument, NULL, 's'},
      {"op", required_argument, NULL, 'o'},     {"format", required_argument, NULL, 'F'},
      {"out", required_argument, NULL, 'O'},    {"limit", required_argument, NULL, 'l'},
      {"quiet", no_argument, NULL, 'q'},        {NULL, 0, NULL, 0},
  };
  Tkms__ExportAuditRequest m;
  const char *format = "jsonl", *out_path = NULL;
  tk_client *c = NULL;
  Tkms__Response *resp = NULL;
  FILE *o = stdout;
  struct sumb b;
  json_t *changes = json_array(), *sum = NULL;
  char err[512], *token = NULL, *note = NULL;
  int opt, rc = 2, r;
  bool csv = false, have_from = false, have_to = false, truncated = false, quiet = false;
  bool records_out = true;

  if (sumb_init(&b) != 0 || changes == NULL) {
    fprintf(stderr, "kmsctl: out of memory\n");
    goto out;
  }
  tkms__export_audit_request__init(&m);
  optind = 0;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case 'f':
    case 't': {
      int64_t v = 0;
      if (kms_time_parse(optarg, &v) != 0) {
        fprintf(stderr,
                "kmsctl: --%s %s: not a time (ms since the epoch, YYYY-MM-DD or "
                "YYYY-MM-DDTHH:MM:SSZ)\n",
                opt == 'f' ? "from" : "to", optarg);
        goto out;
      }
      if (opt == 'f') {
        m.from_ms = v;
        have_from = true;
      } else {
        m.to_ms = v;
        have_to = true;
      }
      break;
    }
    case 'T':
      m.tenant_id = optarg;
      break;
    case 's':
      m.session_id = optarg;
      break;
    case 'o':
      m.operation = optarg;
      break;
    case 'F':
      format = optarg;
      break;
    case 'O':
      out_path = optarg;
      break;
    case 'l':
      m.limit = (uint32_t)strtoul(optarg, NULL, 10);
      break;
    case 'q':
      quiet = true;
      break;
    default:
      audit_usage(stderr);
      goto out;
    }
  }
  if (!have_from || !have_to || optind != argc) {
    fprintf(stderr, "kmsctl: audit export needs --from and --to\n");
    audit_usage(stderr);
    goto out;
  }
  if (strcmp(format, "jsonl") != 0 && strcmp(format, "csv") != 0) {
    fprintf(stderr, "kmsctl: --format %s: jsonl or csv\n", format);
    goto out;
  }
  if (m.to_ms <= m.from_ms) {
    fprintf(stderr, "kmsctl: --to must be after --from (the period is [from, to))\n");
    goto out;
  }
  if (m.operation != NULL && m.operation[0] != '\0' && !kms_auditsum_known_op(m.operation)) {
    fprintf(stderr, "kmsctl: --op %s: not an operation (e.g. GetSessionKey, RotateKey, "
                    "ExportAudit; see docs/AUDIT.md)\n",
            m.operation);
    goto out;
  }
  csv = strcmp(format, "csv") == 0;
  /* On a terminal without --out: the summary as tables, not pages of proofs. */
  records_out = out_path != NULL || !isatty(STDOUT_FILENO);
  if (config == NULL) {
    fprintf(stderr, "kmsctl: audit export needs --config FILE or $TKMS_CONFIG\n");
    goto out;
  }
  if (tk_client_new_from_file(&c, config, err, sizeof(err)) != TK_OK) {
    fprintf(stderr, "kmsctl: %s\n", err);
    rc = 1;
    goto out;
  }
  if (out_path != NULL && (o = fopen(out_path, "w")) == NULL) {
    fprintf(stderr, "kmsctl: %s: cannot write\n", out_path);
    o = stdout;
    goto out;
  }
  if (!records_out) {
    o = NULL;
  }
  if (csv && o != NULL) {
    fprintf(o, "%s\n", csv_header);
  }
  for (bool first = true;; first = false) {
    r = tk_audit_export_page(c, &m, &resp);
    if (r != TK_OK) {
      char msg[256] = "";
      tk_client_last_message(c, msg, sizeof(msg));
      fprintf(stderr, "kmsctl: audit export: %s%s%s\n", tk_strerror(r), msg[0] ? ": " : "", msg);
      rc = r == TK_EINVAL ? 2 : 1;
      goto out;
    }
    Tkms__ExportAuditResponse *x = resp->export_audit;
    if (first) {
      /* Every later page is proven against this same checkpoint. */
      m.tree_size = x->tree_size;
      note = strdup(x->checkpoint);
      for (size_t i = 0; i < x->n_state_changes; i++) {
        json_t *cj = change_json(x->state_changes[i]);
        if (cj == NULL || json_array_append_new(changes, cj) != 0) {
          /* Dropping one silently would make the summary lie by omission. */
          fprintf(stderr, "kmsctl: audit export: state change %zu is not valid text\n", i + 1);
          rc = 1;
          goto out;
        }
      }
      truncated = x->state_changes_truncated;
      if (!csv && o != NULL) {
        json_t *h = json_pack("{s:s,s:I,s:s}", "type", "checkpoint", "tree_size",
                              (json_int_t)x->tree_size, "note", x->checkpoint);
        char *hs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
        fprintf(o, "%s\n", hs != NULL ? hs : "");
        free(hs);
        json_decref(h);
      }
    }
    for (size_t i = 0; i < x->n_records; i++) {
      const Tkms__AuditRecordProof *p = x->records[i];
      json_t *rec = json_loads(p->record, 0, NULL);
      if (rec == NULL || sumb_add(&b, p->index, rec) != 0) {
        json_decref(rec);
        fprintf(stderr, "kmsctl: audit export: record %" PRIu64 " is not JSON\n", p->index);
        rc = 1;
        goto out;
      }
      if (o != NULL && csv) {
        csv_record(o, p, rec);
      } else if (o != NULL) {
        jsonl_record(o, p);
      }
      json_decref(rec);
    }
    free(token);
    token = x->next_page_token != NULL && x->next_page_token[0] != '\0'
                ? strdup(x->next_page_token)
                : NULL;
    tk_client_response_free(resp);
    resp = NULL;
    if (token == NULL) {
      break;
    }
    m.page_token = token;
  }
  crosscheck(&b, changes, m.from_ms);
  sum = summary_new(&b, &m, changes, truncated);
  changes = NULL;
  if (sum == NULL) {
    fprintf(stderr, "kmsctl: out of memory\n");
    rc = 1;
    goto out;
  }
  if (o != NULL && csv) {
    csv_summary(o, sum, m.tree_size, note != NULL ? note : "");
  } else if (o != NULL) {
    char *ss = json_dumps(sum, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fprintf(o, "%s\n", ss != NULL ? ss : "");
    free(ss);
  }
  if (out_path != NULL) {
    printf("exported %" PRIu64 " records to %s (tree size %" PRIu64 ")\n", b.n_records, out_path,
           m.tree_size);
  }
  if (!records_out || (out_path != NULL && !quiet)) {
    if (!records_out) {
      printf("(records not shown on a terminal: --out FILE or a pipe writes the %s export)\n\n",
             format);
    } else {
      printf("\n");
    }
    print_summary_tables(stdout, sum);
  }
  rc = 0;
out:
  tk_client_response_free(resp);
  tk_client_free(c);
  if (o != stdout && o != NULL && fclose(o) != 0 && rc == 0) {
    rc = 2;
  }
  free(token);
  free(note);
  sumb_free(&b);
  json_decref(changes);
  json_decref(sum);
  return rc;
}

/* ---- verify-export ---------------------------------------------------------------- */

/*
 * proof_ok checks one exported record: its seq is |index| and its inclusion
 * proof (base64 hashes) leads from its leaf hash to |cp|'s root.
 */
static bool
proof_ok(const struct kms_checkpoint *cp, uint64_t index, const char *rec, size_t rec_len,
         const char *const *b64, size_t n_b64)
{
  uint8_t lh[KMS_MERKLE_HASH_LEN], path[KMS_MERKLE_MAX_PROOF][KMS_MERKLE_HASH_LEN];
  uint64_t seq = UINT64_MAX;

  if (n_b64 > KMS_MERKLE_MAX_PROOF || kms_auditlog_parse_seq(rec, rec_len, &seq) != 0 ||
      seq != index) {
    return false;
  }
  for (size_t i = 0; i < n_b64; i++) {
    size_t got = 0;
    if (b64[i] == NULL ||
        kms_b64_decode(path[i], KMS_MERKLE_HASH_LEN, &got, b64[i], strlen(b64[i])) != KMS_OK ||
        got != KMS_MERKLE_HASH_LEN) {
      return false;
    }
  }
  kms_merkle_leaf_hash(lh, (const uint8_t *)rec, rec_len);
  return kms_merkle_inclusion_verify(seq, cp->size, lh,
                                     (const uint8_t (*)[KMS_MERKLE_HASH_LEN])path, n_b64,
                                     cp->root) == KMS_OK;
}

static bool
checkpoint_ok(const struct kms_note_vkey *k, const char *note, struct kms_checkpoint *cp)
{
  size_t text_len = 0;
  return kms_note_verify(note, strlen(note), k, &text_len) == KMS_OK &&
         kms_checkpoint_parse(cp, note, text_len) == KMS_OK && strcmp(cp->origin, k->name) == 0;
}

/*
 * check_changes verifies that every state change naming an audit record names
 * a verified record of this export that is its call: |audit_op| by the
 * requester (dual control) or the actor, for its tenant.
 */
static int
check_changes(struct sumb *b, json_t *changes, size_t *out_backed, char *why, size_t why_len)
{
  size_t i;
  json_t *c;
  *out_backed = 0;
  json_array_foreach(changes, i, c)
  {
    json_t *ai = json_object_get(c, "audit_index");
    if (!json_is_integer(ai)) {
      continue;
    }
    bool dual = json_integer_value(json_object_get(c, "request_id")) != 0;
    const char *who = jstr_or(c, dual ? "actor" : "executed_by", "");
    const char *op = jstr_or(c, "audit_op", ""), *tenant = jstr_or(c, "tenant", "");
    bool found = false;
    for (size_t k = 0; k < b->n_recs && !found; k++) {
      const struct kms_auditsum_rec *r = &b->recs[k];
      found = r->index == (uint64_t)json_integer_value(ai) && strcmp(r->op, op) == 0 &&
              strcmp(r->principal, who) == 0 && r->tenant != NULL &&
              strcmp(r->tenant, tenant) == 0;
    }
    if (!found) {
      snprintf(why, why_len,
               "state change %zu (%s of %s) names record %" JSON_INTEGER_FORMAT
               ", which is not a verified %s by %s in this export",
               i + 1, jstr_or(c, "event", ""), tenant, json_integer_value(ai), op, who);
      return -1;
    }
    (*out_backed)++;
  }
  return 0;
}

/* check_counts compares a summary's counts and session_access with the verified records'. */
static int
check_counts(struct sumb *b, json_t *counts, json_t *sessions, const char *session, char *why,
             size_t why_len)
{
  json_t *want_c = summary_array(b->counts, count_names, 4, NULL);
  json_t *want_s = summary_array(b->sessions, session_names, 5, session);
  int r = 0;
  if (!json_equal(want_c, counts)) {
    snprintf(why, why_len, "the summary's counts are not those of the records");
    r = -1;
  } else if (!json_equal(want_s, sessions)) {
    snprintf(why, why_len, "the summary's session access is not that of the records");
    r = -1;
  }
  json_decref(want_c);
  json_decref(want_s);
  return r;
}

static bool
is_blank_row(const struct kms_csv_row *row)
{
  return row->n == 1 && row->f[0][0] == '\0';
}

/* csv_row_matches_record: the columns a spreadsheet shows say what the proven record says. */
static bool
csv_row_matches_record(const struct kms_csv_row *row, json_t *rec)
{
  char ver[24];
  const char *sess = rec_session(rec);
  for (size_t k = 0; k < sizeof(csv_cols) / sizeof(csv_cols[0]); k++) {
    if (strcmp(row->f[1 + k], jstr_or(rec, csv_cols[k], "")) != 0) {
      return false;
    }
  }
  rec_version(rec, ver, sizeof(ver));
  return strcmp(row->f[6], ver) == 0 && strcmp(row->f[7], sess != NULL ? sess : "") == 0 &&
         strcmp(row->f[8], jstr_or(rec, "outcome", "")) == 0 &&
         strcmp(row->f[9], jstr_or(rec, "status", "")) == 0;
}

/*
 * verify_csv checks a csv export: the checkpoint section's signature, every
 * record row's proof and its columns, then the summary sections against the
 * verified records. Returns the exit code; prints the verdict.
 */
static int
verify_csv(const char *buf, size_t len, const struct kms_note_vkey *k)
{
  struct kms_csv_row *rows = NULL;
  size_t n = 0, cap = 0, pos = 0, n_rec_rows = 0;
  struct kms_checkpoint cp;
  struct sumb b;
  json_t *counts = json_array(), *sessions = json_array(), *changes = json_array();
  const char *note = NULL, *session = NULL;
  char why[512] = "";
  size_t bad_row = 0, backed = 0;
  int rc = 1, x;

  if (sumb_init(&b) != 0) {
    goto out;
  }
  for (;;) {
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 256;
      void *p = realloc(rows, ncap * sizeof(*rows));
      if (p == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        rc = 2;
        goto out;
      }
      rows = p;
      cap = ncap;
    }
    x = kms_csv_next(buf, len, &pos, &rows[n]);
    if (x == 1) {
      break;
    }
    if (x < 0) {
      printf("FAILED at row %zu: not CSV (an unclosed or stray quote)\n", n + 1);
      goto out;
    }
    n++;
  }
  /* Row 1 is the header; the records run to the first blank row. */
  if (n == 0 || rows[0].n != 12 || strncmp(buf, csv_header, strlen(csv_header)) != 0) {
    printf("FAILED: not a kmsctl csv export (no header row)\n");
    goto out;
  }
  size_t i = 1;
  while (i < n && !is_blank_row(&rows[i])) {
    i++;
  }
  n_rec_rows = i - 1;
  for (size_t j = i; j < n; j++) {
    const struct kms_csv_row *r = &rows[j];
    if (is_blank_row(r)) {
      continue;
    }
    if (strcmp(r->f[0], "checkpoint") == 0 && r->n == 3 && strcmp(r->f[1], "tree_size") != 0) {
      if (note != NULL) {
        printf("FAILED at row %zu: a second checkpoint\n", j + 1);
        goto out;
      }
      note = r->f[2];
    } else if (strcmp(r->f[0], "summary") == 0 && r->n == 6 && strcmp(r->f[1], "tenant") != 0) {
      json_array_append_new(counts,
                            json_pack("{s:s,s:I,s:s,s:s,s:I}", "tenant", r->f[1], "kek_version",
                                      (json_int_t)strtoll(r->f[2], NULL, 10), "op", r->f[3],
                                      "outcome", r->f[4], "count",
                                      (json_int_t)strtoll(r->f[5], NULL, 10)));
    } else if (strcmp(r->f[0], "session_access") == 0 && r->n == 8 &&
               strcmp(r->f[1], "session_hmac") != 0) {
      session = r->f[2][0] ? r->f[2] : NULL;
      json_array_append_new(
          sessions, json_pack("{s:s,s:o,s:s,s:s,s:s,s:s,s:I}", "session_hmac", r->f[1], "session",
                              session != NULL ? json_string(session) : json_null(), "tenant",
                              r->f[3], "principal", r->f[4], "op", r->f[5], "outcome", r->f[6],
                              "count", (json_int_t)strtoll(r->f[7], NULL, 10)));
    } else if (strcmp(r->f[0], "state_change") == 0 && r->n == 17 &&
               strcmp(r->f[1], "time") != 0) {
      json_array_append_new(
          changes, json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:o}", "tenant", r->f[2], "event", r->f[4],
                             "request_id", (json_int_t)strtoll(r->f[9], NULL, 10), "actor",
                             r->f[7], "executed_by", r->f[12], "audit_op", r->f[14],
                             "audit_index",
                             r->f[15][0] ? json_integer(strtoll(r->f[15], NULL, 10))
                                         : json_null()));
    } else if (strcmp(r->f[0], "checkpoint") != 0 && strcmp(r->f[0], "summary") != 0 &&
               strcmp(r->f[0], "session_access") != 0 && strcmp(r->f[0], "state_change") != 0) {
      printf("FAILED at row %zu: not part of an export\n", j + 1);
      goto out;
    }
  }
  if (note == NULL) {
    printf("FAILED: no checkpoint in the export\n");
    goto out;
  }
  if (!checkpoint_ok(k, note, &cp)) {
    printf("FAILED: the export's checkpoint is not signed by %s\n", k->name);
    goto out;
  }
  for (size_t j = 1; j <= n_rec_rows; j++) {
    struct kms_csv_row *r = &rows[j];
    const char *b64[KMS_MERKLE_MAX_PROOF + 1];
    size_t n_b64 = 0;
    char *end = NULL;
    json_t *rec = NULL;
    bool ok = r->n == 12 && r->f[0][0] != '\0';
    uint64_t index = ok ? strtoull(r->f[0], &end, 10) : 0;
    ok = ok && end != NULL && *end == '\0';
    for (char *p = ok && r->f[11][0] ? r->f[11] : NULL, *save = NULL;
         ok && (p = strtok_r(p, ";", &save)) != NULL; p = NULL) {
      ok = n_b64 < KMS_MERKLE_MAX_PROOF;
      if (ok) {
        b64[n_b64++] = p;
      }
    }
    ok = ok && proof_ok(&cp, index, r->f[10], strlen(r->f[10]), b64, n_b64);
    if (ok) {
      rec = json_loads(r->f[10], 0, NULL);
      ok = rec != NULL && csv_row_matches_record(r, rec) && sumb_add(&b, index, rec) == 0;
    }
    json_decref(rec);
    if (!ok) {
      bad_row = j + 1;
      break;
    }
  }
  if (bad_row != 0) {
    printf("FAILED at row %zu: the record is not included in the signed checkpoint, or the row's "
           "columns differ from it: altered, or not from this log\n",
           bad_row);
    goto out;
  }
  if (check_counts(&b, counts, sessions, session, why, sizeof(why)) != 0 ||
      check_changes(&b, changes, &backed, why, sizeof(why)) != 0) {
    printf("FAILED: %s\n", why);
    goto out;
  }
  printf("OK: %" PRIu64 " records verified by inclusion proofs against the checkpoint of size "
         "%" PRIu64 " signed by %s; summary counts checked against them; %zu of %zu state "
         "change(s) checked against the record of their call (the rest: see audit_check)\n",
         b.n_records, cp.size, k->name, backed, json_array_size(changes));
  rc = 0;
out:
  for (size_t j = 0; j < n; j++) {
    kms_csv_row_free(&rows[j]);
  }
  free(rows);
  sumb_free(&b);
  json_decref(counts);
  json_decref(sessions);
  json_decref(changes);
  return rc;
}

/* verify_jsonl checks a jsonl export; returns the exit code and prints the verdict. */
static int
verify_jsonl(char *buf, size_t len, const struct kms_note_vkey *k)
{
  struct kms_checkpoint cp;
  struct sumb b;
  json_t *summary = NULL;
  uint64_t lineno = 0;
  bool have_cp = false;
  char why[512] = "";
  size_t backed = 0;
  int rc = 1;

  if (sumb_init(&b) != 0) {
    return 2;
  }
  for (char *line = buf, *next; line < buf + len; line = next) {
    char *nl = memchr(line, '\n', (size_t)(buf + len - line));
    size_t ll = nl != NULL ? (size_t)(nl - line) : (size_t)(buf + len - line);
    next = line + ll + 1;
    line[ll] = '\0';
    lineno++;
    if (ll == 0) {
      continue;
    }
    json_t *j = json_loadb(line, ll, 0, NULL);
    const char *type = jstr_or(j, "type", NULL);
    if (type != NULL && strcmp(type, "checkpoint") == 0 && !have_cp) {
      if (!checkpoint_ok(k, jstr_or(j, "note", ""), &cp)) {
        printf("FAILED: the export's checkpoint is not signed by %s\n", k->name);
        json_decref(j);
        goto out;
      }
      have_cp = true;
    } else if (type != NULL && strcmp(type, "summary") == 0 && summary == NULL) {
      summary = j;
      continue;
    } else if (type == NULL && strncmp(line, "{\"index\":", 9) == 0) {
      const char *b64[KMS_MERKLE_MAX_PROOF + 1];
      char *rs = strstr(line, ",\"record\":"), *re = NULL;
      for (char *p = line; (p = strstr(p, ",\"proof\":[")) != NULL; p++) {
        re = p;
      }
      json_t *idx = json_object_get(j, "index"), *proof = json_object_get(j, "proof");
      bool ok = have_cp && j != NULL && rs != NULL && re != NULL && re > rs &&
                json_is_integer(idx) && json_is_array(proof) &&
                json_array_size(proof) <= KMS_MERKLE_MAX_PROOF;
      for (size_t i = 0; ok && i < json_array_size(proof); i++) {
        b64[i] = json_string_value(json_array_get(proof, i));
      }
      if (ok) {
        rs += strlen(",\"record\":");
        ok = proof_ok(&cp, (uint64_t)json_integer_value(idx), rs, (size_t)(re - rs), b64,
                      json_array_size(proof));
        /* Counted from the very bytes proven, not from the line's parse. */
        json_t *rec = ok ? json_loadb(rs, (size_t)(re - rs), 0, NULL) : NULL;
        ok = rec != NULL && sumb_add(&b, (uint64_t)json_integer_value(idx), rec) == 0;
        json_decref(rec);
      }
      if (!ok) {
        printf("FAILED at line %" PRIu64 ": %s\n", lineno,
               have_cp ? "not included in the signed checkpoint: altered, or not from this log"
                       : "no checkpoint before the records");
        json_decref(j);
        goto out;
      }
      /* sumb keeps the record it needs (json_array_append), so |j| may go. */
    } else {
      printf("FAILED at line %" PRIu64 ": not part of an export\n", lineno);
      json_decref(j);
      goto out;
    }
    json_decref(j);
  }
  if (!have_cp) {
    printf("FAILED: no checkpoint in the export\n");
    goto out;
  }
  if (summary != NULL &&
      (check_counts(&b, json_object_get(summary, "counts"),
                    json_object_get(summary, "session_access"), jstr_or(summary, "session", NULL),
                    why, sizeof(why)) != 0 ||
       check_changes(&b, json_object_get(summary, "state_changes"), &backed, why,
                     sizeof(why)) != 0)) {
    printf("FAILED: %s\n", why);
    goto out;
  }
  printf("OK: %" PRIu64 " records verified by inclusion proofs against the checkpoint of size "
         "%" PRIu64 " signed by %s",
         b.n_records, cp.size, k->name);
  if (summary != NULL) {
    printf("; summary counts checked against them; %zu of %zu state change(s) checked against "
           "the record of their call (the rest: see audit_check)",
           backed, json_array_size(json_object_get(summary, "state_changes")));
  }
  printf("\n");
  rc = 0;
out:
  json_decref(summary);
  sumb_free(&b);
  return rc;
}

/* cmd_verify_export checks an export (jsonl or csv, by its first bytes) offline. */
static int
cmd_verify_export(int argc, char **argv)
{
  static const struct option longopts[] = {
      {"key", required_argument, NULL, 'k'},
      {NULL, 0, NULL, 0},
  };
  const char *key_arg = NULL;
  struct kms_note_vkey k;
  char *buf = NULL, why[512];
  size_t len = 0;
  int opt, rc;

  optind = 0;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (opt != 'k') {
      audit_usage(stderr);
      return 2;
    }
    key_arg = optarg;
  }
  if (key_arg == NULL || optind + 1 != argc) {
    audit_usage(stderr);
    return 2;
  }
  if (load_vkey(&k, key_arg) != KMS_OK) {
    fprintf(stderr, "kmsctl: --key %s: not a verifier key (or a file holding one)\n", key_arg);
    return 2;
  }
  if (kms_auditlog_read_file(argv[optind], &buf, &len, why, sizeof(why)) != KMS_OK) {
    fprintf(stderr, "kmsctl: %s\n", why);
    return 2;
  }
  rc = strncmp(buf, "index,", 6) == 0 ? verify_csv(buf, len, &k) : verify_jsonl(buf, len, &k);
  free(buf);
  return rc;
}

/* cmd_summary prints the summary of an export file (jsonl) as tables. */
static int
cmd_summary(int argc, char **argv)
{
  char *buf = NULL, why[512];
  size_t len = 0;
  json_t *sum = NULL;

  if (argc != 2) {
    audit_usage(stderr);
    return 2;
  }
  if (kms_auditlog_read_file(argv[1], &buf, &len, why, sizeof(why)) != KMS_OK) {
    fprintf(stderr, "kmsctl: %s\n", why);
    return 2;
  }
  while (len > 0 && buf[len - 1] == '\n') {
    buf[--len] = '\0';
  }
  char *last = strrchr(buf, '\n');
  sum = json_loads(last != NULL ? last + 1 : buf, 0, NULL);
  free(buf);
  if (sum == NULL || strcmp(jstr_or(sum, "type", ""), "summary") != 0) {
    fprintf(stderr, "kmsctl: %s: no summary line at the end (a jsonl export?)\n", argv[1]);
    json_decref(sum);
    return 2;
  }
  print_summary_tables(stdout, sum);
  json_decref(sum);
  return 0;
}

int
kmsctl_audit(const char *config, int argc, char **argv)
{
  if (argc < 1) {
    audit_usage(stderr);
    return 2;
  }
  if (strcmp(argv[0], "verify") == 0) {
    return cmd_verify(argc, argv);
  }
  if (strcmp(argv[0], "verifier-key") == 0) {
    return cmd_verifier_key(argc, argv);
  }
  if (strcmp(argv[0], "export") == 0) {
    return cmd_export(config, argc, argv);
  }
  if (strcmp(argv[0], "verify-export") == 0) {
    return cmd_verify_export(argc, argv);
  }
  if (strcmp(argv[0], "summary") == 0) {
    return cmd_summary(argc, argv);
  }
  if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0) {
    audit_usage(stdout);
    return 0;
  }
  audit_usage(stderr);
  return 2;
}
