/* Check suite for kekcache: lookup, LRU eviction, pinning, removal, use accounting, cached state, threads. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kekcache.h"
#include "kms_wire.h"

/* Inserts (tenant, version) with |key|, expects no key handed back, releases the pin. */
static void
put_released(kekcache *c, const char *tenant, uint32_t version, hsm_key key)
{
  hsm_key unload[2] = {0, 0};
  size_t n = 99;
  kekcache_entry *e = kekcache_put(c, tenant, version, key, unload, &n);
  ck_assert_ptr_nonnull(e);
  ck_assert_uint_eq(n, 0);
  ck_assert_uint_eq(kekcache_entry_key(e), key);
  kekcache_release(c, e);
}

/* Returns 1 if (tenant, version) is cached, without changing its pin count. */
static int
present(kekcache *c, const char *tenant, uint32_t version)
{
  kekcache_entry *e = kekcache_get(c, tenant, version);
  kekcache_release(c, e);
  return e != NULL;
}

START_TEST(test_new_refuses_zero_capacity)
{
  ck_assert_ptr_null(kekcache_new(0));
  kekcache_free(NULL);
}
END_TEST

START_TEST(test_get_on_empty_cache_misses)
{
  kekcache *c = kekcache_new(4);
  ck_assert_ptr_nonnull(c);
  ck_assert_ptr_null(kekcache_get(c, "acme", 1));
  ck_assert_uint_eq(kekcache_size(c), 0);
  kekcache_free(c);
}
END_TEST

START_TEST(test_put_then_get_returns_same_key)
{
  kekcache *c = kekcache_new(4);
  put_released(c, "acme", 1, 0x1111);
  put_released(c, "acme", 2, 0x2222);
  put_released(c, "beta", 1, 0x3333);
  ck_assert_uint_eq(kekcache_size(c), 3);
  kekcache_entry *e = kekcache_get(c, "acme", 2);
  ck_assert_ptr_nonnull(e);
  ck_assert_uint_eq(kekcache_entry_key(e), 0x2222);
  kekcache_release(c, e);
  e = kekcache_get(c, "beta", 1);
  ck_assert_ptr_nonnull(e);
  ck_assert_uint_eq(kekcache_entry_key(e), 0x3333);
  kekcache_release(c, e);
  /* Same tenant, other version; other tenant, same version: both misses. */
  ck_assert_ptr_null(kekcache_get(c, "acme", 3));
  ck_assert_ptr_null(kekcache_get(c, "gamma", 1));
  ck_assert_ptr_null(kekcache_get(c, "acm", 1));
  kekcache_free(c);
}
END_TEST

START_TEST(test_put_refuses_overlong_tenant_and_hands_key_back)
{
  char tenant[KMS_TENANT_ID_MAX + 2];
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache *c = kekcache_new(4);
  memset(tenant, 't', sizeof(tenant) - 1);
  tenant[sizeof(tenant) - 1] = '\0';
  ck_assert_ptr_null(kekcache_put(c, tenant, 1, 0x77, unload, &n));
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(unload[0], 0x77);
  ck_assert_uint_eq(kekcache_size(c), 0);
  /* Exactly KMS_TENANT_ID_MAX is fine. */
  tenant[KMS_TENANT_ID_MAX] = '\0';
  put_released(c, tenant, 1, 0x78);
  ck_assert(present(c, tenant, 1));
  kekcache_free(c);
}
END_TEST

START_TEST(test_full_cache_hands_back_least_recently_used_key)
{
  kekcache *c = kekcache_new(2);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  put_released(c, "a", 1, 0xA);
  put_released(c, "b", 1, 0xB);
  kekcache_entry *e = kekcache_put(c, "c", 1, 0xC, unload, &n);
  ck_assert_ptr_nonnull(e);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(unload[0], 0xA);
  kekcache_release(c, e);
  ck_assert_uint_eq(kekcache_size(c), 2);
  ck_assert(!present(c, "a", 1));
  ck_assert(present(c, "b", 1));
  ck_assert(present(c, "c", 1));
  kekcache_free(c);
}
END_TEST

START_TEST(test_get_refreshes_lru_position)
{
  kekcache *c = kekcache_new(2);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  put_released(c, "a", 1, 0xA);
  put_released(c, "b", 1, 0xB);
  ck_assert(present(c, "a", 1)); /* now b is the least recently used */
  kekcache_entry *e = kekcache_put(c, "c", 1, 0xC, unload, &n);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(unload[0], 0xB);
  kekcache_release(c, e);
  ck_assert(present(c, "a", 1));
  ck_assert(!present(c, "b", 1));
  kekcache_free(c);
}
END_TEST

