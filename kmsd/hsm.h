/* The HSM layer: the only code that speaks PKCS#11 (and includes pkcs11.h). */
#ifndef KMSD_HSM_H
#define KMSD_HSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Key hierarchy inside the HSM (docs/ARCHITECTURE.md, docs/LIFECYCLE.md):
 *   root key  - AES-256 token object (CKA_TOKEN, CKA_SENSITIVE, not
 *               CKA_EXTRACTABLE, CKA_WRAP/CKA_UNWRAP only), found by CKA_ID
 *               "tenantkms-root-v<N>". Trusted roots (CKA_TRUSTED, public)
 *               are made by the security officer's key ceremony
 *               (hsm_root_ceremony); a legacy root v1 (private, not trusted)
 *               is made by kmsd at first start when the token has none.
 *   KEK       - AES-256 generated inside the HSM, leaves it only as a "key
 *               token": the RFC 5649 wrap of the KEK under a root key. Under a
 *               trusted root it is CKA_WRAP_WITH_TRUSTED: only a trusted key
 *               (another root) can wrap it, which is what root rotation does.
 *   loaded KEK- the token unwrapped back into a session object (sensitive,
 *               CKA_ENCRYPT/CKA_DECRYPT only), used for AES-GCM; not
 *               extractable under a legacy root, wrappable by trusted keys
 *               only under a trusted one.
 */

typedef struct hsm hsm;                 /* module, token, login; thread-safe */
typedef struct hsm_session hsm_session; /* one PKCS#11 session; one thread at a time */
/*
 * Handle of a loaded KEK or a key of ours (a CK_OBJECT_HANDLE tagged with the
 * HSM generation it was made in, see hsm_key_current): a handle from before a
 * session or token reset is refused, never used, since the module may have
 * given its number to another object since.
 */
typedef uint64_t hsm_key;

#define HSM_GCM_IV_LEN 12
#define HSM_GCM_TAG_LEN 16
#define HSM_KEY_TOKEN_MAX 128 /* bytes of a wrapped KEK */

struct hsm_config {
  const char *module_path; /* e.g. /usr/lib/softhsm/libsofthsm2.so */
  const char *token_label; /* the token is found by label, never by slot id */
  const char *pin_file;    /* user PIN, first line; wiped from memory after login */
  uint32_t root_version;   /* root key version new KEKs wrap under; 0: the newest on the token */
  /*
   * The root key must already exist: kmsd sets this when its keystore holds
   * tenants, so a wrong or wiped token is refused instead of given a new root
   * that would orphan every key token (and serve "healthy" while every
   * tenant fails).
   */
  bool require_root;
};

/*
 * Recovery (docs/OPERATIONS.md, "When the HSM is unavailable"). A call that
 * fails because the device, the token, a session or the login went away, or
 * that takes longer than the call timeout (hsm_set_call_timeout), marks the
 * HSM down. While down, every operation fails at once with KMS_ERR_HSM
 * (UNAVAILABLE: no request waits behind a dead or stalled HSM), except that at most every 250 ms one
 * caller probes it: the owner session is checked, and if it is gone (or the
 * failure said sessions or the login were lost) every session of the process
 * is closed, the token is found again by label, a new owner session is opened,
 * the PIN is read again from the pin file to log in, and the root key is found
 * again (never created: a token without it stays down). Success starts a new
 * generation: worker sessions reopen by themselves on their next call, and
 * key handles of the old generation (loaded KEKs died with the old owner
 * session) are refused, so callers drop and reload them (hsm_key_current).
 */

/*
 * hsm_open loads the module, initialises it, finds the token by label, logs in
 * with the PIN from |cfg->pin_file|, picks the RFC 5649 wrap mechanism the
 * module offers (CKM_AES_KEY_WRAP_KWP if listed, else CKM_AES_KEY_WRAP_PAD),
 * finds every root key on the token and makes sure the one of |cfg->root_version|
 * exists (with none at all and not |require_root|: creates a legacy root v1
 * once). On failure returns an
 * error code and writes a reason (never the PIN) into |err|.
 */
int hsm_open(hsm **out, const struct hsm_config *cfg, char *err, size_t err_len);

/* hsm_close destroys loaded KEKs, logs out and finalises. NULL is a no-op. */
void hsm_close(hsm *h);

/* hsm_session_open opens a session for one worker thread. */
int hsm_session_open(hsm *h, hsm_session **out);
void hsm_session_close(hsm_session *s);

/*
 * hsm_kek_generate creates a fresh AES-256 KEK inside the HSM, wraps it under
 * the current root key and destroys the unwrapped object. Writes the key token
 * into |out_token| (capacity HSM_KEY_TOKEN_MAX), its length to |*out_token_len|,
 * the wrap mechanism (a CKM_* value, stored beside the token) to |*out_mech| and
 * the root version it is wrapped under to |*out_root| (may be NULL).
 */
