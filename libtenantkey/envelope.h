/* The envelope header (formats 1 and 2): canonical encoding, a strict, bounds-checked parser, and the body's context. */
#ifndef TK_ENVELOPE_H
#define TK_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "kms.pb-c.h"
#include "kms_wire.h"

/*
 * Internal to libtenantkey (hidden visibility). docs/ENVELOPE.md specifies
 * the bytes; this is the one place that reads and writes them:
 *
 *   "TKE" F | u16 H | u8 T, tenant | u32 KEK version | u16 W, wrapped key
 *   | u8 N | N x (u8 K, key | u16 V, value)            (integers big-endian)
 *
 * F is the format version, 0x01 or 0x02 (the same layout). H is the length
 * of the whole header, these first 6 bytes included. The Cobblestone-256
 * body follows; its context (tk_env_body_context) is, in format 1, the H
 * header bytes, and in format 2 the header without H, KEK version, W and
 * wrapped key:
 *
 *   "TKE" 0x02 | u8 T, tenant | u8 N | N x (u8 K, key | u16 V, value)
 *
 * so that a format 2 header can be rewrapped (ReEncrypt) without touching
 * the body.
 */
#define TK_ENV_MAGIC "TKE"
#define TK_ENV_MAGIC_LEN 3
#define TK_ENV_FORMAT_1 1
#define TK_ENV_FORMAT_2 2
#define TK_ENV_FORMAT_NEWEST TK_ENV_FORMAT_2 /* what tk_seal and tk_stream write */
#define TK_ENV_PREFIX_LEN 6 /* magic, version, u16 header length */
#define TK_ENV_HEADER_MIN (TK_ENV_PREFIX_LEN + 1 + 1 + 4 + 2 + 1 + 1) /* 16 */
#define TK_ENV_ENTRY_MAX (1 + KMS_CONTEXT_KEY_MAX + 2 + KMS_CONTEXT_VALUE_MAX)
/* 6 + 65 + 4 + 258 + 1 + 16 * 323 = 5502 */
#define TK_ENV_HEADER_MAX                                                               \
  (TK_ENV_PREFIX_LEN + 1 + KMS_TENANT_ID_MAX + 4 + 2 + KMS_WRAPPED_KEY_MAX + 1 +        \
   KMS_CONTEXT_MAX_ENTRIES * TK_ENV_ENTRY_MAX)

/* The longest body context: format 1's, the whole header. */
#define TK_ENV_BODY_CONTEXT_MAX TK_ENV_HEADER_MAX

/*
 * A session envelope (docs/ENVELOPE.md, "Session envelopes") is a format 1
 * header (always: nothing in it is ever rewrapped) whose wrapped-key field holds this 20-byte
 * marker instead of a wrapped key, and whose context has the entry session_id: its key is the
 * session key, fetched by name with GetSessionKey. No copy of the session's
 * wrapped key ever leaves kmsd, so shredding the session destroys the key.
 * The marker cannot be a kmsd wrapped key: those start with their format
 * byte, 0x01.
 */
#define TK_ENV_SESSION_MARKER "tenantkms/session/v1"
#define TK_ENV_SESSION_MARKER_LEN 20
#define TK_ENV_SESSION_KEY "session_id"

/*
 * A parsed (or to-be-encoded) header. Strings are NUL-terminated copies;
 * |entries|/|ptrs| point into |keys|/|values| so that the context can be
 * handed to kmsd as it is (tk_env_header_fix_pointers after copying).
 */
struct tk_env_header {
  uint8_t format; /* TK_ENV_FORMAT_1 or TK_ENV_FORMAT_2 */
  char tenant[KMS_TENANT_ID_MAX + 1];
  uint32_t kek_version;
  uint8_t wrapped[KMS_WRAPPED_KEY_MAX];
  size_t wrapped_len;
  size_t n_context;
  char keys[KMS_CONTEXT_MAX_ENTRIES][KMS_CONTEXT_KEY_MAX + 1];
  char values[KMS_CONTEXT_MAX_ENTRIES][KMS_CONTEXT_VALUE_MAX + 1];
  Tkms__ContextEntry entries[KMS_CONTEXT_MAX_ENTRIES];
  Tkms__ContextEntry *ptrs[KMS_CONTEXT_MAX_ENTRIES];
};