START_TEST(test_pinned_entries_are_never_evicted)
{
  kekcache *c = kekcache_new(2);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *a = kekcache_put(c, "a", 1, 0xA, unload, &n);
  ck_assert_uint_eq(n, 0);
  kekcache_entry *b = kekcache_put(c, "b", 1, 0xB, unload, &n);
  ck_assert_uint_eq(n, 0);
  kekcache_entry *d = kekcache_put(c, "d", 1, 0xD, unload, &n);
  ck_assert_ptr_nonnull(d);
  ck_assert_uint_eq(n, 0); /* nothing unpinned to evict: capacity exceeded */
  ck_assert_uint_eq(kekcache_size(c), 3);
  ck_assert_uint_eq(kekcache_entry_key(a), 0xA);
  ck_assert_uint_eq(kekcache_entry_key(b), 0xB);
  ck_assert(present(c, "a", 1));
  ck_assert(present(c, "b", 1));
  ck_assert(present(c, "d", 1));
  kekcache_release(c, a);
  kekcache_release(c, b);
  kekcache_release(c, d);
  kekcache_free(c);
}
END_TEST

START_TEST(test_eviction_skips_pinned_lru_entry)
{
  kekcache *c = kekcache_new(2);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *a = kekcache_put(c, "a", 1, 0xA, unload, &n); /* oldest, held */
  put_released(c, "b", 1, 0xB);
  kekcache_entry *e = kekcache_put(c, "c", 1, 0xC, unload, &n);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(unload[0], 0xB);
  kekcache_release(c, e);
  ck_assert(present(c, "a", 1));
  kekcache_release(c, a);
  kekcache_free(c);
}
END_TEST

START_TEST(test_size_returns_to_capacity_after_pins_are_released)
{
  /* The capacity may be exceeded only by the number of pinned entries. */
  kekcache *c = kekcache_new(2);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *p[3];
  p[0] = kekcache_put(c, "a", 1, 0xA, unload, &n);
  p[1] = kekcache_put(c, "b", 1, 0xB, unload, &n);
  p[2] = kekcache_put(c, "c", 1, 0xC, unload, &n);
  ck_assert_uint_eq(kekcache_size(c), 3);
  for (size_t i = 0; i < 3; i++) {
    kekcache_release(c, p[i]);
  }
  kekcache_entry *d = kekcache_put(c, "d", 1, 0xD, unload, &n);
  ck_assert_ptr_nonnull(d);
  kekcache_release(c, d);
  /* 0 pinned now, so at most 2 entries may remain. */
  ck_assert_uint_le(kekcache_size(c), 2);
  ck_assert_uint_eq(n, 2);
  ck_assert_uint_eq(unload[0], 0xA);
  ck_assert_uint_eq(unload[1], 0xB);
  ck_assert(present(c, "c", 1));
  ck_assert(present(c, "d", 1));
  kekcache_free(c);
}
END_TEST

START_TEST(test_duplicate_put_keeps_existing_entry_and_hands_back_new_key)
{
  kekcache *c = kekcache_new(4);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *first = kekcache_put(c, "acme", 1, 0x100, unload, &n);
  kekcache_entry *second = kekcache_put(c, "acme", 1, 0x200, unload, &n);
  ck_assert_ptr_eq(second, first);
  ck_assert_uint_eq(kekcache_entry_key(second), 0x100);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(unload[0], 0x200);
  ck_assert_uint_eq(kekcache_size(c), 1);
  /* Both callers hold a pin: remove can't free it until both release. */
  hsm_key out = 0;
  kekcache_release(c, first);
  ck_assert_int_eq(kekcache_remove(c, "acme", 1, &out), 0);
  kekcache_release(c, second); /* last pin: the entry is freed here (ASan checks) */
  kekcache_free(c);
}
END_TEST

