/* Hash table plus LRU list of loaded KEK handles, guarded by one mutex. */
#include "kekcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "keystore.h"

struct kekcache_entry {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t version;
  hsm_key key;
  unsigned refs;
  uint64_t uses_left; /* reserved in the keystore, not yet spent */
  int removed; /* dropped while pinned: freed on last release, key leaked to hsm_close */
  uint64_t hash;
  kekcache_entry *next_in_bucket;
  /* KEK state as last read from the keystore (kekcache_set_state). */
  int state;
  int tenant_state;
  int current;          /* was the tenant's newest version at that read */
  int64_t state_ms;     /* monotonic time of that read */
  uint64_t state_epoch; /* the cache's epoch then; any other epoch means stale */
  uint64_t tenant_hash;
  kekcache_entry *next_in_tenant; /* chain in the by-tenant index */
  kekcache_entry *lru_prev, *lru_next; /* head = most recently used */
};

struct kekcache {
  pthread_mutex_t mu;
  size_t capacity;
  size_t size;
  size_t nbuckets; /* power of two */
  kekcache_entry **buckets;
  kekcache_entry **tbuckets; /* every entry again, by tenant alone */
  kekcache_entry *lru_head, *lru_tail;
  uint64_t seed;
  uint64_t epoch; /* starts at 1; kekcache_forget_state moves it on */
  /*
   * The keystore's change counter (kekcache_validate): the value last seen,
   * whether one was seen, when the last check that found it unchanged
   * started (every state of the current epoch was still true then), and
   * whether a check is running.
   */
  uint64_t gen;
  int gen_known;
  int64_t validated_ms;
  int validating;
};

static uint64_t
hash_tenant(uint64_t seed, const char *tenant_id)
{
  /* FNV-1a with a per-process seed: tenant ids are chosen by officers, the
   * seed keeps bucket placement unpredictable anyway. */
  uint64_t h = 1469598103934665603ULL ^ seed;
  for (const unsigned char *p = (const unsigned char *)tenant_id; *p != '\0'; p++) {
    h ^= *p;
    h *= 1099511628211ULL;
  }
  return h;
}

static uint64_t
hash_key(uint64_t seed, const char *tenant_id, uint32_t version)
{
  uint64_t h = hash_tenant(seed, tenant_id);
  for (int i = 0; i < 4; i++) {
    h ^= (version >> (8 * i)) & 0xff;
    h *= 1099511628211ULL;
  }
  return h;
}

kekcache *
kekcache_new(size_t capacity)
{
  if (capacity == 0) {
    return NULL;
  }
  kekcache *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    return NULL;
  }
  c->capacity = capacity;
  c->nbuckets = 16;
  while (c->nbuckets < capacity && c->nbuckets < (1u << 24)) {
    c->nbuckets <<= 1;
  }
  c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
  c->tbuckets = calloc(c->nbuckets, sizeof(*c->tbuckets));
  if (c->buckets == NULL || c->tbuckets == NULL) {
    free(c->buckets);
    free(c->tbuckets);
    free(c);
    return NULL;
  }
  c->epoch = 1;
  c->validated_ms = INT64_MIN / 2;
  if (RAND_bytes((unsigned char *)&c->seed, sizeof(c->seed)) != 1) {
    c->seed = (uint64_t)(uintptr_t)c;
  }
  pthread_mutex_init(&c->mu, NULL);
  return c;
}

