/*
 * tenantkey.h - the public API of libtenantkey, the tenantkms client library.
 *
 * Services link this library to obtain data keys from kmsd over mutual TLS
 * and to unwrap them again, without ever handling a master key.
 *
 * Conventions: every function returns 0 (TK_OK) on success or a negative
 * TK_E* code; tk_strerror describes it. Context first, then outputs (named
 * out_*), then inputs. Outputs are zeroed on entry and filled only on success.
 * Objects returned through out_* are owned by the caller and released with the
 * matching tk_*_free, which accepts NULL.
 */
#ifndef TENANTKEY_H
#define TENANTKEY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TK_BUILDING_LIBRARY)
#define TK_EXPORT __attribute__((visibility("default")))
#else
#define TK_EXPORT
#endif
#define TK_WARN_UNUSED __attribute__((warn_unused_result))

/* Error codes (the same values as kmsd's internal error space). */
#define TK_OK 0
#define TK_EINTERNAL -1
#define TK_ENOMEM -2
#define TK_EINVAL -3            /* invalid argument (or kmsd said INVALID_ARGUMENT) */
#define TK_ENOTFOUND -4
#define TK_EEXIST -5
#define TK_EPERM -6             /* PERMISSION_DENIED */
#define TK_EUNAUTHENTICATED -7
#define TK_EPRECONDITION -8     /* the key is in a state that forbids this */
#define TK_EEXHAUSTED -9        /* RESOURCE_EXHAUSTED */
#define TK_EUNAVAILABLE -10     /* kmsd or its HSM unavailable: try again */
#define TK_EDECRYPT -11         /* authentication failed; no reason is given */
#define TK_EUNIMPLEMENTED -12
#define TK_ETOOLARGE -13
#define TK_ETRUNCATED -14
#define TK_EPROTOCOL -15
#define TK_EIO -16
#define TK_ETIMEOUT -17
#define TK_EHSM -18
#define TK_ECONFIG -19
#define TK_EKEYLIMIT -20
#define TK_ETLS -21

/* tk_strerror returns a static description of |err|. Never NULL. */
TK_EXPORT const char *tk_strerror(int err);

/* ---- Client ----------------------------------------------------------- */

typedef struct tk_client tk_client;

/*
 * tk_client_new_from_file reads a client configuration file:
 *
 *   endpoint = 127.0.0.1:7443      (host:port; the TLS name checked is host)
 *   ca = /path/ca.crt              (CA that issued kmsd's certificate)
 *   cert = /path/recording.crt     (this service's client certificate)
 *   key = /path/recording.key      (its private key)
 *   connect_timeout_ms = 5000      (optional)
 *   request_timeout_ms = 10000     (optional)
 *
 * and returns a client in |*out_client|. No connection is made until the
 * first request. On failure returns TK_ECONFIG or TK_EIO; if |err| is not
 * NULL a reason naming the file and line is written there.
 * The client is safe to share between threads (requests are serialised).
 */
TK_EXPORT int tk_client_new_from_file(tk_client **out_client, const char *path,
                                      char *err, size_t err_len);

/* tk_client_free closes the connection and frees |client|. NULL is a no-op. */
TK_EXPORT void tk_client_free(tk_client *client);

/*
 * tk_client_last_message copies the human-readable reason for the last failed
 * request on |client| (kmsd's message, or a local one such as a TLS failure)
 * into |buf| (truncated, NUL-terminated). Empty if there is none. With several
 * threads sharing a client it may describe another thread's request.
 */
TK_EXPORT void tk_client_last_message(tk_client *client, char *buf, size_t len);

/* tk_health asks kmsd whether it serves; *out_serving is 1 or 0. */
TK_EXPORT int tk_health(tk_client *client, int *out_serving);

/* ---- Encryption context ------------------------------------------------ */

/*
 * An encryption context is a set of key=value strings bound into every
 * wrapped data key as additional authenticated data: decrypting needs the
 * same set (order does not matter). Keys are 1-64 bytes of [A-Za-z0-9._-],
 * unique; values at most 256 bytes; at most 16 entries.
 */
typedef struct tk_context tk_context;

/* tk_context_new returns an empty context, or NULL on allocation failure. */
TK_EXPORT tk_context *tk_context_new(void);
TK_EXPORT void tk_context_free(tk_context *ctx);

/* tk_context_add adds one entry; TK_EINVAL if the key is invalid or present. */
TK_EXPORT int tk_context_add(tk_context *ctx, const char *key, const char *value);

/* ---- Officer operations --------------------------------------------------- */

/*
 * tk_tenant_create asks kmsd to create tenant |tenant_id| with its first KEK
 * (version 1), written to |*out_kek_version|. Needs an officer identity.
 */
TK_EXPORT int tk_tenant_create(tk_client *client, uint32_t *out_kek_version,
                               const char *tenant_id);

/* ---- Data keys ---------------------------------------------------------- */

typedef struct tk_data_key tk_data_key;

/*
 * tk_data_key_generate asks kmsd for a fresh AES-256 data key for |tenant_id|,
 * bound to |ctx| (NULL for an empty context). With |with_plaintext| 0 only the
 * wrapped form is returned (tk_data_key_plaintext then gives NULL).
 * The result is owned by the caller: tk_data_key_free wipes it.
 */
TK_EXPORT int tk_data_key_generate(tk_client *client, tk_data_key **out_key,
                                   const char *tenant_id, const tk_context *ctx,
                                   int with_plaintext);

/*
 * tk_data_key_decrypt sends |wrapped| back to kmsd and returns the data key
 * (plaintext and the same wrapped bytes). Any failure to authenticate - other
 * tenant, other context, altered bytes - is TK_EDECRYPT, with no reason.
 */
TK_EXPORT TK_WARN_UNUSED int tk_data_key_decrypt(tk_client *client,
                                                 tk_data_key **out_key,
                                                 const char *tenant_id,
                                                 const tk_context *ctx,
                                                 const uint8_t *wrapped,
                                                 size_t wrapped_len);

/*
 * tk_data_key_plaintext returns the 32 key bytes and their length in
 * |*out_len|, or NULL if the key was generated without plaintext. The bytes
 * are locked in memory and belong to |key|.
 * WARNING: do not copy them into ordinary memory; use them and free the key.
 */
TK_EXPORT const uint8_t *tk_data_key_plaintext(const tk_data_key *key, size_t *out_len);

/* tk_data_key_wrapped returns the wrapped key (owned by |key|) and its length. */
TK_EXPORT const uint8_t *tk_data_key_wrapped(const tk_data_key *key, size_t *out_len);

/* tk_data_key_kek_version returns the KEK version that wrapped the key. */
TK_EXPORT uint32_t tk_data_key_kek_version(const tk_data_key *key);

/* tk_data_key_free wipes and frees |key|. NULL is a no-op. */
TK_EXPORT void tk_data_key_free(tk_data_key *key);

#ifdef __cplusplus
}
#endif
#endif