START_TEST(test_remove_unpinned_returns_its_key)
{
  kekcache *c = kekcache_new(4);
  hsm_key out = 0;
  put_released(c, "acme", 1, 0x42);
  put_released(c, "acme", 2, 0x43);
  ck_assert_int_eq(kekcache_remove(c, "acme", 1, &out), 1);
  ck_assert_uint_eq(out, 0x42);
  ck_assert_uint_eq(kekcache_size(c), 1);
  ck_assert(!present(c, "acme", 1));
  ck_assert(present(c, "acme", 2));
  out = 0;
  ck_assert_int_eq(kekcache_remove(c, "acme", 1, &out), 0); /* already gone */
  ck_assert_uint_eq(out, 0);
  ck_assert_int_eq(kekcache_remove(c, "nobody", 1, &out), 0);
  kekcache_free(c);
}
END_TEST

START_TEST(test_remove_pinned_returns_zero_and_release_frees_it)
{
  kekcache *c = kekcache_new(4);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  hsm_key out = 0;
  kekcache_entry *e = kekcache_put(c, "acme", 1, 0x42, unload, &n);
  ck_assert_int_eq(kekcache_remove(c, "acme", 1, &out), 0);
  ck_assert_uint_eq(out, 0);
  /* Gone for new lookups, still usable by its holder. */
  ck_assert_uint_eq(kekcache_size(c), 0);
  ck_assert_ptr_null(kekcache_get(c, "acme", 1));
  ck_assert_uint_eq(kekcache_entry_key(e), 0x42);
  /* A fresh load of the same key goes in as a new entry. */
  kekcache_entry *f = kekcache_put(c, "acme", 1, 0x43, unload, &n);
  ck_assert_uint_eq(n, 0);
  ck_assert_ptr_ne(f, e);
  kekcache_release(c, e); /* frees the removed entry; ASan would flag a leak or reuse */
  ck_assert_uint_eq(kekcache_entry_key(f), 0x43);
  kekcache_release(c, f);
  ck_assert_uint_eq(kekcache_size(c), 1);
  kekcache_free(c);
}
END_TEST

START_TEST(test_release_null_is_noop)
{
  kekcache *c = kekcache_new(1);
  kekcache_release(c, NULL);
  ck_assert_uint_eq(kekcache_size(c), 0);
  kekcache_free(c);
}
END_TEST

START_TEST(test_take_use_spends_granted_uses)
{
  kekcache *c = kekcache_new(4);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *e = kekcache_put(c, "acme", 1, 0x42, unload, &n);
  ck_assert_int_eq(kekcache_take_use(c, e), 0); /* a fresh entry has none */
  kekcache_grant_uses(c, e, 3);
  ck_assert_int_eq(kekcache_take_use(c, e), 1);
  ck_assert_int_eq(kekcache_take_use(c, e), 1);
  ck_assert_int_eq(kekcache_take_use(c, e), 1);
  ck_assert_int_eq(kekcache_take_use(c, e), 0);
  ck_assert_int_eq(kekcache_take_use(c, e), 0);
  kekcache_release(c, e);
  kekcache_free(c);
}
END_TEST

START_TEST(test_uses_stay_with_the_entry_across_pins)
{
  kekcache *c = kekcache_new(4);
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *e = kekcache_put(c, "acme", 1, 0x42, unload, &n);
  kekcache_grant_uses(c, e, 2);
  kekcache_release(c, e);
  e = kekcache_get(c, "acme", 1);
  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(kekcache_take_use(c, e), 1);
  ck_assert_int_eq(kekcache_take_use(c, e), 1);
  ck_assert_int_eq(kekcache_take_use(c, e), 0);
  kekcache_release(c, e);
  /* Uses are per entry, not per tenant. */
  e = kekcache_put(c, "acme", 2, 0x43, unload, &n);
  ck_assert_int_eq(kekcache_take_use(c, e), 0);
  kekcache_release(c, e);
  kekcache_free(c);
}
END_TEST

/* ---- cached KEK state ---- */

/* Inserts (tenant, version) and returns it pinned. */
static kekcache_entry *
put_pinned(kekcache *c, const char *tenant, uint32_t version, hsm_key key)
{
  hsm_key unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *e = kekcache_put(c, tenant, version, key, unload, &n);
  ck_assert_ptr_nonnull(e);
  return e;
}

START_TEST(test_state_is_unknown_until_set)
{
  kekcache *c = kekcache_new(4);
  int st = 0, tst = 0;
  kekcache_entry *e = put_pinned(c, "acme", 1, 0x10);
  ck_assert_int_eq(kekcache_state(c, e, 1000, 500, &st, &tst), 0);
  ck_assert_ptr_null(kekcache_get_current(c, "acme", 1000, 500, &st, &tst));
  kekcache_release(c, e);
  kekcache_free(c);
}
END_TEST

