/* The worker pool: HSM and keystore work off the event loop, results back onto it. */
#ifndef KMSD_WORKERS_H
#define KMSD_WORKERS_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "hsm.h"
#include "keystore.h"
#include "kms_secret.h"

/*
 * Each worker thread owns one PKCS#11 session and one keystore handle, so a
 * slow HSM (a network HSM answers in milliseconds) never stalls the loop and
 * N workers hide N-fold latency. A job's work() runs on a worker; its done()
 * runs later on the event-loop thread, in completion order.
 */
struct worker_ctx {
  hsm_session *hs;
  keystore *ks;
  unsigned id;
  kms_secret *dek_pool; /* HSM random bytes not yet used as data keys (keyops.c) */
  size_t dek_pool_left;
  uint8_t iv_pool[64 * 12]; /* RAND_bytes output not yet used as GCM IVs (keyops_take_iv) */
  size_t iv_pool_left;
};

struct work_item {
  /*
   * Runs on a worker. Returns true to have done() called on the loop; false
   * if it finished the item itself (it may have freed it): then done() is
   * not called and the loop is not woken for it.
   */
  bool (*work)(struct work_item *item, struct worker_ctx *w);
  void (*done)(struct work_item *item);
  struct work_item *next;
};

typedef struct workers workers;

/*
 * workers_start starts |n| threads on |h| and the keystore at |ks_url|; done()
 * callbacks are delivered on |base|. At most |max_queued| jobs wait.
 */
int workers_start(workers **out, struct event_base *base, unsigned n, hsm *h,
                  const char *ks_url, size_t max_queued, char *err, size_t err_len);

/*
 * workers_submit queues |item|. Returns KMS_OK, or KMS_ERR_RESOURCE_EXHAUSTED
 * if the queue is full, or KMS_ERR_UNAVAILABLE when stopping (then done() will
 * not be called and the caller keeps the item).
 */
int workers_submit(workers *w, struct work_item *item);

/* workers_pending returns the number of queued plus running jobs. */
size_t workers_pending(workers *w);

/*
 * workers_stop finishes queued jobs, joins the threads, delivers the last
 * done() callbacks and frees |w|. Call from the loop thread.
 */
void workers_stop(workers *w);

#endif
