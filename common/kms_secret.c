/* Secret buffers: secure heap when available, else locked, undumpable pages. */
#include "kms_secret.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define SECRET_MAX 4096

enum secret_kind { FROM_SECURE_HEAP, FROM_SLOT, FROM_MAP };

struct kms_secret {
  uint8_t *data;
  size_t len;
  size_t map_len; /* FROM_MAP: bytes mapped */
  enum secret_kind kind;
};

/*
 * Small secrets (data keys, session keys: 32 bytes) without a secure heap
 * (client processes) come from slots in locked, undumpable regions mapped 64
 * KiB at a time and kept for the life of the process: mapping, locking and
 * unmapping pages for every data key cost about 10 us per envelope, more than
 * sealing 16 KiB. A freed slot is wiped before it is linked into the free
 * list (whose pointer lives in its first bytes). Regions are never unmapped,
 * so the pool is as large as the most secrets ever alive at once.
 */
#define SLOT_LEN 64
#define REGION_LEN (64 * 1024)

static pthread_mutex_t slot_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *free_slots; /* each free slot starts with the address of the next */

static uint8_t *
slot_take(void)
{
  uint8_t *p = NULL;
  pthread_mutex_lock(&slot_mu);
  if (free_slots == NULL) {
    void *r = mmap(NULL, REGION_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r != MAP_FAILED) {
      (void)mlock(r, REGION_LEN);
#ifdef MADV_DONTDUMP
      (void)madvise(r, REGION_LEN, MADV_DONTDUMP);
#endif
      /* Thread the new slots onto the free list, the first one last. */
      for (size_t off = REGION_LEN; off >= SLOT_LEN; off -= SLOT_LEN) {
        uint8_t *slot = (uint8_t *)r + off - SLOT_LEN;
        memcpy(slot, &free_slots, sizeof(free_slots));
        free_slots = slot;
      }
    }
  }
  if (free_slots != NULL) {
    p = free_slots;
    memcpy(&free_slots, p, sizeof(free_slots));
    memset(p, 0, SLOT_LEN);
  }
  pthread_mutex_unlock(&slot_mu);
  return p;
}

static void
slot_give(uint8_t *p)
{
  OPENSSL_cleanse(p, SLOT_LEN);
  pthread_mutex_lock(&slot_mu);
  memcpy(p, &free_slots, sizeof(free_slots));
  free_slots = p;
  pthread_mutex_unlock(&slot_mu);
}

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
    s->kind = FROM_SECURE_HEAP;
    s->data = OPENSSL_secure_zalloc(len);
    if (s->data == NULL) {
      free(s);
      return NULL;
    }
    return s;
  }
  if (len <= SLOT_LEN) {
    s->kind = FROM_SLOT;
    s->data = slot_take();
    if (s->data == NULL) {
      free(s);
      return NULL;
    }
    return s;
  }
  s->kind = FROM_MAP;
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
  if (s->kind == FROM_SECURE_HEAP) {
    OPENSSL_secure_clear_free(s->data, s->len);
  } else if (s->kind == FROM_SLOT) {
    slot_give(s->data);
  } else {
    OPENSSL_cleanse(s->data, s->map_len);
    (void)munlock(s->data, s->map_len);
    (void)munmap(s->data, s->map_len);
  }
  free(s);
}
