/* Cobblestone-256 (c2sp.org/chunked-encryption, SHA-512 + AES-256-GCM): one-shot, streaming, random access. */
#ifndef TK_COBBLESTONE_H
#define TK_COBBLESTONE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Internal to libtenantkey (hidden visibility): the body of every envelope.
 *
 * Format (specs/chunked-encryption.md):
 *
 *   key || base nonce || commitment = HKDF-Expand-SHA-512(prk = input key,
 *       info = "c2sp.org/chunked-encryption@v1+" "AEAD_AES_256_GCM" 0x00
 *              || salt || context, 76 bytes)
 *   ciphertext = salt (24) || commitment (32) || chunk 0 || chunk 1 || ...
 *
 * Every chunk is AES-256-GCM of 16384 plaintext bytes (16400 bytes with the
 * tag), except the final chunk, which is always shorter (0..16383 bytes, so
 * 16..16399 bytes encrypted): a 16 KiB message is one full chunk plus one
 * empty chunk. Chunk i uses nonce = base nonce XOR big-endian(i), no AAD.
 * At most 2^38 chunks (messages up to 4 PiB - 1 byte).
 *
 * Conventions: context (state) first, then outputs, then inputs. Every
 * function returns KMS_OK or a negative KMS_ERR_* (common/kms_err.h):
 *   KMS_ERR_INVALID_ARGUMENT  misuse: key not 32 bytes, output too small,
 *                             context over TK_COB_MAX_CONTEXT_LEN, call after
 *                             final or after an error, message too long.
 *   KMS_ERR_TRUNCATED         the ciphertext has a length no message encrypts
 *                             to: shorter than header + tag, ending exactly on
 *                             a full-chunk boundary (the final short chunk is
 *                             missing), or a final chunk shorter than a tag.
 *   KMS_ERR_DECRYPT           anything else wrong with the ciphertext: wrong
 *                             key or context, modified salt, commitment, chunk
 *                             or tag, reordered or duplicated chunks, trailing
 *                             data. One opaque code; no reason is given.
 * A decrypting function never hands out plaintext that has not been
 * authenticated, and wipes what it wrote when it fails.
 */

#define TK_COB_KEY_LEN 32
#define TK_COB_SALT_LEN 24
#define TK_COB_COMMIT_LEN 32
#define TK_COB_HEADER_LEN (TK_COB_SALT_LEN + TK_COB_COMMIT_LEN) /* 56 */
#define TK_COB_CHUNK_LEN 16384
#define TK_COB_TAG_LEN 16
#define TK_COB_CT_CHUNK_LEN (TK_COB_CHUNK_LEN + TK_COB_TAG_LEN) /* 16400 */
#define TK_COB_MAX_CHUNKS (UINT64_C(1) << 38)
#define TK_COB_MAX_PT_LEN (TK_COB_MAX_CHUNKS * TK_COB_CHUNK_LEN - 1)
/* Our limit on |context| (OpenSSL 3.0's HKDF caps info at 32 KiB); envelope headers reach 5502 bytes. */
#define TK_COB_MAX_CONTEXT_LEN 8192

/* ---- Lengths ---------------------------------------------------------- */

/*
 * tk_cob_ciphertext_len returns the ciphertext length of a |pt_len|-byte
 * message: 56 + 16400 * (pt_len / 16384) + pt_len % 16384 + 16. Returns 0
 * (never a valid length) if |pt_len| exceeds TK_COB_MAX_PT_LEN.
 */
uint64_t tk_cob_ciphertext_len(uint64_t pt_len);

/*
 * tk_cob_plaintext_len sets |*out_pt_len| to the plaintext length of a
 * |ct_len|-byte ciphertext, or returns KMS_ERR_TRUNCATED if no message has
 * that ciphertext length (see above) and KMS_ERR_INVALID_ARGUMENT if it
 * would exceed 2^38 chunks. The length is only a claim until the final chunk
 * has been authenticated (tk_cob_decrypt, tk_cob_dec_final, tk_cob_reader_open
 * do that).
 */
int tk_cob_plaintext_len(uint64_t *out_pt_len, uint64_t ct_len);

