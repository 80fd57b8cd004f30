/* Audit export summaries: matching key state changes to audit records, reading CSV exports. */
#include "kms_auditsum.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t
kms_auditsum_parse_time(const char *s)
{
  struct tm tm;
  unsigned ms = 0;
  const char *end;

  if (s == NULL || strlen(s) != 24 || s[19] != '.' || s[23] != 'Z') {
    return -1;
  }
  memset(&tm, 0, sizeof(tm));
  end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
  if (end != s + 19) {
    return -1;
  }
  for (int i = 20; i < 23; i++) {
    if (s[i] < '0' || s[i] > '9') {
      return -1;
    }
    ms = ms * 10 + (unsigned)(s[i] - '0');
  }
  time_t t = timegm(&tm);
  if (t < 0) {
    return -1;
  }
  return (int64_t)t * 1000 + ms;
}

static const char *const known_ops[] = {
    "Health",          "CreateTenant",   "GenerateDataKey",   "Decrypt",
    "RotateKey",       "ListKeys",       "DisableKey",        "EnableKey",
    "ScheduleDestruction", "CancelDestruction", "Approve",    "ListRequests",
    "ReEncrypt",       "ReEncryptBatch", "ListTenants",       "ListReceipts",
    "SetRotationPeriod", "OpenSession",  "GetSessionKey",     "CloseSession",
    "ShredSession",    "ListSessions",   "Backup",            "ExportAudit",
    "RootRotate",      "RootStatus",     "unknown",
};

bool
kms_auditsum_known_op(const char *op)
{
  for (size_t i = 0; op != NULL && i < sizeof(known_ops) / sizeof(known_ops[0]); i++) {
    if (strcmp(op, known_ops[i]) == 0) {
      return true;
    }
  }
  return false;
}

static bool
same(const char *a, const char *b)
{
  return a != NULL && b != NULL && strcmp(a, b) == 0;
}

long
kms_auditsum_match(struct kms_auditsum_rec *recs, size_t n, const char *op,
                   const char *principal, const char *tenant, int64_t at_ms)
{
  long best = -1;
  int64_t best_d = 0;

  for (size_t i = 0; i < n; i++) {
    const struct kms_auditsum_rec *r = &recs[i];
    if (r->used || !same(r->op, op) || !same(r->principal, principal) ||
        !same(r->tenant, tenant) || r->at_ms < at_ms - KMS_AUDITSUM_SLACK_BEFORE_MS ||
        r->at_ms > at_ms + KMS_AUDITSUM_SLACK_AFTER_MS) {
      continue;
    }
    int64_t d = r->at_ms >= at_ms ? r->at_ms - at_ms : at_ms - r->at_ms;
    if (best < 0 || d < best_d) {
      best = (long)i;
      best_d = d;
    }
  }
  if (best >= 0) {
    recs[best].used = true;
  }
  return best;
}

void
kms_csv_row_free(struct kms_csv_row *row)
{
  for (size_t i = 0; row->f != NULL && i < row->n; i++) {
    free(row->f[i]);
  }
  free(row->f);
  row->f = NULL;
  row->n = 0;
}

/* push appends |len| bytes of |s| as the next field. */
static int
push(struct kms_csv_row *row, size_t *cap, char *s)
{
  if (s == NULL) {
    return -1;
  }
  if (row->n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 16;
    char **p = realloc(row->f, ncap * sizeof(*p));
    if (p == NULL) {
      free(s);
      return -1;
    }
    row->f = p;
    *cap = ncap;
  }
  row->f[row->n++] = s;
  return 0;
}

int
kms_csv_next(const char *buf, size_t len, size_t *pos, struct kms_csv_row *out)
{
  size_t i = *pos, cap = 0;
  char *field = NULL;

  out->f = NULL;
  out->n = 0;
  if (i >= len) {
    return 1;
  }
  for (;;) {
    size_t flen = 0;
    field = malloc(len - i + 1);
    if (field == NULL) {
      goto bad;
    }
    if (i < len && buf[i] == '"') {
      i++;
      for (;;) {
        if (i >= len) {
          goto bad; /* a quote never closed */
        }
        if (buf[i] == '"') {
          if (i + 1 < len && buf[i + 1] == '"') {
            field[flen++] = '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        field[flen++] = buf[i++];
      }
      if (i < len && buf[i] != ',' && buf[i] != '\n' && buf[i] != '\r') {
        goto bad; /* text after the closing quote */
      }
    } else {
      while (i < len && buf[i] != ',' && buf[i] != '\n' && buf[i] != '\r') {
        if (buf[i] == '"') {
          goto bad; /* a quote inside an unquoted field */
        }
        field[flen++] = buf[i++];
      }
    }
    field[flen] = '\0';
    if (push(out, &cap, field) != 0) {
      field = NULL;
      goto bad;
    }
    field = NULL;
    if (i < len && buf[i] == ',') {
      i++;
      continue;
    }
    if (i < len && buf[i] == '\r') {
      i++;
      if (i >= len || buf[i] != '\n') {
        goto bad;
      }
    }
    if (i < len) {
      i++; /* the LF */
    }
    break;
  }
  *pos = i;
  return 0;
bad:
  free(field);
  kms_csv_row_free(out);
  return -1;
}
