/* Audit log replay and checkpoint loading, for kmsd's recovery and kmsctl's offline verification.
 */
#include "kms_auditlog.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_err.h"

int
kms_auditlog_parse_seq(const char *line, size_t len, uint64_t *out_seq)
{
  static const char prefix[] = "{\"seq\":";
  size_t i = sizeof(prefix) - 1;
  uint64_t v = 0;

  *out_seq = 0;
  if (len < i + 2 || memcmp(line, prefix, i) != 0 || line[len - 1] != '}') {
    return -1;
  }
  if (line[i] == '0' && line[i + 1] != ',') {
    return -1; /* one spelling per number: no leading zeros */
  }
  size_t start = i;
  while (i < len && line[i] >= '0' && line[i] <= '9') {
    unsigned d = (unsigned)(line[i] - '0');
    if (v > (UINT64_MAX - d) / 10) {
      return -1;
    }
    v = v * 10 + d;
    i++;
  }
  if (i == start || i >= len || line[i] != ',') {
    return -1;
  }
  *out_seq = v;
  return 0;
}

static int
cmp_cp(const void *a, const void *b)
{
  const struct kms_auditlog_cp *x = a, *y = b;
  return x->size < y->size ? -1 : x->size > y->size ? 1 : 0;
}

/* check_cps compares the tree with every checkpoint of its size; |*idx| walks the sorted list. */
static int
check_cps(struct kms_auditlog_result *res, const struct kms_auditlog_cp *cps, size_t n_cps,
          size_t *idx, uint64_t *last_good)
{
  uint8_t root[KMS_MERKLE_HASH_LEN];

  while (*idx < n_cps && cps[*idx].size == res->tree.size) {
    kms_merkle_frontier_root(&res->tree, root);
    if (CRYPTO_memcmp(root, cps[*idx].root, sizeof(root)) != 0) {
      res->bad_seq = *last_good;
      snprintf(res->why, sizeof(res->why),
               "records %" PRIu64 "..%" PRIu64 " do not hash to the root of %s (tree size %" PRIu64
               "): a record in that range was altered, inserted, removed or reordered",
               *last_good, cps[*idx].size > 0 ? cps[*idx].size - 1 : 0, cps[*idx].source,
               cps[*idx].size);
      return KMS_ERR_DECRYPT;
    }
    *last_good = cps[*idx].size;
    res->checkpoints_matched++;
    (*idx)++;
  }
  return KMS_OK;
}

int
kms_auditlog_replay(const char *const *files, size_t n_files, const struct kms_auditlog_cp *cps_in,
                    size_t n_cps, struct kms_auditlog_result *res)
{
  return kms_auditlog_replay_from(NULL, files, n_files, cps_in, n_cps, res);
}

int
kms_auditlog_replay_from(const struct kms_merkle_frontier *start, const char *const *files,
                         size_t n_files, const struct kms_auditlog_cp *cps_in, size_t n_cps,
                         struct kms_auditlog_result *res)
{
  int r = KMS_ERR_INTERNAL;
  struct kms_auditlog_cp *cps = NULL;
  size_t cp_idx = 0;
  uint64_t last_good = 0;
  FILE *f = NULL;
  char *line = NULL;
  size_t cap = 0;