int hsm_kek_generate(hsm_session *s, uint8_t *out_token, size_t *out_token_len,
                     uint32_t *out_mech, uint32_t *out_root);

/*
 * hsm_kek_load unwraps a key token made under root |root_version| (0: the
 * current root) into a sensitive session object that every session of this
 * process can use, and returns its handle. Returns KMS_ERR_DECRYPT if the
 * token does not unwrap, or its root is not on the token.
 * The object lives until hsm_kek_unload or hsm_close.
 */
int hsm_kek_load(hsm_session *s, const uint8_t *token, size_t token_len, uint32_t mech,
                 uint32_t root_version, hsm_key *out_key);

/*
 * hsm_kek_rewrap re-wraps a key token made under root |root_version| under the
 * current root, inside the HSM (unwrap into a session object of |s|, wrap,
 * destroy): the KEK's bytes never leave it. Writes the new token, mechanism
 * and root version like hsm_kek_generate. KMS_ERR_FAILED_PRECONDITION if either
 * root is a legacy one (its KEKs cannot be wrapped by anything);
 * KMS_ERR_NOT_FOUND if the old root is not on the token; KMS_ERR_DECRYPT if
 * the token does not unwrap.
 */
int hsm_kek_rewrap(hsm_session *s, const uint8_t *token, size_t token_len, uint32_t mech,
                   uint32_t root_version, uint8_t *out_token, size_t *out_token_len,
                   uint32_t *out_mech, uint32_t *out_root);
void hsm_kek_unload(hsm_session *s, hsm_key key);

/* hsm_random fills |out| with |len| bytes from the HSM's RNG. */
int hsm_random(hsm_session *s, uint8_t *out, size_t len);

/*
 * hsm_gcm_encrypt encrypts |pt| with AES-256-GCM under |key| with the given
 * 12-byte IV and AAD. Writes ciphertext||tag (pt_len + 16 bytes) to |out|,
 * which must hold that many.
 */
int hsm_gcm_encrypt(hsm_session *s, hsm_key key, const uint8_t iv[HSM_GCM_IV_LEN],
                    const uint8_t *aad, size_t aad_len, const uint8_t *pt,
                    size_t pt_len, uint8_t *out);

/*
 * hsm_gcm_decrypt reverses hsm_gcm_encrypt: |ct| is ciphertext||tag
 * (ct_len >= 16), |out| receives ct_len - 16 bytes. A wrong tag, AAD, IV or key
 * is KMS_ERR_DECRYPT (whatever CKR_* the module used) and |out| is wiped.
 */
int hsm_gcm_decrypt(hsm_session *s, hsm_key key, const uint8_t iv[HSM_GCM_IV_LEN],
                    const uint8_t *aad, size_t aad_len, const uint8_t *ct,
                    size_t ct_len, uint8_t *out);

/* hsm_root_attributes reads the root key's CKA_SENSITIVE and CKA_EXTRACTABLE. */
int hsm_root_attributes(hsm_session *s, bool *out_sensitive, bool *out_extractable);

/* hsm_ping checks that the token still answers (C_GetSessionInfo). */
int hsm_ping(hsm_session *s);

/*
 * hsm_set_call_timeout sets how long one operation on the HSM may take before
 * the HSM counts as down (default 2000 ms). Call before the workers start.
 */
void hsm_set_call_timeout(hsm *h, unsigned ms);

/*
 * hsm_selftest_key_import creates a session object (sensitive, not
 * extractable, encrypt/decrypt only) holding the AES key |key| of |len| bytes,
 * for known-answer tests of the HSM's AES-GCM (kmsd/selftest.c). Free it with
 * hsm_kek_unload.
 * WARNING: for published test keys only; a real key must never exist outside
 * the HSM.
 */
int hsm_selftest_key_import(hsm_session *s, const uint8_t *key, size_t len, hsm_key *out_key);

/*
 * hsm_ready returns KMS_OK if |s| can be used now, else KMS_ERR_HSM at once
 * (the HSM is down). It gives recovery its chance first, so a request that
 * calls it before looking at cached key handles sees the new generation.
 */
int hsm_ready(hsm_session *s);

/*
 * hsm_key_current returns true if |key| (from hsm_kek_load) belongs to the
 * HSM's current generation. A cached handle that is not current must be
 * dropped (its object is gone) and the key loaded again.
 */
bool hsm_key_current(const hsm_session *s, hsm_key key);

/*
 * hsm_status reports whether the HSM is serving (true) or down, with the
 * reason it went down in |why| (never a PIN or key material), and counts for
 * metrics: failed calls that marked it down, and successful recoveries.
 * Any argument but |h| may be NULL.
 */
bool hsm_status(hsm *h, char *why, size_t why_len, uint64_t *out_errors,
                uint64_t *out_recoveries);

/*
 * Audit checkpoint signing key (docs/AUDIT.md): an asymmetric key pair made
 * once as token objects with CKA_ID |id|, private half sensitive, not
 * extractable, sign only. Ed25519 (CKM_EDDSA) when the module offers it,
 * else ECDSA P-256 (CKM_ECDSA); a key that already exists keeps its type.
 */