void
kekcache_free(kekcache *c)
{
  if (c == NULL) {
    return;
  }
  kekcache_entry *e = c->lru_head;
  while (e != NULL) {
    kekcache_entry *n = e->lru_next;
    free(e);
    e = n;
  }
  free(c->buckets);
  free(c->tbuckets);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

static void
lru_unlink(kekcache *c, kekcache_entry *e)
{
  if (e->lru_prev != NULL) {
    e->lru_prev->lru_next = e->lru_next;
  } else {
    c->lru_head = e->lru_next;
  }
  if (e->lru_next != NULL) {
    e->lru_next->lru_prev = e->lru_prev;
  } else {
    c->lru_tail = e->lru_prev;
  }
  e->lru_prev = e->lru_next = NULL;
}

static void
lru_push_front(kekcache *c, kekcache_entry *e)
{
  e->lru_prev = NULL;
  e->lru_next = c->lru_head;
  if (c->lru_head != NULL) {
    c->lru_head->lru_prev = e;
  }
  c->lru_head = e;
  if (c->lru_tail == NULL) {
    c->lru_tail = e;
  }
}

static void
bucket_unlink(kekcache *c, kekcache_entry *e)
{
  kekcache_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
  while (*pp != NULL && *pp != e) {
    pp = &(*pp)->next_in_bucket;
  }
  if (*pp == e) {
    *pp = e->next_in_bucket;
  }
  pp = &c->tbuckets[e->tenant_hash & (c->nbuckets - 1)];
  while (*pp != NULL && *pp != e) {
    pp = &(*pp)->next_in_tenant;
  }
  if (*pp == e) {
    *pp = e->next_in_tenant;
  }
}

static kekcache_entry *
find(kekcache *c, uint64_t h, const char *tenant_id, uint32_t version)
{
  for (kekcache_entry *e = c->buckets[h & (c->nbuckets - 1)]; e != NULL;
       e = e->next_in_bucket) {
    if (e->hash == h && e->version == version && strcmp(e->tenant_id, tenant_id) == 0) {
      return e;
    }
  }
  return NULL;
}

kekcache_entry *
kekcache_get(kekcache *c, const char *tenant_id, uint32_t version)
{
  uint64_t h = hash_key(c->seed, tenant_id, version);
  pthread_mutex_lock(&c->mu);
  kekcache_entry *e = find(c, h, tenant_id, version);
  if (e != NULL) {
    e->refs++;
    lru_unlink(c, e);
    lru_push_front(c, e);
  }
  pthread_mutex_unlock(&c->mu);
  return e;
}

kekcache_entry *
kekcache_put(kekcache *c, const char *tenant_id, uint32_t version, hsm_key key,
             hsm_key out_unload[2], size_t *out_unload_n)
{
  *out_unload_n = 0;
  if (strlen(tenant_id) > KS_TENANT_ID_MAX) {
    out_unload[(*out_unload_n)++] = key;
    return NULL;
  }
  uint64_t h = hash_key(c->seed, tenant_id, version);
  pthread_mutex_lock(&c->mu);
  kekcache_entry *e = find(c, h, tenant_id, version);
  if (e != NULL) {
    /* Lost a race with another loader: keep theirs. */
    e->refs++;
    lru_unlink(c, e);
    lru_push_front(c, e);
    out_unload[(*out_unload_n)++] = key;
    goto out;
  }
  e = calloc(1, sizeof(*e));
  if (e == NULL) {
    out_unload[(*out_unload_n)++] = key;
    goto out;
  }
  memcpy(e->tenant_id, tenant_id, strlen(tenant_id) + 1);
  e->version = version;
  e->key = key;
  e->refs = 1;
  e->hash = h;
  size_t b = h & (c->nbuckets - 1);
  e->next_in_bucket = c->buckets[b];
  c->buckets[b] = e;
  e->tenant_hash = hash_tenant(c->seed, tenant_id);
  b = e->tenant_hash & (c->nbuckets - 1);
  e->next_in_tenant = c->tbuckets[b];
  c->tbuckets[b] = e;
  lru_push_front(c, e);
  c->size++;
  /* Evict up to two: one for this insert and one to pay back an earlier
   * overshoot caused by pinned entries, so the size drifts back to the
   * capacity once they are released. */
  kekcache_entry *v = c->lru_tail;
  while (c->size > c->capacity && *out_unload_n < 2 && v != NULL) {
    kekcache_entry *prev = v->lru_prev;
    if (v->refs == 0) {
      bucket_unlink(c, v);
      lru_unlink(c, v);
      c->size--;
      out_unload[(*out_unload_n)++] = v->key;
      free(v);
    }
    v = prev;
  }
out:
  pthread_mutex_unlock(&c->mu);
  return e;
}

hsm_key
kekcache_entry_key(const kekcache_entry *e)
{
  return e->key;
}

void
kekcache_release(kekcache *c, kekcache_entry *e)
{
  if (e == NULL) {
    return;
  }
  pthread_mutex_lock(&c->mu);
  e->refs--;
  if (e->refs == 0 && e->removed) {
    free(e);
  }
  pthread_mutex_unlock(&c->mu);
}

int
kekcache_remove(kekcache *c, const char *tenant_id, uint32_t version, hsm_key *out_unload)
{
  int r = 0;
  uint64_t h = hash_key(c->seed, tenant_id, version);
  pthread_mutex_lock(&c->mu);
  kekcache_entry *e = find(c, h, tenant_id, version);
  if (e != NULL) {
    bucket_unlink(c, e);
    lru_unlink(c, e);
    c->size--;
    if (e->refs == 0) {
      *out_unload = e->key;
      free(e);
      r = 1;
    } else {
      e->removed = 1;
    }
  }
  pthread_mutex_unlock(&c->mu);
  return r;
}

int
kekcache_take_use(kekcache *c, kekcache_entry *e)
{
  int r = 0;
  pthread_mutex_lock(&c->mu);
  if (e->uses_left > 0) {
    e->uses_left--;
    r = 1;
  }
  pthread_mutex_unlock(&c->mu);
  return r;
}

void
kekcache_grant_uses(kekcache *c, kekcache_entry *e, uint64_t n)
{
  pthread_mutex_lock(&c->mu);
  e->uses_left += n;
  pthread_mutex_unlock(&c->mu);
}

size_t
kekcache_size(kekcache *c)
{
  pthread_mutex_lock(&c->mu);
  size_t n = c->size;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* ---- Cached KEK state --------------------------------------------------------- */

/*
 * A state is fresh while less than |ttl_ms| has passed since it was read or,
 * when later, since a check of the keystore's change counter found nothing
 * changed (a change found moves the epoch on, so a state of the current epoch
 * was true at every check since it was read).
 */
static int
state_fresh(const kekcache *c, const kekcache_entry *e, int64_t now_ms, int64_t ttl_ms)
{
  int64_t since = e->state_ms > c->validated_ms ? e->state_ms : c->validated_ms;
  return e->state_epoch == c->epoch && now_ms >= since && now_ms - since < ttl_ms;
}

kekcache_entry *
kekcache_get_current(kekcache *c, const char *tenant_id, int64_t now_ms, int64_t ttl_ms,
                     int *out_state, int *out_tenant_state)
{
  uint64_t th = hash_tenant(c->seed, tenant_id);
  kekcache_entry *found = NULL;
  pthread_mutex_lock(&c->mu);
  for (kekcache_entry *e = c->tbuckets[th & (c->nbuckets - 1)]; e != NULL;
       e = e->next_in_tenant) {
    if (e->tenant_hash == th && e->current && state_fresh(c, e, now_ms, ttl_ms) &&
        strcmp(e->tenant_id, tenant_id) == 0) {
      found = e;
      *out_state = e->state;
      *out_tenant_state = e->tenant_state;
      found->refs++;
      lru_unlink(c, found);
      lru_push_front(c, found);
      break;
    }
  }
  pthread_mutex_unlock(&c->mu);
  return found;
}

int
kekcache_state(kekcache *c, const kekcache_entry *e, int64_t now_ms, int64_t ttl_ms,
               int *out_state, int *out_tenant_state)
{
  pthread_mutex_lock(&c->mu);
  int fresh = state_fresh(c, e, now_ms, ttl_ms);
  if (fresh) {
    *out_state = e->state;
    *out_tenant_state = e->tenant_state;
  }
  pthread_mutex_unlock(&c->mu);
  return fresh;
}

uint32_t
kekcache_entry_version(const kekcache_entry *e)
{
  return e->version;
}

uint64_t
kekcache_epoch(kekcache *c)
{
  pthread_mutex_lock(&c->mu);
  uint64_t ep = c->epoch;
  pthread_mutex_unlock(&c->mu);
  return ep;
}

void
kekcache_set_state(kekcache *c, kekcache_entry *e, int state, int tenant_state, int current,
                   int64_t now_ms, uint64_t read_epoch)
{
  pthread_mutex_lock(&c->mu);
  if (read_epoch != c->epoch) {
    goto out; /* state changed here since the read began: it may be stale already */
  }
  if (current) {
    for (kekcache_entry *o = c->tbuckets[e->tenant_hash & (c->nbuckets - 1)]; o != NULL;
         o = o->next_in_tenant) {
      if (o == e || !o->current || o->tenant_hash != e->tenant_hash ||
          strcmp(o->tenant_id, e->tenant_id) != 0) {
        continue;
      }
      if (o->version > e->version && state_fresh(c, o, now_ms, INT64_MAX)) {
        current = 0; /* a later read saw a newer version: versions only grow */
      } else {
        o->current = 0;
      }
    }
    e->current = current;
  }
  e->state = state;
  e->tenant_state = tenant_state;
  e->state_ms = now_ms;
  e->state_epoch = c->epoch;
out:
  pthread_mutex_unlock(&c->mu);
}

int
kekcache_validation_due(kekcache *c, int64_t now_ms, int64_t ttl_ms)
{
  pthread_mutex_lock(&c->mu);
  int due = !c->validating && now_ms - c->validated_ms >= ttl_ms / 2;
  if (due) {
    c->validating = 1;
  }
  pthread_mutex_unlock(&c->mu);
  return due;
}

void
kekcache_validate(kekcache *c, int ok, uint64_t gen, int64_t started_ms)
{
  pthread_mutex_lock(&c->mu);
  c->validating = 0;
  if (ok) {
    if (!c->gen_known || gen != c->gen) {
      /* Changed (or first seen): no cached state is known to be true any more. Every state
       * of the new epoch is read after this, so the time below extends none of them. */
      c->epoch++;
      c->gen = gen;
      c->gen_known = 1;
    }
    if (started_ms > c->validated_ms) {
      c->validated_ms = started_ms;
    }
  }
  pthread_mutex_unlock(&c->mu);
}

void
kekcache_forget_state(kekcache *c)
{
  pthread_mutex_lock(&c->mu);
  c->epoch++;
  pthread_mutex_unlock(&c->mu);
}