START_TEST(test_state_is_used_for_ttl_then_stale)
{
  kekcache *c = kekcache_new(4);
  int st = 0, tst = 0;
  kekcache_entry *e = put_pinned(c, "acme", 1, 0x10);
  kekcache_set_state(c, e, 2, 1, 0, 1000, kekcache_epoch(c));
  ck_assert_int_eq(kekcache_state(c, e, 1000, 500, &st, &tst), 1);
  ck_assert_int_eq(st, 2);
  ck_assert_int_eq(tst, 1);
  ck_assert_int_eq(kekcache_state(c, e, 1499, 500, &st, &tst), 1);
  ck_assert_int_eq(kekcache_state(c, e, 1500, 500, &st, &tst), 0);
  /* A clock that went backwards is not trusted either. */
  ck_assert_int_eq(kekcache_state(c, e, 999, 500, &st, &tst), 0);
  kekcache_release(c, e);
  kekcache_free(c);
}
END_TEST

START_TEST(test_get_current_returns_the_newest_version_read)
{
  kekcache *c = kekcache_new(4);
  int st = 0, tst = 0;
  kekcache_entry *v1 = put_pinned(c, "acme", 1, 0x11);
  kekcache_entry *v2 = put_pinned(c, "acme", 2, 0x12);
  kekcache_entry *other = put_pinned(c, "beta", 1, 0x21);
  kekcache_set_state(c, v1, 1, 1, 1, 1000, kekcache_epoch(c));
  kekcache_set_state(c, other, 1, 1, 1, 1000, kekcache_epoch(c));
  kekcache_entry *e = kekcache_get_current(c, "acme", 1000, 500, &st, &tst);
  ck_assert_ptr_eq(e, v1);
  kekcache_release(c, e);
  /* Version 2 becomes the newest: version 1 is no longer current. */
  kekcache_set_state(c, v2, 1, 1, 1, 1100, kekcache_epoch(c));
  e = kekcache_get_current(c, "acme", 1100, 500, &st, &tst);
  ck_assert_ptr_eq(e, v2);
  kekcache_release(c, e);
  /* A late answer naming version 1 does not take it back: versions only grow. */
  kekcache_set_state(c, v1, 2, 1, 1, 1200, kekcache_epoch(c));
  e = kekcache_get_current(c, "acme", 1200, 500, &st, &tst);
  ck_assert_ptr_eq(e, v2);
  kekcache_release(c, e);
  ck_assert_int_eq(kekcache_state(c, v1, 1200, 500, &st, &tst), 1);
  ck_assert_int_eq(st, 2);
  /* Other tenants are not affected; a prefix is another tenant. */
  e = kekcache_get_current(c, "beta", 1200, 500, &st, &tst);
  ck_assert_ptr_eq(e, other);
  kekcache_release(c, e);
  ck_assert_ptr_null(kekcache_get_current(c, "acm", 1200, 500, &st, &tst));
  kekcache_release(c, v1);
  kekcache_release(c, v2);
  kekcache_release(c, other);
  kekcache_free(c);
}
END_TEST

START_TEST(test_forget_state_makes_every_state_stale)
{
  kekcache *c = kekcache_new(4);
  int st = 0, tst = 0;
  kekcache_entry *e = put_pinned(c, "acme", 1, 0x10);
  uint64_t before = kekcache_epoch(c);
  kekcache_set_state(c, e, 1, 1, 1, 1000, before);
  kekcache_forget_state(c);
  ck_assert_int_eq(kekcache_state(c, e, 1000, 500, &st, &tst), 0);
  ck_assert_ptr_null(kekcache_get_current(c, "acme", 1000, 500, &st, &tst));
  /* A keystore read begun before the change is not cached after it. */
  kekcache_set_state(c, e, 1, 1, 1, 1001, before);
  ck_assert_int_eq(kekcache_state(c, e, 1001, 500, &st, &tst), 0);
  kekcache_set_state(c, e, 1, 1, 1, 1002, kekcache_epoch(c));
  ck_assert_int_eq(kekcache_state(c, e, 1002, 500, &st, &tst), 1);
  /* The handle itself stays cached. */
  kekcache_release(c, e);
  ck_assert_int_eq(present(c, "acme", 1), 1);
  kekcache_free(c);
}
END_TEST