#define HSM_SIG_AUTO 0
#define HSM_SIG_ED25519 1    /* signed-note type 0x01 */
#define HSM_SIG_ECDSA_P256 2 /* signed-note type 0x02 */
#define HSM_SIG_PUB_MAX 128
#define HSM_SIG_MAX 80

struct hsm_signing_key {
  hsm_key priv;                  /* found again by |id| after an HSM reset */
  char id[64];
  int type;                      /* HSM_SIG_ED25519 or HSM_SIG_ECDSA_P256 */
  uint8_t pub[HSM_SIG_PUB_MAX];  /* Ed25519: 32 raw bytes; P-256: DER SubjectPublicKeyInfo */
  size_t pub_len;
};

/*
 * hsm_signing_key_open finds the key pair with CKA_ID |id| or creates it
 * (type |prefer|: HSM_SIG_AUTO picks by capability), checks the private key
 * is sensitive, not extractable and able to sign, and reads the public key.
 */
int hsm_signing_key_open(hsm *h, const char *id, int prefer, struct hsm_signing_key *out,
                         char *err, size_t err_len);

/*
 * hsm_sign signs |msg| with |k| on session |s|. Ed25519: the 64-byte RFC 8032
 * signature of |msg|. ECDSA: SHA-256(msg) is signed in the HSM and the r||s
 * answer is returned DER-encoded (ECDSA-Sig-Value), as verifiers expect.
 * |sig| holds HSM_SIG_MAX bytes; the length goes to |*sig_len|.
 */
int hsm_sign(hsm_session *s, const struct hsm_signing_key *k, const uint8_t *msg, size_t len,
             uint8_t *sig, size_t *sig_len);

/*
 * hsm_hmac_derive finds or creates a 256-bit generic secret token object with
 * CKA_ID |id| (sensitive, not extractable, sign only) and writes
 * HMAC-SHA256(that key, |label|) to |out|. The same token always yields the
 * same 32 bytes, so a key derived from it needs no storage of its own.
 */
int hsm_hmac_derive(hsm *h, const char *id, const char *label, uint8_t out[32], char *err,
                    size_t err_len);

/* ---- Root rotation (docs/LIFECYCLE.md) ---------------------------------------------- */

#define HSM_ROOTS_MAX 32

struct hsm_root_info {
  uint32_t version;
  bool trusted; /* made by the key ceremony: its KEKs can be re-wrapped */
};

/* hsm_root_current returns the root version new KEKs are wrapped under. */
uint32_t hsm_root_current(hsm *h);

/* hsm_root_list lists the roots kmsd found on the token, oldest first. */
int hsm_root_list(hsm_session *s, struct hsm_root_info *out, size_t cap, size_t *out_n);

/*
 * hsm_root_rescan finds the root keys on the token again (a ceremony in another
 * process made a new one) and checks each like at start; on failure the
 * table stays as it was. Waits for operations in flight. A weak or duplicated
 * root is left out; if the newest on the token was, |err| says why even on
 * success (else it is empty).
 */
int hsm_root_rescan(hsm_session *s, char *err, size_t err_len);

/*
 * hsm_root_use makes root |version| current: new KEKs wrap under it and
 * hsm_kek_rewrap moves tokens to it. It must be on the token and trusted
 * (KMS_ERR_FAILED_PRECONDITION with a reason otherwise).
 */
int hsm_root_use(hsm_session *s, uint32_t version, char *err, size_t err_len);

/*
 * hsm_root_destroy destroys root |version| in the HSM (never the current one).
 * Irreversible: every key token still wrapped under it, in the keystore or in a
 * backup, can never be opened again. KMS_ERR_NOT_FOUND if it is not there.
 */
int hsm_root_destroy(hsm_session *s, uint32_t version, char *err, size_t err_len);

/*
 * hsm_root_ceremony is the security officer's key ceremony, run outside kmsd
 * (kmsctl root create): loads |module_path|, finds the token |token_label|,
 * logs in with the user PIN from |user_pin_file| (may be NULL) only to see
 * private legacy roots, then as security officer with the PIN from
 * |so_pin_file| (wiped after C_Login), and generates root N+1 after the newest
 * N it saw: AES-256, CKA_TRUSTED, public token object (the only kind an SO
 * session may create), sensitive, not extractable, not modifiable or copyable,
 * wrap/unwrap only, with an unwrap template that keeps every KEK it unwraps a
 * sensitive, private session object wrappable by trusted keys only. Writes N+1
 * to |*out_version|. Calls C_Finalize: not for a process that uses hsm_open.
 */
int hsm_root_ceremony(const char *module_path, const char *token_label,
                      const char *user_pin_file, const char *so_pin_file,
                      uint32_t *out_version, char *err, size_t err_len);

#endif