  memset(res, 0, sizeof(*res));
  kms_merkle_frontier_init(&res->tree);
  res->bad_seq = UINT64_MAX;
  if (n_cps > 0) {
    cps = malloc(n_cps * sizeof(*cps));
    if (cps == NULL) {
      r = KMS_ERR_ALLOC;
      goto out;
    }
    memcpy(cps, cps_in, n_cps * sizeof(*cps));
    qsort(cps, n_cps, sizeof(*cps), cmp_cp);
  }
  if (start != NULL) {
    /* The records before |start| were checked when it was saved: skip their checkpoints, but
     * the one at its size must be there and agree with it. */
    res->tree = *start;
    last_good = start->size;
    while (cp_idx < n_cps && cps[cp_idx].size < start->size) {
      cp_idx++;
    }
    if (cp_idx == n_cps || cps[cp_idx].size != start->size) {
      res->bad_seq = start->size;
      snprintf(res->why, sizeof(res->why),
               "no signed checkpoint at tree size %" PRIu64 " to check the saved tree against",
               start->size);
      r = KMS_ERR_DECRYPT;
      goto out;
    }
    last_good = cp_idx > 0 ? cps[cp_idx - 1].size : 0;
  }
  if ((r = check_cps(res, cps, n_cps, &cp_idx, &last_good)) != KMS_OK) {
    goto out;
  }
  for (size_t fi = 0; fi < n_files; fi++) {
    uint64_t lineno = 0, off = 0;
    ssize_t n;

    f = fopen(files[fi], "rb");
    if (f == NULL) {
      snprintf(res->why, sizeof(res->why), "%s: %s", files[fi], strerror(errno));
      r = KMS_ERR_IO;
      goto out;
    }
    while ((n = getline(&line, &cap, f)) > 0) {
      size_t len = (size_t)n;
      uint64_t seq, want = res->tree.size;
      uint8_t lh[KMS_MERKLE_HASH_LEN];

      lineno++;
      if (line[len - 1] != '\n') {
        /* An incomplete line: a torn write, tolerated only at the very end of the log. */
        if (fi + 1 != n_files) {
          res->bad_seq = want;
          snprintf(res->why, sizeof(res->why),
                   "%s line %" PRIu64 ": incomplete line in a file that is not the last", files[fi],
                   lineno);
          r = KMS_ERR_DECRYPT;
          goto out;
        }
        res->torn_bytes = len;
        break;
      }
      len--;
      if (len > KMS_AUDIT_LINE_MAX || kms_auditlog_parse_seq(line, len, &seq) != 0) {
        res->bad_seq = want;
        snprintf(res->why, sizeof(res->why),
                 "%s line %" PRIu64 ": not an audit record (expected seq %" PRIu64 ")", files[fi],
                 lineno, want);
        r = KMS_ERR_DECRYPT;
        goto out;
      }
      if (seq != want) {
        res->bad_seq = want;
        if (seq > want) {
          snprintf(res->why, sizeof(res->why),
                   "%s line %" PRIu64 ": seq %" PRIu64 " where %" PRIu64
                   " was expected: record %" PRIu64 " removed, or records reordered",
                   files[fi], lineno, seq, want, want);
        } else {
          snprintf(res->why, sizeof(res->why),
                   "%s line %" PRIu64 ": seq %" PRIu64 " where %" PRIu64
                   " was expected: a record was inserted, duplicated or reordered",
                   files[fi], lineno, seq, want);
        }
        r = KMS_ERR_DECRYPT;
        goto out;
      }
      kms_merkle_leaf_hash(lh, (const uint8_t *)line, len);
      if ((r = kms_merkle_frontier_append(&res->tree, lh)) != KMS_OK ||
          (r = check_cps(res, cps, n_cps, &cp_idx, &last_good)) != KMS_OK) {
        goto out;
      }
      off += (uint64_t)n;
    }
    if (ferror(f)) {
      snprintf(res->why, sizeof(res->why), "%s: read error", files[fi]);
      r = KMS_ERR_IO;
      goto out;
    }
    fclose(f);
    f = NULL;
    if (fi + 1 == n_files) {
      res->last_file_good_len = off;
    }
  }
  if (cp_idx < n_cps) {
    const struct kms_auditlog_cp *c = &cps[n_cps - 1];
    res->bad_seq = res->tree.size;
    snprintf(res->why, sizeof(res->why),
             "the log holds %" PRIu64 " records but %s covers %" PRIu64 ": records %" PRIu64
             "..%" PRIu64 " are missing (log cut short)",
             res->tree.size, c->source, c->size, res->tree.size, c->size - 1);
    r = KMS_ERR_TRUNCATED;
    goto out;
  }
  r = KMS_OK;
out:
  if (f != NULL) {
    fclose(f);
  }
  free(line);
  free(cps);
  return r;
}

int
kms_auditlog_read_file(const char *path, char **out, size_t *out_len, char *why, size_t why_len)
{
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t cap = 1 << 16, n = 0;
  int r = KMS_ERR_IO;

  *out = NULL;
  *out_len = 0;
  if (f == NULL) {
    snprintf(why, why_len, "%s: %s", path, strerror(errno));
    return errno == ENOENT ? KMS_ERR_NOT_FOUND : KMS_ERR_IO;
  }
  /* Read to the end rather than trusting a size: the file may be growing. */
  for (;;) {
    if (buf == NULL || n == cap) {
      char *p = buf == NULL ? malloc(cap + 1) : realloc(buf, cap * 2 + 1);
      if (p == NULL) {
        r = KMS_ERR_ALLOC;
        goto out;
      }
      cap = buf == NULL ? cap : cap * 2;
      buf = p;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) {
      break;
    }
  }
  if (ferror(f)) {
    snprintf(why, why_len, "%s: read error", path);
    goto out;
  }
  buf[n] = '\0';
  *out = buf;
  *out_len = n;
  buf = NULL;
  r = KMS_OK;
out:
  fclose(f);
  free(buf);
  return r;
}

