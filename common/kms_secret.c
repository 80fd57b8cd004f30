/* Secret buffers: secure heap when available, else locked, undumpable pages. */
#include "kms_secret.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define SECRET_MAX 4096

struct kms_secret {
  uint8_t *data;
  size_t len;
  size_t map_len; /* 0 when data comes from the OpenSSL secure heap */
};

kms_secret *
kms_secret_new(size_t len)
{
  if (len == 0 || len > SECRET_MAX) {
    return NULL;
  }
  kms_secret *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return NULL;
  }
  s->len = len;
  if (CRYPTO_secure_malloc_initialized()) {
    s->data = OPENSSL_secure_zalloc(len);
    if (s->data == NULL) {
      free(s);
      return NULL;
    }
    return s;
  }
  long page = sysconf(_SC_PAGESIZE);
  size_t pg = page > 0 ? (size_t)page : 4096;
  s->map_len = (len + pg - 1) / pg * pg;
  void *p = mmap(NULL, s->map_len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    free(s);
    return NULL;
  }
  (void)mlock(p, s->map_len);
#ifdef MADV_DONTDUMP
  (void)madvise(p, s->map_len, MADV_DONTDUMP);
#endif
  s->data = p;
  return s;
}

kms_secret *
kms_secret_from(const uint8_t *src, size_t len)
{
  kms_secret *s = kms_secret_new(len);
  if (s != NULL) {
    memcpy(s->data, src, len);
  }
  return s;
}

uint8_t *
kms_secret_data(kms_secret *s)
{
  return s->data;
}

const uint8_t *
kms_secret_cdata(const kms_secret *s)
{
  return s->data;
}

size_t
kms_secret_len(const kms_secret *s)
{
  return s->len;
}

void
kms_secret_free(kms_secret *s)
{
  if (s == NULL) {
    return;
  }
  if (s->map_len == 0) {
    OPENSSL_secure_clear_free(s->data, s->len);
  } else {
    OPENSSL_cleanse(s->data, s->map_len);
    (void)munlock(s->data, s->map_len);
    (void)munmap(s->data, s->map_len);
  }
  free(s);
}
