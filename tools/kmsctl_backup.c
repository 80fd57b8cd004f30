/* kmsctl backup: ask kmsd for a keystore snapshot, optionally copy it and check its SHA-256. */
#include "kmsctl_backup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "kms.pb-c.h"
#include "tenantkey.h"
#include "tk_internal.h"

/*
 * copy_verified copies |from| to |to| (through |to|.tmp, mode 0600, fsynced,
 * renamed) and checks that the copy's SHA-256 is |want_hex|. Returns 0 or -1
 * with the reason printed.
 */
static int
copy_verified(const char *from, const char *to, const char *want_hex)
{
  char tmp[4096], hex[65];
  unsigned char buf[65536], digest[EVP_MAX_MD_SIZE];
  unsigned dlen = 0;
  int in = -1, out = -1, rc = -1;
  ssize_t n;
  EVP_MD_CTX *md = EVP_MD_CTX_new();

  if (snprintf(tmp, sizeof(tmp), "%s.tmp", to) >= (int)sizeof(tmp)) {
    fprintf(stderr, "kmsctl: backup: %s: path too long\n", to);
    goto out;
  }
  in = open(from, O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    fprintf(stderr, "kmsctl: backup: cannot read the snapshot %s here: %s (copy it from "
                    "kmsd's machine)\n", from, strerror(errno));
    goto out;
  }
  out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0 || md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
    fprintf(stderr, "kmsctl: backup: cannot write %s: %s\n", tmp, strerror(errno));
    goto out;
  }
  while ((n = read(in, buf, sizeof(buf))) != 0) {
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 || write(out, buf, (size_t)n) != n || EVP_DigestUpdate(md, buf, (size_t)n) != 1) {
      fprintf(stderr, "kmsctl: backup: copying to %s failed: %s\n", tmp, strerror(errno));
      goto out;
    }
  }
  if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != 32) {
    goto out;
  }
  for (unsigned i = 0; i < dlen; i++) {
    snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  }
  if (strcmp(hex, want_hex) != 0) {
    fprintf(stderr, "kmsctl: backup: the copy's SHA-256 %s differs from kmsd's %s\n", hex,
            want_hex);
    goto out;
  }
  if (fsync(out) != 0 || close(out) != 0) {
    out = -1;
    fprintf(stderr, "kmsctl: backup: %s: %s\n", tmp, strerror(errno));
    goto out;
  }
  out = -1;
  if (rename(tmp, to) != 0) {
    fprintf(stderr, "kmsctl: backup: rename to %s: %s\n", to, strerror(errno));
    goto out;
  }
  rc = 0;
out:
  if (in >= 0) {
    close(in);
  }
  if (out >= 0) {
    close(out);
  }
  if (rc != 0) {
    (void)unlink(tmp);
  }
  EVP_MD_CTX_free(md);
  return rc;
}

int
kmsctl_backup(const char *config, int argc, char **argv)
{
  char err[512] = "", msg[256] = "";
  tk_client *c = NULL;
  Tkms__Request req;
  Tkms__BackupRequest b;
  Tkms__Response *resp = NULL;
  int rc = 1;

  if (argc > 2 || (argc == 2 && argv[1][0] == '-') || config == NULL) {
    fprintf(stderr, "usage: kmsctl --config FILE backup [COPY]\n"
                    "  kmsd writes a snapshot of its keystore into its backup_dir and prints\n"
                    "  path, size and SHA-256; with COPY, kmsctl copies it there (same\n"
                    "  machine) and checks the SHA-256 (docs/RUNBOOK.md).\n");
    return 2;
  }
  int r = tk_client_new_from_file(&c, config, err, sizeof(err));
  if (r != TK_OK) {
    fprintf(stderr, "kmsctl: %s\n", err);
    return 1;
  }
  tkms__request__init(&req);
  tkms__backup_request__init(&b);
  req.op_case = TKMS__REQUEST__OP_BACKUP;
  req.backup = &b;
  r = tk_client_call(c, &req, &resp);
  if (r != TK_OK) {
    tk_client_last_message(c, msg, sizeof(msg));
    fprintf(stderr, "kmsctl: backup: %s%s%s\n", tk_strerror(r), msg[0] != '\0' ? ": " : "", msg);
    rc = r == TK_EUNAVAILABLE ? 6 : r == TK_EPERM ? 5 : 1;
    goto out;
  }
  printf("snapshot %s\nsize %llu\nsha256 %s\n", resp->backup->path,
         (unsigned long long)resp->backup->size, resp->backup->sha256);
  if (argc == 2) {
    if (copy_verified(resp->backup->path, argv[1], resp->backup->sha256) != 0) {
      goto out;
    }
    printf("copied to %s (sha256 verified)\n", argv[1]);
  }
  rc = 0;
out:
  if (resp != NULL) {
    tk_client_response_free(resp);
  }
  tk_client_free(c);
  return rc;
}