int
kms_auditlog_load_checkpoints(const char *path, const struct kms_note_vkey *k,
                              struct kms_auditlog_cp **out, size_t *out_n, uint64_t *out_good_len,
                              char *why, size_t why_len)
{
  int r = KMS_ERR_INTERNAL;
  char *buf = NULL;
  size_t len = 0, off = 0, n = 0, cap = 0;
  struct kms_auditlog_cp *cps = NULL;

  *out = NULL;
  *out_n = 0;
  *out_good_len = 0;
  why[0] = '\0';
  if ((r = kms_auditlog_read_file(path, &buf, &len, why, why_len)) != KMS_OK) {
    goto out;
  }
  while (off < len) {
    size_t start, note_len, used, text_len;
    struct kms_checkpoint cp;
    int nr = kms_note_next(buf + off, len - off, &start, &note_len, &used);

    if (nr == KMS_ERR_NOT_FOUND) {
      off = len;
      break;
    }
    if (nr == KMS_ERR_TRUNCATED) {
      break; /* a torn last note: |off| stays at its start */
    }
    if (kms_note_verify(buf + off + start, note_len, k, &text_len) != KMS_OK ||
        kms_checkpoint_parse(&cp, buf + off + start, text_len) != KMS_OK ||
        strcmp(cp.origin, k->name) != 0) {
      snprintf(why, why_len,
               "%s: checkpoint #%zu (byte %zu) is not signed by %s or is malformed: forged or "
               "altered",
               path, n + 1, off + start, k->name);
      r = KMS_ERR_DECRYPT;
      goto out;
    }
    if (n > 0 && cp.size < cps[n - 1].size) {
      snprintf(why, why_len,
               "%s: checkpoint #%zu (size %" PRIu64 ") is older than the one before it", path,
               n + 1, cp.size);
      r = KMS_ERR_DECRYPT;
      goto out;
    }
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      struct kms_auditlog_cp *p = realloc(cps, ncap * sizeof(*cps));
      if (p == NULL) {
        r = KMS_ERR_ALLOC;
        goto out;
      }
      cps = p;
      cap = ncap;
    }
    cps[n].size = cp.size;
    memcpy(cps[n].root, cp.root, sizeof(cp.root));
    snprintf(cps[n].source, sizeof(cps[n].source), "checkpoint #%zu", n + 1);
    n++;
    off += used;
  }
  *out_good_len = off;
  *out = cps;
  *out_n = n;
  cps = NULL;
  r = KMS_OK;
out:
  free(buf);
  free(cps);
  return r;
}

/* ---- Frontier files ------------------------------------------------------------------------ */

#define FRONTIER_MAGIC "tenantkms audit frontier v1"

int
kms_auditlog_frontier_format(const struct kms_merkle_frontier *f, char *out, size_t cap,
                             size_t *out_len)
{
  size_t len = 0;
  int n = snprintf(out, cap, "%s\nsize %" PRIu64 "\n", FRONTIER_MAGIC, f->size);
  if (n < 0 || (size_t)n >= cap) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  len = (size_t)n;
  for (unsigned i = 0; i < 64; i++) {
    if (((f->size >> i) & 1) == 0) {
      continue;
    }
    if (cap - len < 4 + 2 * KMS_MERKLE_HASH_LEN + 2) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    len += (size_t)snprintf(out + len, cap - len, "%u ", i);
    for (size_t b = 0; b < KMS_MERKLE_HASH_LEN; b++) {
      len += (size_t)snprintf(out + len, cap - len, "%02x", f->nodes[i][b]);
    }
    out[len++] = '\n';
    out[len] = '\0';
  }
  *out_len = len;
  return KMS_OK;
}

static int
hex_nibble(char c)
{
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int
kms_auditlog_frontier_parse(const char *text, size_t len, struct kms_merkle_frontier *out)
{
  const char *p = text, *end = text + len;
  const size_t mlen = sizeof(FRONTIER_MAGIC) - 1;
  uint64_t size = 0, seen = 0;

  kms_merkle_frontier_init(out);
  if (len < mlen + 1 || memcmp(p, FRONTIER_MAGIC "\n", mlen + 1) != 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  p += mlen + 1;
  if (end - p < 6 || memcmp(p, "size ", 5) != 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  p += 5;
  if (p == end || *p < '0' || *p > '9') {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  while (p < end && *p >= '0' && *p <= '9') {
    if (size > (UINT64_MAX - 9) / 10) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    size = size * 10 + (uint64_t)(*p++ - '0');
  }
  if (p == end || *p++ != '\n' || size >= (UINT64_C(1) << 63)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* One line "LEVEL HEX" per set bit of size, in increasing level, and nothing else. */
  while (p < end) {
    unsigned level = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && digits < 3) {
      level = level * 10 + (unsigned)(*p++ - '0');
      digits++;
    }
    if (digits == 0 || level >= 64 || p == end || *p++ != ' ' ||
        ((size >> level) & 1) == 0 || (seen >> level) != 0 ||
        end - p < 2 * KMS_MERKLE_HASH_LEN + 1) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    for (size_t b = 0; b < KMS_MERKLE_HASH_LEN; b++) {
      int hi = hex_nibble(p[2 * b]), lo = hex_nibble(p[2 * b + 1]);
      if (hi < 0 || lo < 0) {
        return KMS_ERR_INVALID_ARGUMENT;
      }
      out->nodes[level][b] = (uint8_t)(hi << 4 | lo);
    }
    p += 2 * KMS_MERKLE_HASH_LEN;
    if (*p++ != '\n') {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    seen |= UINT64_C(1) << level;
  }
  if (seen != size) {
    kms_merkle_frontier_init(out);
    return KMS_ERR_INVALID_ARGUMENT;
  }
  out->size = size;
  return KMS_OK;
}
