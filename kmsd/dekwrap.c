/* Encoding of wrapped data keys and of the AAD that ties them to tenant, version and context. */
#include "dekwrap.h"

#include <stdlib.h>
#include <string.h>

#include "kms_err.h"
#include "kms_wire.h"

static const char aad_label[] = "tenantkms/dek/v1";

void
dekwrap_blob_encode(uint8_t out[DEKWRAP_BLOB_LEN], const struct dek_blob *b)
{
  out[0] = DEKWRAP_FORMAT_V1;
  out[1] = (uint8_t)(b->kek_version >> 24);
  out[2] = (uint8_t)(b->kek_version >> 16);
  out[3] = (uint8_t)(b->kek_version >> 8);
  out[4] = (uint8_t)b->kek_version;
  memcpy(out + 5, b->iv, DEKWRAP_IV_LEN);
  memcpy(out + 5 + DEKWRAP_IV_LEN, b->ct_tag, sizeof(b->ct_tag));
}

int
dekwrap_blob_parse(struct dek_blob *out, const uint8_t *in, size_t in_len)
{
  memset(out, 0, sizeof(*out));
  if (in == NULL || in_len != DEKWRAP_BLOB_LEN || in[0] != DEKWRAP_FORMAT_V1) {
    return KMS_ERR_DECRYPT;
  }
  uint32_t v = ((uint32_t)in[1] << 24) | ((uint32_t)in[2] << 16) |
               ((uint32_t)in[3] << 8) | (uint32_t)in[4];
  if (v == 0) {
    return KMS_ERR_DECRYPT;
  }
  out->kek_version = v;
  memcpy(out->iv, in + 5, DEKWRAP_IV_LEN);
  memcpy(out->ct_tag, in + 5 + DEKWRAP_IV_LEN, sizeof(out->ct_tag));
  return KMS_OK;
}

/* A tiny writer that refuses to run past its buffer. */
struct wbuf {
  uint8_t *p;
  size_t cap;
  size_t len;
  int overflow;
};

static void
put(struct wbuf *w, const void *src, size_t n)
{
  if (w->overflow || n > w->cap - w->len) {
    w->overflow = 1;
    return;
  }
  memcpy(w->p + w->len, src, n);
  w->len += n;
}

static void
put_u8(struct wbuf *w, uint8_t v)
{
  put(w, &v, 1);
}

static int
cmp_entry(const void *a, const void *b)
{
  const Tkms__ContextEntry *ea = *(Tkms__ContextEntry *const *)a;
  const Tkms__ContextEntry *eb = *(Tkms__ContextEntry *const *)b;
  return strcmp(ea->key, eb->key); /* bytewise: keys are ASCII */
}

int
dekwrap_aad(uint8_t *out, size_t cap, size_t *out_len, const char *tenant_id,
            uint32_t kek_version, size_t n_ctx, Tkms__ContextEntry *const *ctx)
{
  Tkms__ContextEntry *sorted[KMS_CONTEXT_MAX_ENTRIES];
  struct wbuf w = {out, cap, 0, 0};
  size_t tl = strlen(tenant_id);

  *out_len = 0;
  if (n_ctx > KMS_CONTEXT_MAX_ENTRIES || tl > KMS_TENANT_ID_MAX) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (n_ctx > 0) {
    memcpy(sorted, ctx, n_ctx * sizeof(sorted[0]));
    qsort(sorted, n_ctx, sizeof(sorted[0]), cmp_entry);
  }
  put(&w, aad_label, sizeof(aad_label) - 1);
  put_u8(&w, (uint8_t)tl);
  put(&w, tenant_id, tl);
  uint8_t v[4] = {(uint8_t)(kek_version >> 24), (uint8_t)(kek_version >> 16),
                  (uint8_t)(kek_version >> 8), (uint8_t)kek_version};
  put(&w, v, sizeof(v));
  put_u8(&w, (uint8_t)n_ctx);
  for (size_t i = 0; i < n_ctx; i++) {
    const char *val = sorted[i]->value != NULL ? sorted[i]->value : "";
    size_t kl = strlen(sorted[i]->key);
    size_t vl = strlen(val);
    if (kl > KMS_CONTEXT_KEY_MAX || vl > KMS_CONTEXT_VALUE_MAX) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    put_u8(&w, (uint8_t)kl);
    put(&w, sorted[i]->key, kl);
    put_u8(&w, (uint8_t)(vl >> 8));
    put_u8(&w, (uint8_t)vl);
    put(&w, val, vl);
  }
  if (w.overflow) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = w.len;
  return KMS_OK;
}
