/* Test-only PKCS#11 probe: what an attacker holding the token and its PIN could read. */
#ifndef TKMS_P11_PROBE_H
#define TKMS_P11_PROBE_H

#include <stddef.h>
#include <stdint.h>

/*
 * p11_probe_unwrap_kek logs in with the PIN, as an attacker who stole it
 * would, and unwraps |token| (a KEK key token from the keystore) under the
 * root key. With |extractable| it asks for a non-sensitive, extractable
 * object and reads its value into |out|; without, it asks for what kmsd asks
 * for (sensitive, not extractable). Returns 0 if the unwrap (and read)
 * worked, 1 if the HSM refused the unwrap or the read, -1 if the probe
 * itself could not run.
 */
int p11_probe_unwrap_kek(const char *module, const char *label, const char *pin_file,
                         const uint8_t *token, size_t token_len, uint32_t mech,
                         int extractable, uint8_t out[32]);

#endif
