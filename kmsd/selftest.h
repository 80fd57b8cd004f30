/* Known-answer self-tests run at start-up: kmsd serves only if its cryptography gives the published answers. */
#ifndef KMSD_SELFTEST_H
#define KMSD_SELFTEST_H

#include <stddef.h>

#include "hsm.h"

/*
 * selftest_software checks the algorithms kmsd and its clients compute with
 * OpenSSL: AES-256-GCM (the McGrew-Viega / NIST SP 800-38D test case 16),
 * RFC 5649 key wrap with padding (RFC 5649 section 6, both examples),
 * HKDF-SHA-256 (RFC 5869 A.1) and HKDF-SHA-512 (the A.1 inputs). Returns
 * KMS_OK, or KMS_ERR_INTERNAL with the failed test named in |err|.
 */
int selftest_software(char *err, size_t err_len);

/*
 * selftest_hsm checks what the HSM computes for kmsd: AES-256-GCM of the same
 * test vector under an imported test key (encrypt, decrypt, and a flipped tag
 * refused), a KEK generated, wrapped under the root key, unwrapped again and
 * used for a GCM round trip (then thrown away), and a checkpoint signature
 * made with the audit signing key |sign_key_id| and verified with OpenSSL
 * against its public key (a changed message must not verify). Returns KMS_OK,
 * or an error with the failed test in |err|.
 */
int selftest_hsm(hsm *h, const char *sign_key_id, char *err, size_t err_len);

#endif
