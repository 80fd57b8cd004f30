/* Test-only PKCS#11 probe: what an attacker holding the token and its PIN could read. */
#ifndef TKMS_P11_PROBE_H
#define TKMS_P11_PROBE_H

#include <stddef.h>
#include <stdint.h>

/*
 * p11_probe_unwrap_kek logs in with the PIN, as an attacker who stole it
 * would, and unwraps |token| (a KEK key token from the keystore) under root
 * key |root_version|. With |extractable| it asks for a non-sensitive,
 * extractable object and reads its value into |out|; without, it asks for what
 * kmsd asks for (sensitive; not extractable under a legacy root, extractable
 * to trusted keys only under a trusted one). Returns 0 if the unwrap (and
 * read) worked, 1 if the HSM refused the unwrap or the read, -1 if the probe
 * itself could not run.
 */
int p11_probe_unwrap_kek(const char *module, const char *label, const char *pin_file,
                         uint32_t root_version, const uint8_t *token, size_t token_len,
                         uint32_t mech, int extractable, uint8_t out[32]);

/*
 * p11_probe_wrap_loaded_kek unwraps |token| as kmsd does, then, as the
 * attacker, makes an AES key of its own (wrap allowed, extractable, not
 * sensitive) and asks the HSM to wrap the KEK under it, which would hand out
 * the KEK's bytes. Writes what C_WrapKey answered to *out_rv and returns 0,
 * or -1 if the probe could not get that far. *out_read_rv: reading CKA_VALUE.
 */
int p11_probe_wrap_loaded_kek(const char *module, const char *label, const char *pin_file,
                              uint32_t root_version, const uint8_t *token, size_t token_len,
                              uint32_t mech, unsigned long *out_rv, unsigned long *out_read_rv);

/* p11_probe_count_root: objects with CKA_ID "tenantkms-root-v<version>" (user login), or -1. */
int p11_probe_count_root(const char *module, const char *label, const char *pin_file,
                         uint32_t version);

/*
 * p11_probe_make_root makes, as the user, a root key "tenantkms-root-v<version>"
 * that is sensitive, not extractable and wrap/unwrap only, but whose unwrap
 * template is missing (|extractable_kek| 0) or lets unwrapped KEKs be
 * extractable to any key (1). kmsd must refuse both. 0 on success, else -1.
 */
int p11_probe_make_root(const char *module, const char *label, const char *pin_file,
                        uint32_t version, int extractable_kek);

#endif
