/* C2SP signed notes and tlog checkpoints: formatting, parsing and signature verification. */
#ifndef KMS_NOTE_H
#define KMS_NOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_merkle.h"

/*
 * Signature types (c2sp.org/signed-note). kmsd signs checkpoints with Ed25519
 * when the HSM offers CKM_EDDSA, else with ECDSA P-256 as
 * github.com/transparency-dev/witness does it (docs/AUDIT.md): key ID =
 * SHA-256(DER SPKI)[:4], public key material in the vkey = DER SPKI,
 * signature = ASN.1 DER ECDSA-Sig-Value over SHA-256(note text).
 */
#define KMS_NOTE_SIG_ED25519 0x01
#define KMS_NOTE_SIG_ECDSA 0x02

#define KMS_NOTE_NAME_MAX 128 /* bytes of a key name / checkpoint origin */
#define KMS_NOTE_PUB_MAX 128  /* Ed25519: 32; P-256 SPKI: 91 */
#define KMS_NOTE_SIG_MAX 128  /* Ed25519: 64; DER ECDSA P-256: at most 72 */
#define KMS_NOTE_MAX 8192     /* bytes of one signed note we accept */
#define KMS_NOTE_VKEY_MAX (KMS_NOTE_NAME_MAX + 16 + 4 * (KMS_NOTE_PUB_MAX + 3) / 3 + 4)

/* A verifier key: who signs (name), the key ID, the algorithm and the public key. */
struct kms_note_vkey {
  char name[KMS_NOTE_NAME_MAX + 1];
  uint32_t id;
  uint8_t type;
  uint8_t pub[KMS_NOTE_PUB_MAX];
  size_t pub_len;
};

/* kms_note_name_ok: non-empty, at most KMS_NOTE_NAME_MAX bytes, printable ASCII, no space or '+'.
 */
bool kms_note_name_ok(const char *name, size_t len);

/*
 * kms_note_vkey_make fills |out| from a name, a signature type and a public key,
 * computing the key ID the spec recommends for that type. The key is checked
 * (an Ed25519 key is 32 bytes; an ECDSA key is a P-256 SPKI). Returns
 * KMS_ERR_INVALID_ARGUMENT otherwise.
 */
int kms_note_vkey_make(struct kms_note_vkey *out, const char *name, uint8_t type,
                       const uint8_t *pub, size_t pub_len);

/* kms_note_vkey_format writes "name+hex(id)+base64(type||pub)" (NUL-terminated). */
int kms_note_vkey_format(char *out, size_t cap, const struct kms_note_vkey *k);

/*
 * kms_note_vkey_parse reads a verifier key (surrounding whitespace allowed).
 * Refuses unknown types, a bad key, and a key ID that does not match the
 * name and key (so a vkey cannot claim another key's ID).
 */
int kms_note_vkey_parse(struct kms_note_vkey *out, const char *s, size_t len);

/*
 * kms_note_sig_verify checks the raw signature |sig| (without the 4-byte key
 * ID) over |msg| with |k|. Returns KMS_OK or KMS_ERR_DECRYPT; never says why.
 */
int kms_note_sig_verify(const struct kms_note_vkey *k, const uint8_t *msg, size_t msg_len,
                        const uint8_t *sig, size_t sig_len) __attribute__((warn_unused_result));

/*
 * kms_note_format writes the signed note text || "\n" || "— name
 * base64(id||sig)\n" into |out| and its length into |*out_len|. |text| must
 * end in a newline.
 */
int kms_note_format(char *out, size_t cap, size_t *out_len, const char *text, size_t text_len,
                    const struct kms_note_vkey *k, const uint8_t *sig, size_t sig_len);

/*
 * kms_note_verify checks a signed note against |k|: the note is well formed
 * (UTF-8, no control characters but newline, text ending in a newline, then a
 * blank line, then signature lines), at least one signature line carries
 * |k|'s name and ID, and every such line verifies. Other signatures are
 * ignored, as the spec requires. On success |*out_text_len| is the length of
 * the signed text (which starts at |note|). Returns KMS_OK,
 * KMS_ERR_DECRYPT (no valid signature by |k|, or a bad one), or
 * KMS_ERR_INVALID_ARGUMENT (malformed).
 */
int kms_note_verify(const char *note, size_t len, const struct kms_note_vkey *k,
                    size_t *out_text_len) __attribute__((warn_unused_result));

/*
 * kms_note_next finds the next note in a stream of notes separated by blank
 * lines (the checkpoints file). Checkpoint texts have no blank line, so the
 * first blank line ends the text and the signature lines follow. Skips
 * leading blank lines: |*out_start| is where the note starts, |*out_note_len|
 * its length (through the last signature line's newline), |*out_consumed|
 * the bytes used including the separator. Returns KMS_OK,
 * KMS_ERR_NOT_FOUND at a clean end (only blank lines left), or
 * KMS_ERR_TRUNCATED for an incomplete note (a torn write at the end).
 */
int kms_note_next(const char *buf, size_t len, size_t *out_start, size_t *out_note_len,
                  size_t *out_consumed);

/* A tlog checkpoint body (c2sp.org/tlog-checkpoint). */
struct kms_checkpoint {
  char origin[KMS_NOTE_NAME_MAX + 1];
  uint64_t size;
  uint8_t root[KMS_MERKLE_HASH_LEN];
};

/* kms_checkpoint_format writes "origin\nsize\nbase64(root)\n". */
int kms_checkpoint_format(char *out, size_t cap, size_t *out_len, const struct kms_checkpoint *cp);

/*
 * kms_checkpoint_parse reads a checkpoint text: origin, size without leading
 * zeros, a base64 32-byte root, optional non-empty extension lines (ignored).
 */
int kms_checkpoint_parse(struct kms_checkpoint *out, const char *text, size_t len);

/* Strict standard base64 (RFC 4648 section 4, padded). Decode refuses anything else. */
size_t kms_b64_encode(char *out, size_t cap, const uint8_t *in, size_t len);
int kms_b64_decode(uint8_t *out, size_t cap, size_t *out_len, const char *in, size_t len);

#endif
