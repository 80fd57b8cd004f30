/* A buffer for key material: locked in memory, kept out of core dumps, wiped on free. */
#ifndef KMS_SECRET_H
#define KMS_SECRET_H

#include <stddef.h>
#include <stdint.h>

typedef struct kms_secret kms_secret;

/*
 * kms_secret_new returns a zero-filled secret of |len| bytes (1..4096), or
 * NULL on allocation failure. The bytes come from OpenSSL's secure heap when
 * the process initialised one (kmsd does), else from pages of their own that
 * are mlock()ed and marked MADV_DONTDUMP (best effort: a failed mlock under a
 * low RLIMIT_MEMLOCK is tolerated; the bytes are still wiped on free).
 */
kms_secret *kms_secret_new(size_t len);

/* kms_secret_from copies |len| bytes at |src| into a new secret. */
kms_secret *kms_secret_from(const uint8_t *src, size_t len);

/* kms_secret_data returns the secret's bytes; owned by |s|. */
uint8_t *kms_secret_data(kms_secret *s);
const uint8_t *kms_secret_cdata(const kms_secret *s);

size_t kms_secret_len(const kms_secret *s);

/* kms_secret_free wipes and releases |s|. NULL is a no-op. */
void kms_secret_free(kms_secret *s);

#endif
