/* Token buckets per principal and connection counts per peer address, in two small hash tables. */
#include "limiter.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "identity.h"
#include "kms_time.h"

#define NBUCKETS 4096            /* power of two */
#define MAX_PRINCIPALS 65536     /* buckets kept at once */
#define IP_MAX 64
#define MILLI 1000u              /* tokens are kept in thousandths: exact at any rate */

struct bucket {
  struct bucket *next;
  uint64_t hash;
  uint64_t tokens_m; /* thousandths of a token */
  int64_t last_ms;
  char principal[IDENTITY_MAX];
};

struct peer {
  struct peer *next;
  uint64_t hash;
  unsigned count;
  char ip[IP_MAX];
};

struct limits {
  unsigned rate;
  uint64_t cap_m;
  uint64_t seed;
  size_t n_buckets_used;
  int64_t last_sweep_ms; /* a full table is swept at most once a second: O(n) each */
  struct bucket *buckets[NBUCKETS];
  struct peer *peers[NBUCKETS];
};

/* FNV-1a with a per-process seed, so a client cannot aim principals at one chain. */
static uint64_t
hash_str(uint64_t seed, const char *s)
{
  uint64_t h = 1469598103934665603ULL ^ seed;
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    h ^= *p;
    h *= 1099511628211ULL;
  }
  return h;
}

limits *
limits_new(unsigned rate, unsigned burst)
{
  limits *l = calloc(1, sizeof(*l));
  if (l == NULL) {
    return NULL;
  }
  l->rate = rate;
  l->last_sweep_ms = INT64_MIN / 2;
  l->cap_m = (uint64_t)(burst > 0 ? burst : 1) * MILLI;
  if (RAND_bytes((unsigned char *)&l->seed, sizeof(l->seed)) != 1) {
    l->seed = (uint64_t)(uintptr_t)l;
  }
  return l;
}

void
limits_free(limits *l)
{
  if (l == NULL) {
    return;
  }
  for (size_t i = 0; i < NBUCKETS; i++) {
    for (struct bucket *b = l->buckets[i], *n; b != NULL; b = n) {
      n = b->next;
      free(b);
    }
    for (struct peer *p = l->peers[i], *n; p != NULL; p = n) {
      n = p->next;
      free(p);
    }
  }
  free(l);
}

static void
refill(const limits *l, struct bucket *b, int64_t now_ms)
{
  if (now_ms <= b->last_ms) {
    return;
  }
  uint64_t add = (uint64_t)(now_ms - b->last_ms) * l->rate; /* rate/s = rate thousandths/ms */
  b->tokens_m = add >= l->cap_m - b->tokens_m ? l->cap_m : b->tokens_m + add;
  b->last_ms = now_ms;
}

/* Forgets every bucket that has refilled: it would grant a full burst anyway. */
static void
sweep(limits *l, int64_t now_ms)
{
  for (size_t i = 0; i < NBUCKETS; i++) {
    struct bucket **pp = &l->buckets[i];
    while (*pp != NULL) {
      struct bucket *b = *pp;
      refill(l, b, now_ms);
      if (b->tokens_m >= l->cap_m) {
        *pp = b->next;
        free(b);
        l->n_buckets_used--;
      } else {
        pp = &b->next;
      }
    }
  }
}

bool
limits_rate_allow(limits *l, const char *principal, int64_t now_ms)
{
  if (l == NULL || l->rate == 0) {
    return true;
  }
  uint64_t h = hash_str(l->seed, principal);
  struct bucket *b = l->buckets[h & (NBUCKETS - 1)];
  while (b != NULL && (b->hash != h || strcmp(b->principal, principal) != 0)) {
    b = b->next;
  }
  if (b == NULL) {
    if (l->n_buckets_used >= MAX_PRINCIPALS && now_ms - l->last_sweep_ms >= 1000) {
      sweep(l, now_ms);
      l->last_sweep_ms = now_ms;
    }
    if (l->n_buckets_used >= MAX_PRINCIPALS || strlen(principal) >= sizeof(b->principal) ||
        (b = calloc(1, sizeof(*b))) == NULL) {
      return false;
    }
    b->hash = h;
    b->tokens_m = l->cap_m;
    b->last_ms = now_ms;
    memcpy(b->principal, principal, strlen(principal) + 1);
    b->next = l->buckets[h & (NBUCKETS - 1)];
    l->buckets[h & (NBUCKETS - 1)] = b;
    l->n_buckets_used++;
  }
  refill(l, b, now_ms);
  if (b->tokens_m < MILLI) {
    return false;
  }
  b->tokens_m -= MILLI;
  return true;
}

bool
limits_rate_allow_now(limits *l, const char *principal)
{
  if (l == NULL || l->rate == 0) {
    return true;
  }
  return limits_rate_allow(l, principal, kms_mono_ms());
}

static struct peer **
find_peer(const limits *l, const char *ip, uint64_t h)
{
  struct peer **pp = (struct peer **)&l->peers[h & (NBUCKETS - 1)];
  while (*pp != NULL && ((*pp)->hash != h || strcmp((*pp)->ip, ip) != 0)) {
    pp = &(*pp)->next;
  }
  return pp;
}

bool
limits_peer_acquire(limits *l, const char *ip, unsigned max)
{
  uint64_t h = hash_str(l->seed, ip);
  struct peer **pp = find_peer(l, ip, h);
  struct peer *p = *pp;
  if (p == NULL) {
    if (max == 0 || strlen(ip) >= sizeof(p->ip) || (p = calloc(1, sizeof(*p))) == NULL) {
      return false;
    }
    p->hash = h;
    memcpy(p->ip, ip, strlen(ip) + 1);
    p->next = l->peers[h & (NBUCKETS - 1)];
    l->peers[h & (NBUCKETS - 1)] = p;
  }
  if (p->count >= max) {
    return false;
  }
  p->count++;
  return true;
}

void
limits_peer_release(limits *l, const char *ip)
{
  uint64_t h = hash_str(l->seed, ip);
  struct peer **pp = find_peer(l, ip, h);
  struct peer *p = *pp;
  if (p == NULL) {
    return;
  }
  if (p->count > 0) {
    p->count--;
  }
  if (p->count == 0) {
    *pp = p->next;
    free(p);
  }
}

unsigned
limits_peer_count(const limits *l, const char *ip)
{
  struct peer *p = *find_peer(l, ip, hash_str(l->seed, ip));
  return p != NULL ? p->count : 0;
}