/* ---- One-shot --------------------------------------------------------- */

/*
 * tk_cob_encrypt encrypts |pt| under the 32-byte input key |key| and
 * |context| (may be empty; it must be given again to decrypt) with a fresh
 * random salt, writing tk_cob_ciphertext_len(pt_len) bytes to |out_ct|
 * (capacity |out_cap|) and that length to |*out_ct_len|. |out_ct| must not
 * overlap |pt|. Returns KMS_OK, KMS_ERR_INVALID_ARGUMENT (bad key size,
 * |out_cap| too small, message or context too long), KMS_ERR_INTERNAL.
 */
int tk_cob_encrypt(uint8_t *out_ct, size_t out_cap, size_t *out_ct_len,
                   const uint8_t *key, size_t key_len,
                   const uint8_t *context, size_t context_len,
                   const uint8_t *pt, size_t pt_len);

/*
 * tk_cob_encrypt_with_salt is tk_cob_encrypt with a caller-chosen salt, for
 * test vectors and deterministic tests.
 * WARNING: a salt must never repeat under one input key (reuse repeats the
 * AES-GCM key and nonces, which breaks confidentiality and authenticity).
 * Outside tests, use tk_cob_encrypt.
 */
int tk_cob_encrypt_with_salt(uint8_t *out_ct, size_t out_cap,
                             size_t *out_ct_len, const uint8_t *key,
                             size_t key_len,
                             const uint8_t salt[TK_COB_SALT_LEN],
                             const uint8_t *context, size_t context_len,
                             const uint8_t *pt, size_t pt_len);

/*
 * tk_cob_decrypt checks the length of |ct|, then the commitment, then
 * decrypts every chunk into |out_pt| (capacity |out_cap|, at least the
 * plaintext length from tk_cob_plaintext_len) and sets |*out_pt_len|.
 * |out_pt| must not overlap |ct|. On any failure |*out_pt_len| is 0 and
 * |out_pt| is wiped. Returns KMS_OK, KMS_ERR_TRUNCATED, KMS_ERR_DECRYPT,
 * KMS_ERR_INVALID_ARGUMENT.
 */
__attribute__((warn_unused_result))
int tk_cob_decrypt(uint8_t *out_pt, size_t out_cap, size_t *out_pt_len,
                   const uint8_t *key, size_t key_len,
                   const uint8_t *context, size_t context_len,
                   const uint8_t *ct, size_t ct_len);

/* ---- Streaming encryption --------------------------------------------- */

/*
 * tk_cob_enc: a streaming encryptor. Memory is constant: one 16 KiB buffer
 * holds the plaintext of the chunk being filled. Full chunks are emitted as
 * soon as they fill; tk_cob_enc_final emits the final short chunk (possibly
 * empty, never omitted). The state is not thread-safe.
 */
typedef struct tk_cob_enc tk_cob_enc;

/*
 * tk_cob_enc_init starts a message: it derives the per-message key, base
 * nonce and commitment from |key| (32 bytes), |salt| and |context|, returns
 * the state in |*out_st| and the 56-byte header (salt || commitment) in
 * |out_header|, which must be written before the chunks. |salt| NULL draws a
 * random salt (RAND_bytes); pass a salt only in tests (see the WARNING of
 * tk_cob_encrypt_with_salt). Free the state with tk_cob_enc_free.
 */
int tk_cob_enc_init(tk_cob_enc **out_st,
                    uint8_t out_header[TK_COB_HEADER_LEN],
                    const uint8_t *key, size_t key_len, const uint8_t *salt,
                    const uint8_t *context, size_t context_len);

/*
 * tk_cob_enc_update_max returns the most bytes tk_cob_enc_update can write
 * for an |in_len|-byte input: ceil(in_len / 16384) * 16400 (SIZE_MAX if
 * that overflows). The exact count is
 * floor((buffered + in_len) / 16384) * 16400, with 0 <= buffered < 16384.
 */
size_t tk_cob_enc_update_max(size_t in_len);

