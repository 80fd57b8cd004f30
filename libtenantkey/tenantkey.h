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
 *   endpoint = 127.0.0.1:7443      (host:port; the TLS name checked is host;
 *   endpoint = kms2.internal:7443   repeat for up to 8 endpoints, tried in order)
 *   ca = /path/ca.crt              (CA that issued kmsd's certificate)
 *   cert = /path/recording.crt     (this service's client certificate)
 *   key = /path/recording.key      (its private key)
 *   connect_timeout_ms = 5000      (optional: TCP connect + TLS handshake, per try)
 *   request_timeout_ms = 10000     (optional: sending a request and reading its
 *                                   answer, per try)
 *   retries = 3                    (optional, 0-10: extra tries after UNAVAILABLE)
 *   retry_backoff_ms = 50          (optional: first backoff; doubles per retry,
 *   retry_backoff_max_ms = 2000     capped; each sleep is uniform in [0, backoff])
 *   deadline_ms = 30000            (optional: bound on one call, all tries,
 *                                   backoffs and waits for a connection included)
 *   connections = 4                (optional, 1-32: connection pool size)
 *
 * and returns a client in |*out_client|. No connection is made until the
 * first request. On failure returns TK_ECONFIG or TK_EIO; if |err| is not
 * NULL a reason naming the file and line is written there.
 *
 * Behaviour of every call that talks to kmsd (docs/CLIENT.md):
 * - Thread safety: a client may be shared by any number of threads. It keeps
 *   a pool of up to |connections| mutual-TLS connections, opened on demand;
 *   each request borrows one for its round trip (kmsd answers one request per
 *   connection at a time for us), so up to |connections| requests run in
 *   parallel and further callers wait for a free connection (bounded by the
 *   deadline).
 * - Retries: a call that fails with TK_EUNAVAILABLE (no endpoint reachable,
 *   connection lost, or kmsd answering UNAVAILABLE: HSM down, draining) is
 *   retried up to |retries| times after a randomised exponential backoff, as
 *   long as the deadline allows; each try starts at the endpoint that last
 *   worked and fails over to the next ones. A pooled connection that kmsd
 *   closed (e.g. after a restart) is replaced at once, without a backoff.
 *   TK_ETIMEOUT (kmsd accepted the request but did not answer in time) is not
 *   retried: the request may have run. Other errors are final.
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

/* tk_context_free frees |ctx| and the strings it copied. NULL is a no-op. */
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

/* ---- Envelopes: one-shot ------------------------------------------------ */

/*
 * An envelope (docs/ENVELOPE.md) is self-describing: a header carrying the
 * format version, tenant, KEK version, wrapped data key and encryption
 * context, followed by the data encrypted with Cobblestone-256 under that
 * data key, with the header's tenant and context as its context (format 2,
 * written by default; format 1, still read, binds the whole header), so
 * neither part can be swapped. Opening needs only the envelope and a client: kmsd unwraps the
 * data key for the tenant and context named in the header.
 *
 * Errors when opening: anything wrong with the envelope - a malformed or
 * altered header, a wrapped key kmsd refuses (other tenant or context,
 * altered bytes, unknown tenant), an altered, truncated, extended or
 * reordered body - is TK_EDECRYPT, one opaque code. Errors about the caller
 * or the service are passed through: TK_EPERM (kmsd refuses this principal
 * the tenant in the header), TK_EPRECONDITION (that KEK version is disabled
 * or destroyed), TK_EUNAVAILABLE, TK_ETIMEOUT, TK_ETLS, TK_ENOMEM, TK_EINVAL
 * (misuse, e.g. an output buffer too small, or the client's access attributes
 * repeating a key of the header's context).
 *
 * Session envelopes (tk_seal_session) are opened the same way: the key is
 * fetched with GetSessionKey instead of Decrypt, and a shredded or unknown
 * session is TK_ENOTFOUND (the key is gone; the envelope is not at fault).
 */

/* The largest envelope header: a 64-byte tenant, a 256-byte wrapped key and
 * 16 context entries of 64-byte keys and 256-byte values. */
#define TK_ENVELOPE_HEADER_MAX 5502

/*
 * tk_seal_max_len returns an upper bound on the envelope length for a
 * |pt_len|-byte plaintext (at most TK_ENVELOPE_HEADER_MAX + 56 + pt_len +
 * 16 * (pt_len / 16384 + 1)), or 0 if |pt_len| is too large to seal.
 */
TK_EXPORT size_t tk_seal_max_len(size_t pt_len);

/*
 * tk_seal asks kmsd for a fresh data key for |tenant_id| bound to |ctx|
 * (NULL: empty context), encrypts |pt| under it and writes the envelope to
 * |out| (capacity |out_cap|: tk_seal_max_len(pt_len) always suffices) and
 * its length to |*out_len|. The data key is wiped before returning. |out|
 * must not overlap |pt|. Returns TK_OK, TK_EINVAL (bad tenant or context,
 * |out_cap| too small), or an error from kmsd (TK_EPERM, TK_ENOTFOUND for an
 * unknown tenant, TK_EUNAVAILABLE, ...). On failure |*out_len| is 0 and
 * |out| holds nothing useful.
 */
TK_EXPORT int tk_seal(tk_client *client, uint8_t *out, size_t out_cap, size_t *out_len,
                      const char *tenant_id, const tk_context *ctx, const uint8_t *pt,
                      size_t pt_len);

/*
 * tk_open authenticates and decrypts the envelope |env| (|env_len| bytes, the
 * whole envelope and nothing else) into |out| (capacity |out_cap|; |env_len|
 * bytes always suffice) and writes the plaintext length to |*out_len|.
 * Nothing is written to |out| unless the header, the data key and every chunk
 * of the body authenticate. On failure |*out_len| is 0 and all |out_cap|
 * bytes of |out| are zeroed. Returns TK_OK, TK_EDECRYPT, or a passed-through
 * error (see above). |out| must not overlap |env|.
 */
TK_EXPORT TK_WARN_UNUSED int tk_open(tk_client *client, uint8_t *out, size_t out_cap,
                                     size_t *out_len, const uint8_t *env, size_t env_len);

/*
 * tk_envelope_plaintext_len sets |*out_len| to the plaintext length that the
 * envelope |env| (|env_len| bytes, complete) claims from its header and
 * length. Nothing is authenticated: use it only to size buffers. Returns
 * TK_OK or TK_EDECRYPT (not a well-formed envelope).
 */
TK_EXPORT int tk_envelope_plaintext_len(uint64_t *out_len, const uint8_t *env,
                                        size_t env_len);

/*
 * What an envelope's header says (tk_envelope_info). Nothing in it is
 * authenticated: use it to decide what to do with an envelope (e.g. whether
 * tk rewrap has work to do), never as a security decision.
 */
typedef struct tk_envelope_meta {
  char tenant[65];           /* NUL-terminated tenant id */
  uint32_t kek_version;      /* the KEK version named in the header */
  size_t header_len;         /* bytes of the header; the body follows */
  int is_session;            /* 1: a session envelope (docs/SESSIONS.md), 0: a data-key one */
  size_t n_context;          /* context entries (0..16), sorted by key */
  char context_keys[16][65];     /* NUL-terminated */
  char context_values[16][257];  /* NUL-terminated */
  int format;                    /* the envelope format version: 1 or 2 (docs/ENVELOPE.md) */
} tk_envelope_meta;

/*
 * tk_envelope_info parses the header at the start of |env| (|env_len| bytes:
 * the whole envelope or any prefix that holds the header;
 * TK_ENVELOPE_HEADER_MAX bytes always suffice) into |*out|, with the same
 * strict parser as opening, without kmsd and without authenticating
 * anything. Returns TK_OK, TK_ETRUNCATED (|env_len| is shorter than the
 * header, which looks well-formed so far), TK_EDECRYPT (not a well-formed
 * envelope header) or TK_EINVAL (NULL arguments). On failure |*out| is zeroed.
 */
TK_EXPORT int tk_envelope_info(tk_envelope_meta *out, const uint8_t *env, size_t env_len);

/*
 * tk_envelope_rewrap_header moves the data key of a format 2 envelope to KEK
 * version |target_version| (0: the tenant's newest) without the body: it
 * parses the header at the start of |env| (|env_len| bytes: the whole
 * envelope or any prefix holding the header), asks kmsd to ReEncrypt its
 * wrapped key (tenant and context from the header; the plaintext key never
 * leaves kmsd, so the ReEncrypt grant suffices) and writes the new header
 * (same tenant and context, new KEK version and wrapped key) to |out_hdr|
 * (capacity |out_cap|; TK_ENVELOPE_HEADER_MAX always suffices), its length
 * to |*out_hdr_len| and its KEK version to |*out_kek_version|. The body that
 * followed the old header authenticates under the new one unchanged (format
 * 2 leaves the wrapped key and KEK version out of the body's context).
 *
 * If the key is already under the target, the new header equals the old one
 * (and |*out_kek_version| the header's version): nothing to write.
 * WARNING: the new header may differ in length from the old one if kmsd's
 * wrapped-key length changed (never within kmsd's wrapped-key format 1); then
 * it cannot overwrite the old header in place: write header and body anew.
 *
 * Returns TK_OK; TK_EINVAL for a format 1 or session envelope (format 1
 * binds the wrapped key into the body: re-encrypt it instead; a session
 * envelope holds no wrapped key) or NULL arguments; TK_EDECRYPT if the
 * header is malformed or kmsd refuses its wrapped key (no reason given);
 * TK_ETRUNCATED if |env_len| is shorter than the header; or a passed-through
 * error from kmsd (TK_EPERM, TK_EPRECONDITION, TK_ENOTFOUND for an unknown
 * target version, TK_EUNAVAILABLE, ...). Outputs are zeroed on failure.
 * Nothing is authenticated here beyond what kmsd's ReEncrypt checks.
 */
TK_EXPORT TK_WARN_UNUSED int tk_envelope_rewrap_header(tk_client *client, uint8_t *out_hdr,
                                                       size_t out_cap, size_t *out_hdr_len,
                                                       uint32_t *out_kek_version,
                                                       const uint8_t *env, size_t env_len,
                                                       uint32_t target_version);

/*
 * tk_open_range decrypts plaintext bytes [offset, offset + len) of the
 * envelope |env| into |out| (|len| bytes), authenticating the header, the
 * data key, the message length (the final chunk) and only the 16 KiB chunks
 * that cover the range. Returns TK_OK, TK_EDECRYPT, TK_EINVAL (range outside
 * the message) or a passed-through error; on failure |out| is zeroed.
 * For many reads of one envelope use a tk_reader (one kmsd call in all).
 */
TK_EXPORT TK_WARN_UNUSED int tk_open_range(tk_client *client, uint8_t *out,
                                           const uint8_t *env, size_t env_len,
                                           uint64_t offset, size_t len);

/* ---- Envelopes: streaming ----------------------------------------------- */

/*
 * tk_stream seals or opens one envelope in pieces of any size, in constant
 * memory (about 25 KiB), e.g. hours of audio. Not thread-safe: one stream per
 * thread (the client it uses may be shared). Errors are sticky: after one,
 * every later call returns the same error.
 *
 * WARNING (opening): tk_stream_update releases the plaintext of each 16 KiB
 * chunk once that chunk has been authenticated, but whether the stream is
 * complete is known only at the end: truncation after a chunk boundary,
 * missing final chunk, or data appended to the envelope are reported by
 * tk_stream_final (or a later update). Until tk_stream_final returns TK_OK
 * treat what was released as provisional: e.g. write it to a temporary file
 * and rename it only after TK_OK (tools/tk.c does that).
 */
typedef struct tk_stream tk_stream;

/* The largest output of one tk_stream_final call (pending header included). */
#define TK_STREAM_FINAL_MAX (TK_ENVELOPE_HEADER_MAX + 56 + 16399)

/*
 * tk_stream_update_max returns an output capacity that is always enough for
 * tk_stream_update with |in_len| input bytes, in either direction (at most
 * TK_ENVELOPE_HEADER_MAX + 56 + 16400 * ceil(in_len / 16384) + 16384);
 * SIZE_MAX if that overflows.
 */
TK_EXPORT size_t tk_stream_update_max(size_t in_len);

/*
 * tk_stream_seal_new asks kmsd for a data key for |tenant_id| and |ctx|
 * (NULL: empty) and returns a sealing stream in |*out_st|. The envelope
 * header is emitted by the first tk_stream_update or tk_stream_final.
 * Returns TK_OK, TK_EINVAL, or an error from kmsd.
 */
TK_EXPORT int tk_stream_seal_new(tk_client *client, tk_stream **out_st, const char *tenant_id,
                                 const tk_context *ctx);

/*
 * tk_stream_open_new returns an opening stream in |*out_st|. |client| must
 * outlive the stream: once the whole header has arrived, tk_stream_update
 * asks kmsd for the data key (so that call can block for up to the client's
 * deadline and return kmsd's errors).
 */
TK_EXPORT int tk_stream_open_new(tk_client *client, tk_stream **out_st);

/*
 * tk_stream_update consumes all |in_len| bytes of |in| and writes what it can
 * to |out| (capacity |out_cap|, at least tk_stream_update_max(in_len), else
 * TK_EINVAL and nothing is consumed), its length to |*out_len| (possibly 0).
 * Sealing: envelope bytes. Opening: authenticated plaintext, whole chunks.
 * Returns TK_OK, TK_EDECRYPT (opening: the envelope is not authentic; the
 * bytes this call wrote are wiped), or a kmsd error while opening.
 */
TK_EXPORT TK_WARN_UNUSED int tk_stream_update(tk_stream *st, uint8_t *out, size_t out_cap,
                                              size_t *out_len, const uint8_t *in,
                                              size_t in_len);

/*
 * tk_stream_final ends the stream and writes the last bytes to |out|
 * (capacity at least TK_STREAM_FINAL_MAX) and their count to |*out_len|.
 * Sealing: the final chunk (and the header if no update came). Opening: the
 * plaintext of the final chunk; only TK_OK here means the envelope was
 * complete and authentic. Returns TK_OK, TK_ETRUNCATED (opening: the input
 * ended early: inside the header, on a chunk boundary, or inside a tag),
 * TK_EDECRYPT, TK_EINVAL.
 */
TK_EXPORT TK_WARN_UNUSED int tk_stream_final(tk_stream *st, uint8_t *out, size_t out_cap,
                                             size_t *out_len);

/* tk_stream_free wipes (keys, buffered plaintext) and frees |st|. NULL is a no-op. */
TK_EXPORT void tk_stream_free(tk_stream *st);

/* ---- Envelopes: random access -------------------------------------------- */

/*
 * tk_read_fn reads exactly |len| bytes at envelope offset |offset| into
 * |buf| (pread-style). Returns 0, or a negative TK_E* code that is passed to
 * the caller; any other nonzero value (or a short read) becomes TK_EIO.
 */
typedef int (*tk_read_fn)(void *arg, uint64_t offset, uint8_t *buf, size_t len);

/*
 * tk_reader gives authenticated random access to a stored envelope without
 * reading or decrypting the rest of it. Not thread-safe (one per thread).
 */
typedef struct tk_reader tk_reader;

/*
 * tk_reader_open reads and parses the header of the |env_len|-byte envelope
 * behind |read_fn|, asks kmsd for the data key, checks the body's key
 * commitment and authenticates the message length (it decrypts the final
 * chunk), then returns the reader in |*out_rd|. |read_fn| and |arg| must
 * stay valid until tk_reader_free; the client is not used after this call.
 * Returns TK_OK, TK_EDECRYPT, a read_fn error, or a passed-through error.
 */
TK_EXPORT TK_WARN_UNUSED int tk_reader_open(tk_client *client, tk_reader **out_rd,
                                            tk_read_fn read_fn, void *arg,
                                            uint64_t env_len);

/*
 * tk_reader_open_fd is tk_reader_open over the file descriptor |fd| (read
 * with pread; the length is its size from fstat). |fd| stays the caller's and
 * must stay open until tk_reader_free.
 */
TK_EXPORT TK_WARN_UNUSED int tk_reader_open_fd(tk_client *client, tk_reader **out_rd, int fd);

/* tk_reader_plaintext_len returns the (authenticated) plaintext length. */
TK_EXPORT uint64_t tk_reader_plaintext_len(const tk_reader *rd);

/*
 * tk_reader_read decrypts plaintext bytes [offset, offset + len) into |out|,
 * reading and authenticating only the chunks that cover them. Returns TK_OK,
 * TK_EINVAL (range outside the message), TK_EDECRYPT, or a read_fn error; on
 * failure |out| is zeroed.
 */
TK_EXPORT TK_WARN_UNUSED int tk_reader_read(tk_reader *rd, uint8_t *out, uint64_t offset,
                                            size_t len);

/* tk_reader_free wipes the derived key and frees |rd|. NULL is a no-op. */
TK_EXPORT void tk_reader_free(tk_reader *rd);

/* ==== Key lifecycle (issue 5; docs/LIFECYCLE.md) ================================ */
/*
 * Officer operations need an identity the policy grants them to; the "who" of
 * every change is the client certificate's identity. Disabling a whole tenant
 * and scheduling any destruction take effect only after other officers
 * approve (dual control): such calls return TK_OK with a request id, and the
 * change happens on the last tk_request_approve. A call against a key in the
 * wrong state fails with TK_EPRECONDITION; tk_client_last_message names the
 * state. kmsctl (tools/kmsctl_keys.c) lists tenants, keys, requests and
 * receipts.
 */

/* Largest wrapped data key kmsd produces (today 65 bytes). */
#define TK_WRAPPED_KEY_MAX 256

/*
 * tk_key_rotate makes a new KEK version of |tenant_id| inside the HSM (the
 * previous one turns decrypt-only) and writes it to |*out_kek_version|.
 */
TK_EXPORT int tk_key_rotate(tk_client *client, uint32_t *out_kek_version, const char *tenant_id);

/*
 * tk_key_disable suspends KEK version |version| of |tenant_id| at once, or,
 * with |version| 0, opens a request to disable the whole tenant: then
 * |*out_request_id| is its id (0 when the change already took effect).
 */
TK_EXPORT int tk_key_disable(tk_client *client, uint64_t *out_request_id, const char *tenant_id,
                             uint32_t version);

/* tk_key_enable brings a disabled version (or, |version| 0, tenant) back into service. */
TK_EXPORT int tk_key_enable(tk_client *client, const char *tenant_id, uint32_t version);

/* Waiting period for tk_key_schedule_destruction: kmsd's default, or none (test knob). */
#define TK_WAIT_DEFAULT 0u
#define TK_WAIT_NONE UINT32_MAX

/*
 * tk_key_schedule_destruction opens a request to crypto-shred KEK version
 * |version| of |tenant_id| (0: the whole tenant) |waiting_days| after it is
 * approved (TK_WAIT_DEFAULT, 7-30, or TK_WAIT_NONE where kmsd allows short
 * waiting periods). Writes the request's id to |*out_request_id|.
 * WARNING: once approved and due, destruction cannot be undone: every blob
 * under the destroyed keys is unreadable forever.
 */
TK_EXPORT int tk_key_schedule_destruction(tk_client *client, uint64_t *out_request_id,
                                          const char *tenant_id, uint32_t version,
                                          uint32_t waiting_days);

/*
 * tk_key_cancel_destruction cancels a pending destruction request and, during
 * the waiting period, restores the key to the state it had before.
 */
TK_EXPORT int tk_key_cancel_destruction(tk_client *client, const char *tenant_id,
                                        uint32_t version);

/*
 * tk_request_approve approves request |request_id| as this client's officer.
 * |*out_executed| is 1 if this approval made the change take effect. The
 * requester cannot approve their own request; an expired one cannot be
 * approved (TK_EPRECONDITION).
 */
TK_EXPORT int tk_request_approve(tk_client *client, int *out_executed, uint64_t request_id);

/* tk_tenant_set_rotation_period sets automatic rotation every |days| days (0: kmsd's default). */
TK_EXPORT int tk_tenant_set_rotation_period(tk_client *client, const char *tenant_id,
                                            uint32_t days);

/*
 * tk_data_key_rewrap moves a wrapped data key of |tenant_id| to KEK version
 * |target_version| (0: the newest) without the plaintext key leaving kmsd (a
 * storage service needs no plaintext grant). The new wrapped key goes to
 * |out_wrapped| (capacity TK_WRAPPED_KEY_MAX), its length to
 * |*out_wrapped_len|, its KEK version to |*out_kek_version|. A key already
 * under the target comes back unchanged. Any authentication failure is
 * TK_EDECRYPT, with no reason.
 */
TK_EXPORT TK_WARN_UNUSED int tk_data_key_rewrap(tk_client *client, uint8_t *out_wrapped,
                                                size_t *out_wrapped_len,
                                                uint32_t *out_kek_version,
                                                const char *tenant_id, const tk_context *ctx,
                                                const uint8_t *wrapped, size_t wrapped_len,
                                                uint32_t target_version);

/* One data key of a tk_data_key_rewrap_batch: inputs, then per-item results. */
typedef struct tk_rewrap_item {
  const tk_context *ctx;   /* in: its encryption context (NULL: empty) */
  const uint8_t *wrapped;  /* in */
  size_t wrapped_len;      /* in */
  int status;              /* out: TK_OK or this item's error */
  uint32_t kek_version;    /* out */
  uint8_t out_wrapped[TK_WRAPPED_KEY_MAX]; /* out */
  size_t out_wrapped_len;  /* out */
} tk_rewrap_item;

/*
 * tk_data_key_rewrap_batch is tk_data_key_rewrap for up to 1024 keys of one
 * tenant in one round trip. Returns TK_OK if kmsd answered; then each item's
 * |status| says whether that key moved (outputs filled only then).
 */
TK_EXPORT int tk_data_key_rewrap_batch(tk_client *client, tk_rewrap_item *items, size_t n_items,
                                       const char *tenant_id, uint32_t target_version);

/* ==== End of key lifecycle ========================================================= */

/* ==== Session keys and access attributes (issue 7; docs/SESSIONS.md) ============== */
/*
 * A session key is a data key that kmsd keeps (wrapped) for one therapy
 * session of a tenant: the recording service opens it and seals the
 * recording under it, allowed services fetch it again to open the
 * recording, and one officer command shreds it (GDPR erasure), after which
 * nothing sealed under it can be opened by anybody. Session ids are 1-128
 * characters of [A-Za-z0-9._-], the first a letter or digit.
 *
 * Access attributes are key=value pairs that kmsd's policy may condition on
 * (e.g. purpose=transcription) but that are not bound into any wrapped key:
 * unlike the encryption context they may differ between sealing and opening.
 * They are recorded in the audit log (values as keyed HMACs).
 */

/*
 * tk_client_set_attributes makes |attrs| (copied; NULL or empty: none) the
 * access attributes of every later request of |client| that carries
 * attributes: data keys, envelopes (tk_seal, tk_open, streams, readers),
 * rewrap, and sessions. Same limits as a context. A key that is also in the
 * request's encryption context (or a session request's own session_id or
 * purpose) is refused with TK_EINVAL, by the library and by kmsd, so an
 * attribute can never stand in for a context entry. Thread-safe: a request
 * in flight keeps the attributes it started with.
 */
TK_EXPORT int tk_client_set_attributes(tk_client *client, const tk_context *attrs);

/* Session states (tk_session_state, tk_session_info.state). */
#define TK_SESSION_OPEN 1     /* seals and opens */
#define TK_SESSION_CLOSED 2   /* opens only: the library refuses to seal under it */
#define TK_SESSION_SHREDDED 3 /* the key is destroyed (listings only) */

/* The largest session id, in bytes. */
#define TK_SESSION_ID_MAX 128

/* A session key held by the caller: the plaintext key in locked, wiped memory. */
typedef struct tk_session tk_session;

/*
 * tk_session_open asks kmsd to create session |session_id| of |tenant_id|
 * with |metadata| (NULL: none; stored in clear with the session, shown to
 * officers, wiped when shredded: no personal data) and returns its key in
 * |*out_session|, state open. TK_EEXIST if the id was ever used (open,
 * closed or shredded ids are never reused).
 */
TK_EXPORT int tk_session_open(tk_client *client, tk_session **out_session, const char *tenant_id,
                              const char *session_id, const tk_context *metadata);

/*
 * tk_session_get fetches the key of session |session_id| of |tenant_id| for
 * |purpose| (NULL or "": none; the policy sees it as the attribute purpose,
 * so the client's attributes must not name one too). TK_ENOTFOUND if the
 * session does not exist or was shredded.
 */
TK_EXPORT int tk_session_get(tk_client *client, tk_session **out_session, const char *tenant_id,
                             const char *session_id, const char *purpose);

/*
 * tk_session_close ends new encryption under the session: kmsd records it
 * closed, tk_session_get still answers (with state closed) and the library
 * refuses to seal under a closed session. Closing a closed session is TK_OK.
 */
TK_EXPORT int tk_session_close(tk_client *client, const char *tenant_id, const char *session_id);

/* What tk_session_shred destroyed, when and on whose word. */
typedef struct tk_session_receipt {
  uint64_t id;
  uint32_t kek_version;  /* the KEK version of the wrapped key that was deleted */
  int64_t created_ms;    /* UTC milliseconds */
  int64_t shredded_ms;
  char shredded_by[256]; /* the officer's certificate identity */
} tk_session_receipt;

/*
 * tk_session_shred (officers) crypto-shreds the session: kmsd deletes the
 * only copy of its wrapped key (and its metadata) from the keystore and its
 * WAL, and returns the receipt in |*out_receipt|.
 * WARNING: irreversible. Every envelope sealed under the session becomes
 * unreadable for everybody, forever.
 */
TK_EXPORT int tk_session_shred(tk_client *client, tk_session_receipt *out_receipt,
                               const char *tenant_id, const char *session_id);

/* One session as tk_session_list shows it. */
typedef struct tk_session_info {
  char session_id[TK_SESSION_ID_MAX + 1];
  int state; /* TK_SESSION_* */
  uint32_t kek_version;
  int64_t created_ms, closed_ms, shredded_ms; /* 0: not (yet) */
  char created_by[256], closed_by[256], shredded_by[256];
} tk_session_info;

/*
 * tk_session_list (officers, auditors) lists up to 1000 sessions of
 * |tenant_id| created in [|from_ms|, |to_ms|) (0: unbounded) in |state| (0:
 * any), oldest first, from |page_token| (NULL or "": the start). The array
 * goes to |*out| (free with free()), its length to |*out_n|; if more follow,
 * a token for the next page is written to |next_token| (capacity
 * |next_cap|, 256 always suffices), else "".
 */
TK_EXPORT int tk_session_list(tk_client *client, tk_session_info **out, size_t *out_n,
                              char *next_token, size_t next_cap, const char *tenant_id,
                              int64_t from_ms, int64_t to_ms, int state,
                              const char *page_token);

/* tk_session_state returns the session's state when it was fetched (TK_SESSION_*). */
TK_EXPORT int tk_session_state(const tk_session *session);

/* tk_session_kek_version returns the KEK version wrapping the stored key when fetched. */
TK_EXPORT uint32_t tk_session_kek_version(const tk_session *session);

/* tk_session_free wipes the key and frees |session|. NULL is a no-op. */
TK_EXPORT void tk_session_free(tk_session *session);

/*
 * tk_seal_session is tk_seal under the session key of |session| instead of a
 * fresh data key: the envelope (format 1, docs/ENVELOPE.md) names the
 * session, and tk_open, tk_stream_open_new and tk_reader_open fetch its key
 * with GetSessionKey (the client's attributes, e.g. purpose, go with it).
 * |ctx| is authenticated in the header but not sent to kmsd; the library
 * adds the entry session_id (a different session_id in |ctx| is TK_EINVAL).
 * No round trip. TK_EPRECONDITION if |session| is not open (as fetched).
 */
TK_EXPORT int tk_seal_session(const tk_session *session, uint8_t *out, size_t out_cap,
                              size_t *out_len, const tk_context *ctx, const uint8_t *pt,
                              size_t pt_len);

/*
 * tk_stream_seal_session_new is tk_stream_seal_new under the session key of
 * |session| (see tk_seal_session): constant memory, for live recordings.
 * |session| may be freed once this returns.
 */
TK_EXPORT int tk_stream_seal_session_new(tk_stream **out_st, const tk_session *session,
                                         const tk_context *ctx);

/* ==== End of session keys =========================================================== */

#ifdef __cplusplus
}
#endif
#endif
