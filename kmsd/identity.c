/* Extracts the principal name from a client certificate that TLS already verified. */
#include "identity.h"

#include <string.h>

#include <openssl/x509v3.h>

#include "kms_err.h"

static int
copy_name(char out[IDENTITY_MAX], const char *prefix, const unsigned char *s, int len)
{
  size_t pl = strlen(prefix);
  if (len <= 0 || (size_t)len + pl >= IDENTITY_MAX) {
    return KMS_ERR_UNAUTHENTICATED;
  }
  for (int i = 0; i < len; i++) {
    if (s[i] < 0x21 || s[i] > 0x7e) {
      return KMS_ERR_UNAUTHENTICATED;
    }
  }
  memcpy(out, prefix, pl);
  memcpy(out + pl, s, (size_t)len);
  out[pl + (size_t)len] = '\0';
  return KMS_OK;
}

int
identity_from_cert(char out[IDENTITY_MAX], X509 *cert)
{
  int r = KMS_ERR_UNAUTHENTICATED;
  out[0] = '\0';
  if (cert == NULL) {
    return r;
  }
  GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  if (sans != NULL) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
      const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
      if (gn->type == GEN_URI) {
        const ASN1_IA5STRING *uri = gn->d.uniformResourceIdentifier;
        r = copy_name(out, "", ASN1_STRING_get0_data(uri), ASN1_STRING_length(uri));
        break;
      }
    }
    GENERAL_NAMES_free(sans);
    if (r == KMS_OK || out[0] != '\0') {
      return r;
    }
  }
  X509_NAME *subj = X509_get_subject_name(cert);
  int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subj, NID_commonName, idx) >= 0) {
    return KMS_ERR_UNAUTHENTICATED; /* none, or ambiguous */
  }
  const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
  return copy_name(out, "cn:", ASN1_STRING_get0_data(cn), ASN1_STRING_length(cn));
}