/* The keystore's change counter: unchanged, it keeps every state fresh; moved, none. */
START_TEST(test_validation_by_change_counter)
{
  kekcache *c = kekcache_new(4);
  int st = 0, tst = 0;
  kekcache_entry *e = put_pinned(c, "acme", 1, 0x10);
  /* The first value seen makes nothing fresh: it is not known what it covered. */
  ck_assert_int_eq(kekcache_validation_due(c, 900, 500), 1);
  ck_assert_int_eq(kekcache_validation_due(c, 900, 500), 0); /* one check at a time */
  kekcache_validate(c, 1, 7, 900);
  kekcache_set_state(c, e, 1, 1, 1, 1000, kekcache_epoch(c));
  ck_assert_int_eq(kekcache_state(c, e, 1499, 500, &st, &tst), 1);
  /* Half a TTL after the last check, another one is due. */
  ck_assert_int_eq(kekcache_validation_due(c, 1100, 500), 0);
  ck_assert_int_eq(kekcache_validation_due(c, 1400, 500), 1);
  kekcache_validate(c, 1, 7, 1400); /* unchanged */
  /* Fresh past its own TTL: the check at 1400 vouches for it until 1900. */
  ck_assert_int_eq(kekcache_state(c, e, 1899, 500, &st, &tst), 1);
  ck_assert_ptr_eq(kekcache_get_current(c, "acme", 1899, 500, &st, &tst), e);
  kekcache_release(c, e);
  ck_assert_int_eq(kekcache_state(c, e, 1900, 500, &st, &tst), 0);
  /* A failed read changes nothing (and frees the check for the next caller). */
  ck_assert_int_eq(kekcache_validation_due(c, 1700, 500), 1);
  kekcache_validate(c, 0, 0, 1700);
  ck_assert_int_eq(kekcache_state(c, e, 1899, 500, &st, &tst), 1);
  /* The counter moved: every state is stale at once. */
  ck_assert_int_eq(kekcache_validation_due(c, 1750, 500), 1);
  kekcache_validate(c, 1, 8, 1750);
  ck_assert_int_eq(kekcache_state(c, e, 1751, 500, &st, &tst), 0);
  ck_assert_ptr_null(kekcache_get_current(c, "acme", 1751, 500, &st, &tst));
  kekcache_release(c, e);
  kekcache_free(c);
}
END_TEST

START_TEST(test_removed_and_evicted_entries_leave_the_tenant_index)
{
  kekcache *c = kekcache_new(1);
  int st = 0, tst = 0;
  hsm_key key = 0, unload[2] = {0, 0};
  size_t n = 0;
  kekcache_entry *e = put_pinned(c, "acme", 1, 0x10);
  kekcache_set_state(c, e, 1, 1, 1, 1000, kekcache_epoch(c));
  kekcache_release(c, e);
  ck_assert_int_eq(kekcache_remove(c, "acme", 1, &key), 1);
  ck_assert_ptr_null(kekcache_get_current(c, "acme", 1000, 500, &st, &tst));
  e = put_pinned(c, "acme", 2, 0x20);
  kekcache_set_state(c, e, 1, 1, 1, 1000, kekcache_epoch(c));
  kekcache_release(c, e);
  /* Capacity 1: inserting another tenant evicts acme's entry. */
  e = kekcache_put(c, "beta", 1, 0x30, unload, &n);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(unload[0], 0x20);
  kekcache_release(c, e);
  ck_assert_ptr_null(kekcache_get_current(c, "acme", 1000, 500, &st, &tst));
  kekcache_free(c);
}
END_TEST

/* ---- concurrency ---- */

#define THREADS 4
#define OPS 10000
#define KEYS 64
#define CAPACITY 16

struct worker {
  kekcache *c;
  unsigned seed;
  atomic_ulong *handle_seq;
  unsigned long puts;    /* keys offered to the cache */
  unsigned long unloads; /* keys handed back by it */
  unsigned long bad;     /* entries whose key belongs to another (tenant, version) */
};

static void
key_name(unsigned k, char *tenant, size_t len, uint32_t *version)
{
  snprintf(tenant, len, "tenant-%u", k / 4);
  *version = k % 4 + 1;
}