/*
 * tk_cob_enc_update consumes all |in_len| bytes of |in|, writes every chunk
 * that fills up (16400 bytes each) to |out| and the byte count to
 * |*out_len|. |out_cap| must be at least the exact count above (passing
 * tk_cob_enc_update_max(in_len) always suffices), else
 * KMS_ERR_INVALID_ARGUMENT and nothing is consumed. |out| must not overlap
 * |in|. After any other error the state refuses further use.
 */
int tk_cob_enc_update(tk_cob_enc *st, uint8_t *out, size_t out_cap,
                      size_t *out_len, const uint8_t *in, size_t in_len);

/*
 * tk_cob_enc_final writes the final chunk (buffered bytes + 16-byte tag,
 * 16..16399 bytes: TK_COB_CT_CHUNK_LEN - 1 is always enough) to |out| and
 * its length to |*out_len|. The message is complete only once this
 * succeeded; the state then refuses further updates.
 */
int tk_cob_enc_final(tk_cob_enc *st, uint8_t *out, size_t out_cap,
                     size_t *out_len);

/* tk_cob_enc_free wipes (keys, nonce, buffered plaintext) and frees |st|. NULL is a no-op. */
void tk_cob_enc_free(tk_cob_enc *st);

/* ---- Streaming decryption --------------------------------------------- */

/*
 * tk_cob_dec: a streaming decryptor. Feed the whole ciphertext, header
 * included, in pieces of any size to tk_cob_dec_update, then call
 * tk_cob_dec_final at the end of the stream.
 *
 * - The commitment is checked as soon as the 56th header byte arrives
 *   (KMS_ERR_DECRYPT on mismatch), before any chunk is decrypted.
 * - Chunk boundaries are positional (every 16400 bytes after the header).
 *   A full 16400-byte chunk is decrypted and released only once at least one
 *   more byte has arrived, because a stream that ends right after it is
 *   truncated: the decryptor always holds back up to 16400 bytes.
 * - At the end, tk_cob_dec_final decrypts what is held back as the final
 *   chunk. A stream ending on a chunk boundary, or whose final chunk is
 *   shorter than a tag, is KMS_ERR_TRUNCATED.
 * - Trailing data after the genuine short final chunk cannot be recognised
 *   as such by position alone; it always makes the chunk it lands in fail:
 *   either the final chunk becomes longer than encrypted, or (with enough
 *   bytes) the short chunk is read as a full chunk. Both are KMS_ERR_DECRYPT.
 *   Likewise a short chunk followed by more chunks. Reordered or duplicated
 *   chunks fail because each chunk's nonce encodes its index.
 * - Errors are sticky: after KMS_ERR_DECRYPT or KMS_ERR_TRUNCATED every later
 *   call returns the same error, never a clean end of message. Plaintext
 *   released before an error (authenticated chunks of a message that turned
 *   out bad) is the caller's to discard.
 * Memory is constant: one 16400-byte buffer. The state is not thread-safe.
 */
typedef struct tk_cob_dec tk_cob_dec;

/*
 * tk_cob_dec_init returns a decryptor for input key |key| (32 bytes) and
 * |context| in |*out_st|. A copy of the key is kept in locked memory until
 * the header has been verified, then wiped.
 */
int tk_cob_dec_init(tk_cob_dec **out_st, const uint8_t *key, size_t key_len,
                    const uint8_t *context, size_t context_len);

/*
 * tk_cob_dec_header is an optional first call: it feeds exactly the 56-byte
 * header and verifies the commitment. Returns KMS_OK or KMS_ERR_DECRYPT
 * (sticky); KMS_ERR_INVALID_ARGUMENT if |header_len| is not 56 or header
 * bytes were already fed.
 */
__attribute__((warn_unused_result))
int tk_cob_dec_header(tk_cob_dec *st, const uint8_t *header, size_t header_len);

/*
 * tk_cob_dec_update_max returns the most plaintext bytes tk_cob_dec_update
 * can write for an |in_len|-byte input: (in_len / 16400 + 1) * 16384
 * (SIZE_MAX if that overflows). Note that a single input byte can release a
 * whole 16384-byte chunk.
 */
size_t tk_cob_dec_update_max(size_t in_len);

