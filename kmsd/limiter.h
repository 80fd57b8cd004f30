/* Abuse limits kept in memory: token buckets per principal, connection counts per peer address. */
#ifndef KMSD_LIMITER_H
#define KMSD_LIMITER_H

#include <stdbool.h>
#include <stdint.h>

/*
 * One abusive client must not starve the others (docs/OPERATIONS.md,
 * "Limits"). Both tables are bounded: a principal's bucket is forgotten once
 * it has refilled (it would allow a full burst anyway), and a peer's count
 * once it drops to zero. Not thread-safe: the event loop alone uses it.
 */
typedef struct limits limits;

/*
 * limits_new: |rate| requests per second per principal with bursts of
 * |burst| (rate 0: no rate limit). Returns NULL on allocation failure.
 */
limits *limits_new(unsigned rate, unsigned burst);

/* limits_free frees |l|. NULL is a no-op. */
void limits_free(limits *l);

/*
 * limits_rate_allow takes one token from |principal|'s bucket at monotonic
 * time |now_ms|: true if the request may go on, false if the principal is
 * over its rate (answer RESOURCE_EXHAUSTED). Always true without a rate.
 * When the table is full of principals with recent traffic, a new principal
 * is refused (fail closed) rather than resetting someone else's bucket.
 */
bool limits_rate_allow(limits *l, const char *principal, int64_t now_ms);

/* limits_rate_allow_now is limits_rate_allow at the current monotonic time. */
bool limits_rate_allow_now(limits *l, const char *principal);

/*
 * limits_peer_acquire counts one more connection from |ip| (an address
 * without port) if it has fewer than |max|: true if counted.
 * limits_peer_release undoes one acquire.
 */
bool limits_peer_acquire(limits *l, const char *ip, unsigned max);
void limits_peer_release(limits *l, const char *ip);

/* limits_peer_count returns the connections counted for |ip|. */
unsigned limits_peer_count(const limits *l, const char *ip);

#endif
