/* A fixed pool of threads with a bounded FIFO, and a completion queue drained by the loop. */
#include "workers.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "kms_err.h"
#include "log.h"

struct worker {
  struct workers *pool;
  pthread_t thread;
  struct worker_ctx ctx;
  int started;
};

struct workers {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct work_item *head, *tail; /* waiting jobs */
  size_t queued, running, max_queued;
  int stopping;

  pthread_mutex_t done_mu;
  struct work_item *done_head, *done_tail;
  struct event *done_ev;

  struct worker *threads;
  unsigned n;
};

static void *
worker_main(void *arg)
{
  struct worker *wk = arg;
  struct workers *w = wk->pool;
  int finished = 0;
  for (;;) {
    pthread_mutex_lock(&w->mu);
    if (finished) {
      /* Counted as running until now, after it joined the done queue: never undercounted. */
      w->running--;
      finished = 0;
    }
    while (w->head == NULL && !w->stopping) {
      pthread_cond_wait(&w->cv, &w->mu);
    }
    struct work_item *it = w->head;
    if (it == NULL) {
      pthread_mutex_unlock(&w->mu);
      return NULL; /* stopping and drained */
    }
    w->head = it->next;
    if (w->head == NULL) {
      w->tail = NULL;
    }
    w->queued--;
    w->running++;
    pthread_mutex_unlock(&w->mu);

    it->next = NULL;
    finished = 1;
    if (!it->work(it, &wk->ctx)) {
      continue; /* answered by the job itself: nothing for the loop */
    }

    pthread_mutex_lock(&w->done_mu);
    int was_empty = w->done_head == NULL;
    if (w->done_tail != NULL) {
      w->done_tail->next = it;
    } else {
      w->done_head = it;
    }
    w->done_tail = it;
    pthread_mutex_unlock(&w->done_mu);
    /* Only the first job of a batch wakes the loop: drain_done takes the whole
     * queue, and the next job after that finds it empty again. */
    if (was_empty) {
      event_active(w->done_ev, EV_READ, 0);
    }
  }
}

static void
drain_done(evutil_socket_t fd, short what, void *arg)
{
  struct workers *w = arg;
  pthread_mutex_lock(&w->done_mu);
  struct work_item *it = w->done_head;
  w->done_head = w->done_tail = NULL;
  pthread_mutex_unlock(&w->done_mu);
  while (it != NULL) {
    struct work_item *next = it->next;
    it->next = NULL;
    it->done(it);
    it = next;
  }
}

int
workers_start(workers **out, struct event_base *base, unsigned n, hsm *h,
              const char *ks_url, size_t max_queued, char *err, size_t err_len)
{
  int r = KMS_ERR_ALLOC;
  *out = NULL;
  struct workers *w = calloc(1, sizeof(*w));
  if (w == NULL) {
    return r;
  }
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  pthread_mutex_init(&w->done_mu, NULL);
  w->max_queued = max_queued;
  w->n = n;
  w->threads = calloc(n, sizeof(*w->threads));
  w->done_ev = event_new(base, -1, 0, drain_done, w);
  if (w->threads == NULL || w->done_ev == NULL) {
    goto out;
  }
  for (unsigned i = 0; i < n; i++) {
    struct worker *wk = &w->threads[i];
    wk->pool = w;
    wk->ctx.id = i;
    r = hsm_session_open(h, &wk->ctx.hs);
    if (r != KMS_OK) {
      snprintf(err, err_len, "worker %u: opening an HSM session: %s", i, kms_strerror(r));
      goto out;
    }
    r = keystore_open(&wk->ctx.ks, ks_url, err, err_len);
    if (r != KMS_OK) {
      goto out;
    }
    if (pthread_create(&wk->thread, NULL, worker_main, wk) != 0) {
      snprintf(err, err_len, "worker %u: pthread_create failed", i);
      r = KMS_ERR_INTERNAL;
      goto out;
    }
    wk->started = 1;
  }
  *out = w;
  w = NULL;
  r = KMS_OK;
out:
  if (w != NULL) {
    workers_stop(w);
  }
  return r;
}

int
workers_submit(workers *w, struct work_item *item)
{
  int r = KMS_OK;
  item->next = NULL;
  pthread_mutex_lock(&w->mu);
  if (w->stopping) {
    r = KMS_ERR_UNAVAILABLE;
  } else if (w->queued >= w->max_queued) {
    r = KMS_ERR_RESOURCE_EXHAUSTED;
  } else {
    if (w->tail != NULL) {
      w->tail->next = item;
    } else {
      w->head = item;
    }
    w->tail = item;
    w->queued++;
    pthread_cond_signal(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  return r;
}

size_t
workers_pending(workers *w)
{
  pthread_mutex_lock(&w->mu);
  size_t n = w->queued + w->running;
  pthread_mutex_unlock(&w->mu);
  pthread_mutex_lock(&w->done_mu);
  for (struct work_item *it = w->done_head; it != NULL; it = it->next) {
    n++;
  }
  pthread_mutex_unlock(&w->done_mu);
  return n;
}

void
workers_stop(workers *w)
{
  if (w == NULL) {
    return;
  }
  pthread_mutex_lock(&w->mu);
  w->stopping = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  for (unsigned i = 0; w->threads != NULL && i < w->n; i++) {
    struct worker *wk = &w->threads[i];
    if (wk->started) {
      pthread_join(wk->thread, NULL);
    }
    keystore_close(wk->ctx.ks);
    kms_secret_free(wk->ctx.dek_pool);
    if (wk->ctx.hs != NULL) {
      hsm_session_close(wk->ctx.hs);
    }
  }
  if (w->done_ev != NULL) {
    drain_done(-1, 0, w);
    event_free(w->done_ev);
  }
  free(w->threads);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->done_mu);
  free(w);
}