/*
 * tk_env_header_set fills |*out| from a format version (TK_ENV_FORMAT_1 or
 * TK_ENV_FORMAT_2), tenant, KEK version, wrapped key and context entries (any order: they are
 * sorted here, bytewise by key, as the canonical encoding and kmsd's AAD require). Returns KMS_OK
 * or KMS_ERR_INVALID_ARGUMENT if any field breaks a limit of common/kms_wire.h.
 */
int tk_env_header_set(struct tk_env_header *out, uint8_t format, const char *tenant,
                      uint32_t kek_version, const uint8_t *wrapped, size_t wrapped_len,
                      Tkms__ContextEntry *const *entries, size_t n_entries);

/* tk_env_header_fix_pointers re-points entries/ptrs at the struct's own strings. */
void tk_env_header_fix_pointers(struct tk_env_header *h);

/*
 * tk_env_header_encode writes the canonical header bytes of |h| (which must
 * come from tk_env_header_set or tk_env_header_parse) to |out| (capacity
 * |out_cap|; TK_ENV_HEADER_MAX always suffices) and the length to |*out_len|.
 * Returns KMS_OK or KMS_ERR_INVALID_ARGUMENT.
 */
int tk_env_header_encode(uint8_t *out, size_t out_cap, size_t *out_len,
                         const struct tk_env_header *h);

/*
 * tk_env_header_peek_len reads the first TK_ENV_PREFIX_LEN bytes of |buf|:
 * it checks the magic and format version (1 or 2) and returns the declared header length in
 * |*out_len| (within [TK_ENV_HEADER_MIN, TK_ENV_HEADER_MAX]). Returns KMS_OK,
 * KMS_ERR_TRUNCATED if |len| < 6 (but what there is matches), or
 * KMS_ERR_DECRYPT.
 */
int tk_env_header_peek_len(size_t *out_len, const uint8_t *buf, size_t len);

/*
 * tk_env_header_parse parses exactly |len| bytes as one header: the declared
 * length must equal |len|, every field must be within its limit, tenant and
 * context must be valid as kmsd would check them, the context keys strictly
 * increasing (canonical), and nothing may follow the last entry. So a header
 * that parses re-encodes to the same bytes. Returns KMS_OK or KMS_ERR_DECRYPT
 * (one code for every defect); |why|, if not NULL, gets a static description
 * for tests and debugging, never shown to a peer.
 */
int tk_env_header_parse(struct tk_env_header *out, const uint8_t *buf, size_t len,
                        const char **why);

/*
 * tk_env_header_is_session returns 1 if |h| is a session envelope's header
 * (the marker in the wrapped-key field) and then points |*out_session_id| at
 * its session_id entry, or at NULL if it has none or not a valid id (such a
 * header is not authentic). 0 for an ordinary envelope.
 */
int tk_env_header_is_session(const struct tk_env_header *h, const char **out_session_id);

/*
 * tk_env_body_context writes the Cobblestone-256 context of the body that
 * follows the header |h| (from tk_env_header_set or tk_env_header_parse) to
 * |out| (capacity |out_cap|; TK_ENV_BODY_CONTEXT_MAX always suffices) and its
 * length to |*out_len|: format 1, the encoded header itself; format 2, the
 * header without H, KEK version, W and wrapped key (docs/ENVELOPE.md,
 * "Format 2"). Returns KMS_OK or KMS_ERR_INVALID_ARGUMENT.
 */
int tk_env_body_context(uint8_t *out, size_t out_cap, size_t *out_len,
                        const struct tk_env_header *h);

#endif
