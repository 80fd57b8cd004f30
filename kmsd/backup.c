/* Keystore snapshots for the Backup RPC: a named file in backup_dir, its size and SHA-256. */
#include "backup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "kms_err.h"

/* hash_file: size and SHA-256 of |path|. */
static int
hash_file(const char *path, uint64_t *out_size, char *hex)
{
  int r = KMS_ERR_IO;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned char buf[65536], digest[EVP_MAX_MD_SIZE];
  unsigned dlen = 0;
  uint64_t size = 0;
  ssize_t n;

  if (fd < 0 || md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
    goto out;
  }
  while ((n = read(fd, buf, sizeof(buf))) != 0) {
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      goto out;
    }
    if (EVP_DigestUpdate(md, buf, (size_t)n) != 1) {
      goto out;
    }
    size += (uint64_t)n;
  }
  if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != 32) {
    goto out;
  }
  for (unsigned i = 0; i < dlen; i++) {
    snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  }
  *out_size = size;
  r = KMS_OK;
out:
  if (fd >= 0) {
    close(fd);
  }
  EVP_MD_CTX_free(md);
  return r;
}

int
backup_snapshot(keystore *ks, const char *dir, char *path, size_t path_len,
                uint64_t *out_size, char *sha256_hex, char *why, size_t why_len)
{
  struct timespec ts;
  struct tm tm;
  struct stat st;
  char stamp[32];
  int r;

  path[0] = '\0';
  sha256_hex[0] = '\0';
  *out_size = 0;
  if (dir == NULL || dir[0] == '\0') {
    snprintf(why, why_len, "backup_dir is not configured");
    return KMS_ERR_FAILED_PRECONDITION;
  }
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(why, why_len, "backup_dir %s: not a directory", dir);
    return KMS_ERR_FAILED_PRECONDITION;
  }
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", &tm);
  if (snprintf(path, path_len, "%s/keystore-%s%03ldZ.db", dir, stamp,
               ts.tv_nsec / 1000000) >= (int)path_len) {
    snprintf(why, why_len, "backup_dir: path too long");
    path[0] = '\0';
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = keystore_backup(ks, path);
  if (r != KMS_OK) {
    snprintf(why, why_len, "writing the snapshot in %s failed (%s)", dir, kms_strerror(r));
    path[0] = '\0';
    return r;
  }
  r = hash_file(path, out_size, sha256_hex);
  if (r != KMS_OK) {
    snprintf(why, why_len, "reading the snapshot back failed");
    return r;
  }
  return KMS_OK;
}
