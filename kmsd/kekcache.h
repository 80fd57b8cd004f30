/* A bounded cache of loaded KEK handles, keyed by (tenant, version), least recently used out. */
#ifndef KMSD_KEKCACHE_H
#define KMSD_KEKCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "hsm.h"

/*
 * Loading a KEK (C_UnwrapKey) costs ~50 us on SoftHSM2 and a round trip on a
 * network HSM; the cache keeps the handles of loaded KEKs so a request costs
 * one hash lookup. Entries in use are pinned (reference counted) and never
 * evicted; the capacity may be exceeded by the number of pinned entries.
 * Thread-safe.
 */
typedef struct kekcache kekcache;
typedef struct kekcache_entry kekcache_entry;

kekcache *kekcache_new(size_t capacity);

/* kekcache_free frees the cache. It does not unload the keys (hsm_close does). */
void kekcache_free(kekcache *c);

/* kekcache_get returns the pinned entry for (tenant, version), or NULL. */
kekcache_entry *kekcache_get(kekcache *c, const char *tenant_id, uint32_t version);

/*
 * kekcache_put inserts a freshly loaded |key| and returns its pinned entry.
 * If another thread inserted the same (tenant, version) meanwhile, that entry
 * is returned and |key| is handed back in |*out_unload| for the caller to
 * unload. If the insert pushed out the least recently used unpinned entry, its
 * key is handed back the same way. *out_unload_n says how many (0-2).
 * Returns NULL only on allocation failure (then |key| is in *out_unload too).
 */
kekcache_entry *kekcache_put(kekcache *c, const char *tenant_id, uint32_t version,
                             hsm_key key, hsm_key out_unload[2], size_t *out_unload_n);

/* kekcache_entry_key returns the HSM handle of a pinned entry. */
hsm_key kekcache_entry_key(const kekcache_entry *e);

/* kekcache_release unpins |e|. NULL is a no-op. */
void kekcache_release(kekcache *c, kekcache_entry *e);

/*
 * kekcache_remove drops (tenant, version) from the cache, e.g. when a key is
 * disabled. Returns 1 and its key in *out_unload if it was present and
 * unpinned; a pinned entry is only marked and leaves on its last release.
 */
int kekcache_remove(kekcache *c, const char *tenant_id, uint32_t version,
                    hsm_key *out_unload);

/*
 * Encryptions under a KEK version are counted against its limit (NIST SP
 * 800-38D random-IV bound) in blocks reserved in the keystore; the cache
 * entry holds the unspent part of the reservations made by this process.
 * kekcache_take_use spends one and returns 1, or returns 0 when none is left.
 */
int kekcache_take_use(kekcache *c, kekcache_entry *e);

/* kekcache_grant_uses adds |n| freshly reserved uses to |e|. */
void kekcache_grant_uses(kekcache *c, kekcache_entry *e, uint64_t n);

/* kekcache_size returns the number of entries. */
size_t kekcache_size(kekcache *c);

/*
 * Cached KEK state. Reading the keystore for every request (a SQLite read
 * transaction: two fcntl locks and a B-tree lookup) cost a sixth of kmsd's
 * CPU, so each entry also remembers the version's state, its tenant's state
 * and whether it was the tenant's newest version, as read from the keystore.
 * The staleness rule (docs/PERFORMANCE.md):
 *   - a state is used for at most |ttl_ms| after it was read (changes made by
 *     another process sharing the keystore show within that time);
 *   - kekcache_forget_state makes every cached state stale at once: call it
 *     after this process changed any key state (rotation, disable, destroy).
 * Times are monotonic milliseconds.
 */

/*
 * kekcache_get_current returns the pinned entry last read as |tenant_id|'s
 * newest version, with the version's and the tenant's state, if that read is
 * fresh; else NULL.
 */
kekcache_entry *kekcache_get_current(kekcache *c, const char *tenant_id, int64_t now_ms,
                                     int64_t ttl_ms, int *out_state, int *out_tenant_state);

/* kekcache_state returns 1 and the states of pinned |e| if fresh, else 0. */
int kekcache_state(kekcache *c, const kekcache_entry *e, int64_t now_ms, int64_t ttl_ms,
                   int *out_state, int *out_tenant_state);

/* kekcache_entry_version returns the KEK version of |e|. */
uint32_t kekcache_entry_version(const kekcache_entry *e);

/*
 * kekcache_epoch returns the current epoch. Take it before reading the
 * keystore and hand it to kekcache_set_state, so a read that raced with
 * kekcache_forget_state is not cached.
 */
uint64_t kekcache_epoch(kekcache *c);

/*
 * kekcache_set_state records the states of pinned |e| (version, tenant) as
 * read from the keystore at |now_ms| (begun in epoch |read_epoch|); with
 * |current| nonzero, also that it was the tenant's newest version (unless an
 * entry of the same tenant already has a newer one). Ignored if the epoch
 * moved on meanwhile.
 */
void kekcache_set_state(kekcache *c, kekcache_entry *e, int state, int tenant_state,
                        int current, int64_t now_ms, uint64_t read_epoch);

/*
 * Revalidation by the keystore's change counter (keystore_state_gen): instead
 * of re-reading every tenant's state once per |ttl_ms|, one read of the
 * counter keeps all of them fresh while it does not move.
 * kekcache_validation_due returns 1 (and claims the check, so one thread
 * does it) when the last check is half a TTL old. The caller takes the time,
 * reads the counter, and reports with kekcache_validate (|ok| 0: the read
 * failed, nothing changes): the same value as last time extends every state
 * of the current epoch to |started_ms| + TTL; another value (or the first
 * one seen) makes every state stale, like kekcache_forget_state.
 */
int kekcache_validation_due(kekcache *c, int64_t now_ms, int64_t ttl_ms);
void kekcache_validate(kekcache *c, int ok, uint64_t gen, int64_t started_ms);

/* kekcache_forget_state makes every cached state stale (handles stay loaded). */
void kekcache_forget_state(kekcache *c);

#endif