/*
 * tk_cob_dec_update consumes all of |in|, writes the plaintext of every chunk
 * it could authenticate to |out| and the byte count to |*out_len| (a
 * multiple of 16384). |out_cap| must be at least tk_cob_dec_update_max(in_len)
 * or at least the exact count the call will produce, else
 * KMS_ERR_INVALID_ARGUMENT and nothing is consumed. On KMS_ERR_DECRYPT
 * |*out_len| is 0 and what this call wrote is wiped.
 */
__attribute__((warn_unused_result))
int tk_cob_dec_update(tk_cob_dec *st, uint8_t *out, size_t out_cap,
                      size_t *out_len, const uint8_t *in, size_t in_len);

/*
 * tk_cob_dec_final ends the stream: it authenticates the final chunk and
 * writes its plaintext (0..16383 bytes; a |out_cap| of 16383 always
 * suffices) to |out|, its length to |*out_len|. Only a KMS_OK from here
 * means the message was complete and authentic. Returns KMS_OK,
 * KMS_ERR_TRUNCATED, KMS_ERR_DECRYPT.
 */
__attribute__((warn_unused_result))
int tk_cob_dec_final(tk_cob_dec *st, uint8_t *out, size_t out_cap,
                     size_t *out_len);

/* tk_cob_dec_free wipes (input key, derived key, buffered bytes) and frees |st|. NULL is a no-op. */
void tk_cob_dec_free(tk_cob_dec *st);

/* ---- Random access ---------------------------------------------------- */

/*
 * tk_cob_read_fn reads exactly |len| bytes at ciphertext offset |off| into
 * |buf| (pread-style). Returns 0 on success; a negative KMS_ERR_* is passed
 * through to the caller, any other nonzero value becomes KMS_ERR_IO. A short
 * read must be reported as an error.
 */
typedef int (*tk_cob_read_fn)(void *arg, uint64_t off, uint8_t *buf,
                              size_t len);

/*
 * tk_cob_reader: authenticated random access to a ciphertext of known
 * length, read through a tk_cob_read_fn so that it need not be in memory.
 * Not thread-safe (one 16400-byte scratch buffer).
 */
typedef struct tk_cob_reader tk_cob_reader;

/*
 * tk_cob_reader_open checks that |ct_len| is a valid length
 * (KMS_ERR_TRUNCATED), reads the header and checks the commitment
 * (KMS_ERR_DECRYPT), then authenticates the message length by decrypting the
 * final chunk (KMS_ERR_DECRYPT), and returns the reader in |*out_rd|.
 * |read_fn| and |arg| must stay valid until tk_cob_reader_free.
 */
int tk_cob_reader_open(tk_cob_reader **out_rd, const uint8_t *key,
                       size_t key_len, const uint8_t *context,
                       size_t context_len, tk_cob_read_fn read_fn, void *arg,
                       uint64_t ct_len);

/* tk_cob_reader_plaintext_len returns the authenticated plaintext length. */
uint64_t tk_cob_reader_plaintext_len(const tk_cob_reader *rd);

/*
 * tk_cob_reader_read decrypts plaintext bytes [offset, offset + len) into
 * |out|, reading and authenticating only the chunks that cover them. The
 * range must lie within the message (else KMS_ERR_INVALID_ARGUMENT). On
 * failure |out| is wiped. Returns KMS_OK, KMS_ERR_DECRYPT, or the read
 * function's error.
 */
__attribute__((warn_unused_result))
int tk_cob_reader_read(tk_cob_reader *rd, uint8_t *out, uint64_t offset,
                       size_t len);

/* tk_cob_reader_free wipes the derived key and scratch buffer and frees |rd|. NULL is a no-op. */
void tk_cob_reader_free(tk_cob_reader *rd);

/*
 * tk_cob_read_at is tk_cob_reader_open + tk_cob_reader_read +
 * tk_cob_reader_free: one authenticated read of plaintext
 * [offset, offset + len) from a |ct_len|-byte ciphertext.
 */
__attribute__((warn_unused_result))
int tk_cob_read_at(uint8_t *out, const uint8_t *key, size_t key_len,
                   const uint8_t *context, size_t context_len,
                   tk_cob_read_fn read_fn, void *arg, uint64_t ct_len,
                   uint64_t offset, size_t len);

#endif