static void *
worker_main(void *arg)
{
  struct worker *w = arg;
  for (int i = 0; i < OPS; i++) {
    unsigned k = (unsigned)rand_r(&w->seed) % KEYS;
    char tenant[32];
    uint32_t version;
    key_name(k, tenant, sizeof(tenant), &version);
    kekcache_entry *e = kekcache_get(w->c, tenant, version);
    if (e == NULL) {
      /* Low byte names the (tenant, version) so a mix-up is detectable. */
      hsm_key key = ((hsm_key)atomic_fetch_add(w->handle_seq, 1) << 8) | k;
      hsm_key unload[2];
      size_t n = 0;
      e = kekcache_put(w->c, tenant, version, key, unload, &n);
      w->puts++;
      w->unloads += n;
      if (e == NULL) {
        continue;
      }
    }
    if ((kekcache_entry_key(e) & 0xff) != k) {
      w->bad++;
    }
    if (rand_r(&w->seed) % 8 == 0) {
      kekcache_grant_uses(w->c, e, 1);
      (void)kekcache_take_use(w->c, e);
    }
    kekcache_release(w->c, e);
  }
  return NULL;
}

START_TEST(test_concurrent_get_put_release_keeps_cache_consistent)
{
  kekcache *c = kekcache_new(CAPACITY);
  atomic_ulong seq = 1;
  struct worker w[THREADS];
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) {
    memset(&w[i], 0, sizeof(w[i]));
    w[i].c = c;
    w[i].seed = 0x5eed0000u + (unsigned)i;
    w[i].handle_seq = &seq;
    ck_assert_int_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
  }
  unsigned long puts = 0, unloads = 0, bad = 0;
  for (int i = 0; i < THREADS; i++) {
    ck_assert_int_eq(pthread_join(t[i], NULL), 0);
    puts += w[i].puts;
    unloads += w[i].unloads;
    bad += w[i].bad;
  }
  ck_assert_uint_eq(bad, 0);
  ck_assert_uint_gt(puts, CAPACITY); /* the test did exercise eviction */
  size_t size = kekcache_size(c);
  ck_assert_uint_le(size, CAPACITY); /* nothing is pinned any more */

  /* Every key offered is either still cached or was handed back exactly once. */
  size_t removed = 0;
  for (unsigned k = 0; k < KEYS; k++) {
    char tenant[32];
    uint32_t version;
    hsm_key out = 0;
    key_name(k, tenant, sizeof(tenant), &version);
    if (kekcache_remove(c, tenant, version, &out) == 1) {
      ck_assert_uint_eq(out & 0xff, k);
      removed++;
    }
  }
  ck_assert_uint_eq(removed, size);
  ck_assert_uint_eq(puts, unloads + size);
  ck_assert_uint_eq(kekcache_size(c), 0);
  kekcache_free(c);
}
END_TEST

static Suite *
kekcache_suite(void)
{
  Suite *s = suite_create("kekcache");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_new_refuses_zero_capacity);
  tcase_add_test(tc, test_get_on_empty_cache_misses);
  tcase_add_test(tc, test_put_then_get_returns_same_key);
  tcase_add_test(tc, test_put_refuses_overlong_tenant_and_hands_key_back);
  tcase_add_test(tc, test_full_cache_hands_back_least_recently_used_key);
  tcase_add_test(tc, test_get_refreshes_lru_position);
  tcase_add_test(tc, test_pinned_entries_are_never_evicted);
  tcase_add_test(tc, test_eviction_skips_pinned_lru_entry);
  tcase_add_test(tc, test_size_returns_to_capacity_after_pins_are_released);
  tcase_add_test(tc, test_duplicate_put_keeps_existing_entry_and_hands_back_new_key);
  tcase_add_test(tc, test_remove_unpinned_returns_its_key);
  tcase_add_test(tc, test_remove_pinned_returns_zero_and_release_frees_it);
  tcase_add_test(tc, test_release_null_is_noop);
  tcase_add_test(tc, test_take_use_spends_granted_uses);
  tcase_add_test(tc, test_uses_stay_with_the_entry_across_pins);
  tcase_add_test(tc, test_state_is_unknown_until_set);
  tcase_add_test(tc, test_state_is_used_for_ttl_then_stale);
  tcase_add_test(tc, test_get_current_returns_the_newest_version_read);
  tcase_add_test(tc, test_forget_state_makes_every_state_stale);
  tcase_add_test(tc, test_validation_by_change_counter);
  tcase_add_test(tc, test_removed_and_evicted_entries_leave_the_tenant_index);
  suite_add_tcase(s, tc);

  TCase *tt = tcase_create("threads");
  tcase_set_timeout(tt, 60);
  tcase_add_test(tt, test_concurrent_get_put_release_keeps_cache_consistent);
  suite_add_tcase(s, tt);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(kekcache_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
