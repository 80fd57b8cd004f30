/* Wire framing: a 4-byte big-endian payload length, then one protobuf message. */
#ifndef KMS_FRAME_H
#define KMS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define KMS_FRAME_HDR_LEN 4
/* Default cap on a frame's payload; kmsd's max_frame may lower or raise it. */
#define KMS_FRAME_MAX_DEFAULT (64u * 1024u)
/* No configuration may raise the cap above this. */
#define KMS_FRAME_MAX_HARD (16u * 1024u * 1024u)

/*
 * kms_frame_peek looks at the |avail| bytes at |buf|. It returns
 * KMS_ERR_TRUNCATED if the header is not complete yet, KMS_ERR_FRAME_TOO_LARGE
 * if the announced payload exceeds |max_payload| (checked before anything is
 * allocated), and KMS_OK with *out_payload_len set otherwise. It does not
 * require the payload itself to be present.
 */
int kms_frame_peek(const uint8_t *buf, size_t avail, size_t max_payload,
                   size_t *out_payload_len);

/* kms_frame_put_header writes the header for a payload of |len| bytes. */
void kms_frame_put_header(uint8_t out[KMS_FRAME_HDR_LEN], uint32_t len);

#endif
