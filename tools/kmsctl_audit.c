/* kmsctl audit: offline verification of audit logs, checkpoints and exports; export over RPC. */
#include "kmsctl_audit.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "kms_auditlog.h"
#include "kms_err.h"
#include "kms_merkle.h"
#include "kms_note.h"
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
          "              [--op OP] [--format jsonl|csv] [--out FILE]\n"
          "       kmsctl audit verify-export FILE --key VKEY\n"
          "\n"
          "verify     recomputes the Merkle tree of the log FILEs (in order: audit-*.jsonl),\n"
          "           checks every signed checkpoint (default: DIR/checkpoints beside the first\n"
          "           FILE) and every TRUSTED checkpoint kept elsewhere, and names the first\n"
          "           record edited, inserted, removed or reordered, or a log cut short.\n"
          "           VKEY is a note verifier key, or a file holding one.\n"
          "           Exit 0: verified; 1: tampering or a bad checkpoint; 2: usage or I/O.\n"
          "verifier-key  prints the verifier key kmsd wrote into its audit directory DIR.\n"
          "export     asks kmsd (auditor principal) for the records of a period, each with its\n"
          "           inclusion proof against one signed checkpoint, then a usage summary. T is\n"
          "           ms since the epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC; --to exclusive).\n"
          "           A tenant-bound auditor must give --tenant (its own).\n"
          "verify-export  checks a jsonl export offline: the checkpoint's signature and every\n"
          "           record's inclusion proof. Exit 0: verified; 1: not.\n");
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

/* parse_when accepts ms since the epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC). */
static int
parse_when(const char *s, int64_t *out)
{
  struct tm tm;
  const char *end = NULL;
  if (s[0] != '\0' && strspn(s, "0123456789") == strlen(s) && strlen(s) <= 15) {
    *out = (int64_t)strtoll(s, NULL, 10);
    return 1;
  }
  memset(&tm, 0, sizeof(tm));
  end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (end == NULL || *end != '\0') {
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%d", &tm);
  }
  if (end == NULL || *end != '\0') {
    return 0;
  }
  time_t t = timegm(&tm);
  if (t < 0) {
    return 0;
  }
  *out = (int64_t)t * 1000;
  return 1;
}

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

/* count_add adds one to counts[key] (a JSON object used as a map). */
static void
count_add(json_t *counts, const char *key)
{
  json_t *n = json_object_get(counts, key);
  json_object_set_new(counts, key, json_integer(n != NULL ? json_integer_value(n) + 1 : 1));
}

/* summary_array turns "a\tb\tc..." -> count into [{names[0]:a,...,"count":n}]. */
static json_t *
summary_array(json_t *counts, const char *const *names, size_t n_names)
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
    }
    free(copy);
    json_object_set(o, "count", val);
    json_array_append_new(arr, o);
  }
  return arr;
}

