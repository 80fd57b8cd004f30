/* Who is calling: the principal named by a verified client certificate. */
#ifndef KMSD_IDENTITY_H
#define KMSD_IDENTITY_H

#include <stddef.h>

#include <openssl/x509.h>

#define IDENTITY_MAX 256

/*
 * identity_from_cert writes the principal of |cert| into |out|: its first URI
 * subjectAltName (e.g. spiffe://tenantkms.dev/recording), else its subject CN
 * prefixed "cn:" so a CN can never pose as a URI. Returns KMS_OK, or
 * KMS_ERR_UNAUTHENTICATED if neither is usable (missing, too long, embedded
 * NUL or control characters).
 */
int identity_from_cert(char out[IDENTITY_MAX], X509 *cert);

#endif
