/* kmsctl audit: offline verification of audit logs and checkpoints (no kmsd, no HSM needed). */
#include "kmsctl_audit.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_auditlog.h"
#include "kms_err.h"
#include "kms_merkle.h"
#include "kms_note.h"

#define PATH_CAP 4096

static void
audit_usage(FILE *f)
{
  fprintf(f,
          "usage: kmsctl audit verify FILE... --key VKEY [--checkpoints FILE] "
          "[--checkpoint TRUSTED]...\n"
          "       kmsctl audit verifier-key DIR\n"
          "\n"
          "verify     recomputes the Merkle tree of the log FILEs (in order: audit-*.jsonl),\n"
          "           checks every signed checkpoint (default: DIR/checkpoints beside the first\n"
          "           FILE) and every TRUSTED checkpoint kept elsewhere, and names the first\n"
          "           record edited, inserted, removed or reordered, or a log cut short.\n"
          "           VKEY is a note verifier key, or a file holding one.\n"
          "           Exit 0: verified; 1: tampering or a bad checkpoint; 2: usage or I/O.\n"
          "verifier-key  prints the verifier key kmsd wrote into its audit directory DIR.\n");
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

int
kmsctl_audit(int argc, char **argv)
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
  if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0) {
    audit_usage(stdout);
    return 0;
  }
  audit_usage(stderr);
  return 2;
}