static int
cmd_export(const char *config, int argc, char **argv)
{
  static const struct option longopts[] = {
      {"from", required_argument, NULL, 'f'},   {"to", required_argument, NULL, 't'},
      {"tenant", required_argument, NULL, 'T'}, {"session", required_argument, NULL, 's'},
      {"op", required_argument, NULL, 'o'},     {"format", required_argument, NULL, 'F'},
      {"out", required_argument, NULL, 'O'},    {"limit", required_argument, NULL, 'l'},
      {NULL, 0, NULL, 0},
  };
  Tkms__ExportAuditRequest m;
  const char *format = "jsonl", *out_path = NULL;
  tk_client *c = NULL;
  Tkms__Response *resp = NULL;
  FILE *o = stdout;
  json_t *counts = json_object(), *sessions = json_object();
  char err[512], *token = NULL;
  uint64_t n_records = 0;
  int opt, rc = 2, r;
  bool csv = false, have_from = false, have_to = false;

  tkms__export_audit_request__init(&m);
  optind = 0;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case 'f':
    case 't': {
      int64_t v = 0;
      if (!parse_when(optarg, &v)) {
        fprintf(stderr, "kmsctl: --%s %s: not a time\n", opt == 'f' ? "from" : "to", optarg);
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
    default:
      audit_usage(stderr);
      goto out;
    }
  }
  if (!have_from || !have_to || optind != argc ||
      (strcmp(format, "jsonl") != 0 && strcmp(format, "csv") != 0)) {
    audit_usage(stderr);
    goto out;
  }
  csv = strcmp(format, "csv") == 0;
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
  if (csv) {
    fprintf(o, "index,time,principal,peer,op,tenant,kek_version,session,outcome,status,record,"
               "proof\n");
  }
  for (bool first = true;; first = false) {
    r = tk_audit_export_page(c, &m, &resp);
    if (r != TK_OK) {
      char msg[256] = "";
      tk_client_last_message(c, msg, sizeof(msg));
      fprintf(stderr, "kmsctl: audit export: %s%s%s\n", tk_strerror(r), msg[0] ? ": " : "", msg);
      rc = 1;
      goto out;
    }
    Tkms__ExportAuditResponse *x = resp->export_audit;
    if (first) {
      /* Every later page is proven against this same checkpoint. */
      m.tree_size = x->tree_size;
      if (!csv) {
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
      char b64[48], ver[24];
      json_t *kv = json_object_get(rec, "kek_version");
      snprintf(ver, sizeof(ver), "%" PRIu64, json_is_integer(kv) ? (uint64_t)json_integer_value(kv) : 0);
      const char *tenant = jstr_or(rec, "tenant", "-"), *op = jstr_or(rec, "op", "-");
      const char *outcome = jstr_or(rec, "outcome", "-"), *principal = jstr_or(rec, "principal", "-");
      const char *sess = jstr_or(rec, "session", NULL);
      if (sess == NULL) {
        sess = jstr_or(json_object_get(rec, "context"), "session_id", NULL);
      }
      char key[2048];
      snprintf(key, sizeof(key), "%s\t%s\t%s\t%s", tenant, ver, op, outcome);
      count_add(counts, key);
      if (sess != NULL) {
        snprintf(key, sizeof(key), "%s\t%s\t%s\t%s\t%s", sess, tenant, principal, op, outcome);
        count_add(sessions, key);
      }
      if (csv) {
        fprintf(o, "%" PRIu64 ",", p->index);
        const char *cols[] = {"time", "principal", "peer", "op", "tenant"};
        for (size_t k = 0; k < 5; k++) {
          csv_field(o, jstr_or(rec, cols[k], ""));
          fputc(',', o);
        }
        fprintf(o, "%s,", json_is_integer(kv) ? ver : "");
        csv_field(o, sess != NULL ? sess : "");
        fputc(',', o);
        csv_field(o, outcome);
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
      } else {
        /* The record verbatim: verify-export hashes exactly these bytes. */
        fprintf(o, "{\"index\":%" PRIu64 ",\"record\":%s,\"proof\":[", p->index, p->record);
        for (size_t k = 0; k < p->n_proof; k++) {
          kms_b64_encode(b64, sizeof(b64), p->proof[k].data, p->proof[k].len);
          fprintf(o, "%s\"%s\"", k > 0 ? "," : "", b64);
        }
        fprintf(o, "]}\n");
      }
      json_decref(rec);
      n_records++;
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
  {
    static const char *const cnames[] = {"tenant", "kek_version", "op", "outcome"};
    static const char *const snames[] = {"session_hmac", "tenant", "principal", "op", "outcome"};
    json_t *sum = json_pack(
        "{s:s,s:I,s:I,s:I,s:o,s:o,s:[s,s]}", "type", "summary", "records", (json_int_t)n_records,
        "from_ms", (json_int_t)m.from_ms, "to_ms", (json_int_t)m.to_ms, "counts",
        summary_array(counts, cnames, 4), "session_access", summary_array(sessions, snames, 5),
        "notes",
        "session ids appear as keyed HMACs (HMAC-SHA256(K, \"session_id\" 0x00 id)[:16]): "
        "match a known session with kmsctl audit export --session ID",
        "key state changes with actor and approver are in the keystore's history "
        "(kmsctl key list, receipt list), not in this export");
    char *ss = json_dumps(sum, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (csv) {
      /* After a blank line: the summary, for the ISO 27001 file (A.8.15). */
      fprintf(o, "\nsummary,tenant,kek_version,op,outcome,count\n");
      json_t *arr = json_object_get(sum, "counts"), *e;
      size_t k;
      json_array_foreach(arr, k, e)
      {
        fprintf(o, "summary,");
        csv_field(o, jstr_or(e, "tenant", ""));
        fprintf(o, ",%" JSON_INTEGER_FORMAT ",", json_integer_value(json_object_get(e, "kek_version")));
        csv_field(o, jstr_or(e, "op", ""));
        fputc(',', o);
        csv_field(o, jstr_or(e, "outcome", ""));
        fprintf(o, ",%" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(e, "count")));
      }
    } else {
      fprintf(o, "%s\n", ss != NULL ? ss : "");
    }
    free(ss);
    json_decref(sum);
  }
  if (out_path != NULL) {
    printf("exported %" PRIu64 " records to %s (tree size %" PRIu64 ")\n", n_records, out_path,
           m.tree_size);
  }
  rc = 0;
out:
  tk_client_response_free(resp);
  tk_client_free(c);
  if (o != stdout && fclose(o) != 0 && rc == 0) {
    rc = 2;
  }
  free(token);
  json_decref(counts);
  json_decref(sessions);
  return rc;
}

/* cmd_verify_export checks a jsonl export: checkpoint signature, then every inclusion proof. */
static int
cmd_verify_export(int argc, char **argv)
{
  static const struct option longopts[] = {
      {"key", required_argument, NULL, 'k'},
      {NULL, 0, NULL, 0},
  };
  const char *key_arg = NULL;
  struct kms_note_vkey k;
  struct kms_checkpoint cp;
  FILE *f = NULL;
  char *line = NULL;
  size_t cap = 0;
  uint64_t lineno = 0, n_ok = 0;
  bool have_cp = false;
  int opt, rc = 2;

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
  f = fopen(argv[optind], "rb");
  if (f == NULL) {
    fprintf(stderr, "kmsctl: %s: cannot read\n", argv[optind]);
    return 2;
  }
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0) {
    lineno++;
    if (line[len - 1] == '\n') {
      line[--len] = '\0';
    }
    if (len == 0) {
      continue;
    }
    json_t *j = json_loadb(line, (size_t)len, 0, NULL);
    const char *type = jstr_or(j, "type", NULL);
    if (type != NULL && strcmp(type, "checkpoint") == 0 && !have_cp) {
      const char *note = jstr_or(j, "note", "");
      size_t text_len = 0;
      if (kms_note_verify(note, strlen(note), &k, &text_len) != KMS_OK ||
          kms_checkpoint_parse(&cp, note, text_len) != KMS_OK || strcmp(cp.origin, k.name) != 0) {
        printf("FAILED: the export's checkpoint is not signed by %s\n", k.name);
        json_decref(j);
        rc = 1;
        goto out;
      }
      have_cp = true;
    } else if (type != NULL) {
      /* The summary: derived from the records, nothing to prove. */
    } else if (strncmp(line, "{\"index\":", 9) == 0) {
      uint8_t lh[KMS_MERKLE_HASH_LEN], path[KMS_MERKLE_MAX_PROOF][KMS_MERKLE_HASH_LEN];
      size_t n_path = 0;
      uint64_t seq = UINT64_MAX;
      char *rs = strstr(line, ",\"record\":");
      char *re = NULL;
      for (char *p = line; (p = strstr(p, ",\"proof\":[")) != NULL; p++) {
        re = p;
      }
      json_t *idx = json_object_get(j, "index"), *proof = json_object_get(j, "proof");
      bool ok = have_cp && j != NULL && rs != NULL && re != NULL && re > rs &&
                json_is_integer(idx) && json_is_array(proof) &&
                json_array_size(proof) <= KMS_MERKLE_MAX_PROOF;
      if (ok) {
        rs += strlen(",\"record\":");
        /* The record is leaf |index|: its own seq must say so too. */
        ok = kms_auditlog_parse_seq(rs, (size_t)(re - rs), &seq) == 0 &&
             seq == (uint64_t)json_integer_value(idx);
      }
      for (size_t i = 0; ok && i < json_array_size(proof); i++) {
        const char *b = json_string_value(json_array_get(proof, i));
        size_t got = 0;
        ok = b != NULL && kms_b64_decode(path[i], KMS_MERKLE_HASH_LEN, &got, b, strlen(b)) ==
                              KMS_OK && got == KMS_MERKLE_HASH_LEN;
        n_path = i + 1;
      }
      if (ok) {
        kms_merkle_leaf_hash(lh, (const uint8_t *)rs, (size_t)(re - rs));
        ok = kms_merkle_inclusion_verify(seq, cp.size, lh,
                                         (const uint8_t (*)[KMS_MERKLE_HASH_LEN])path, n_path,
                                         cp.root) == KMS_OK;
      }
      if (!ok) {
        printf("FAILED at line %" PRIu64 " (record %s): %s\n", lineno,
               seq != UINT64_MAX ? "as numbered" : "?",
               have_cp ? "not included in the signed checkpoint: altered, or not from this log"
                       : "no checkpoint before the records");
        json_decref(j);
        rc = 1;
        goto out;
      }
      n_ok++;
    } else {
      printf("FAILED at line %" PRIu64 ": not part of an export\n", lineno);
      json_decref(j);
      rc = 1;
      goto out;
    }
    json_decref(j);
  }
  if (!have_cp) {
    printf("FAILED: no checkpoint in the export\n");
    rc = 1;
    goto out;
  }
  printf("OK: %" PRIu64 " records verified by inclusion proofs against the checkpoint of size %" PRIu64
         " signed by %s\n",
         n_ok, cp.size, k.name);
  rc = 0;
out:
  free(line);
  fclose(f);
  return rc;
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
  if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0) {
    audit_usage(stdout);
    return 0;
  }
  audit_usage(stderr);
  return 2;
}
