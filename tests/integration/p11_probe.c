/* Raw PKCS#11 for tests only: recovers a KEK's bytes to prove they are stored nowhere. */
#include "p11_probe.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <softhsm/pkcs11.h>

int
p11_probe_unwrap_kek(const char *module, const char *label, const char *pin_file,
                     const uint8_t *token, size_t token_len, uint32_t mech, int extractable,
                     uint8_t out[32])
{
  int rc = -1;
  void *lib = dlopen(module, RTLD_NOW);
  if (lib == NULL) {
    return -1;
  }
  CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  CK_FUNCTION_LIST_PTR f = NULL;
  if (gfl == NULL || gfl(&f) != CKR_OK) {
    return -1;
  }
  CK_C_INITIALIZE_ARGS ia;
  memset(&ia, 0, sizeof(ia));
  ia.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = f->C_Initialize(&ia);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    return -1;
  }
  CK_SLOT_ID slots[64];
  CK_ULONG ns = 64;
  CK_SLOT_ID slot = 0;
  int found = 0;
  f->C_GetSlotList(CK_TRUE, slots, &ns);
  for (CK_ULONG i = 0; i < ns && !found; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK) {
      char lab[33];
      memcpy(lab, ti.label, 32);
      lab[32] = '\0';
      for (int k = 31; k >= 0 && lab[k] == ' '; k--) {
        lab[k] = '\0';
      }
      if (strcmp(lab, label) == 0) {
        slot = slots[i];
        found = 1;
      }
    }
  }
  char pin[128] = "";
  FILE *pf = fopen(pin_file, "r");
  if (!found || pf == NULL || fgets(pin, sizeof(pin), pf) == NULL) {
    if (pf != NULL) {
      fclose(pf);
    }
    goto out;
  }
  fclose(pf);
  pin[strcspn(pin, "\r\n")] = '\0';
  CK_SESSION_HANDLE s;
  if (f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK) {
    goto out;
  }
  rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    goto out;
  }
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  const char *id = "tenantkms-root-v1";
  CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, strlen(id)}};
  CK_OBJECT_HANDLE root;
  CK_ULONG nfound = 0;
  f->C_FindObjectsInit(s, find, 2);
  f->C_FindObjects(s, &root, 1, &nfound);
  f->C_FindObjectsFinal(s);
  if (nfound != 1) {
    goto out;
  }
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL t = CK_TRUE, fa = CK_FALSE;
  CK_BBOOL sensitive = extractable ? CK_FALSE : CK_TRUE;
  CK_BBOOL extract = extractable ? CK_TRUE : CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},  {CKA_KEY_TYPE, &kt, sizeof(kt)},
      {CKA_TOKEN, &fa, sizeof(fa)},    {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
      {CKA_EXTRACTABLE, &extract, sizeof(extract)}, {CKA_DECRYPT, &t, sizeof(t)},
      {CKA_WRAP, &fa, sizeof(fa)},     {CKA_UNWRAP, &fa, sizeof(fa)},
  };
  CK_MECHANISM m = {mech, NULL, 0};
  CK_OBJECT_HANDLE kek;
  rc = 1;
  if (f->C_UnwrapKey(s, &m, root, (CK_BYTE_PTR)token, token_len, tmpl, 8, &kek) != CKR_OK) {
    goto out;
  }
  if (!extractable) {
    rc = 0;
  } else {
    CK_ATTRIBUTE val = {CKA_VALUE, out, 32};
    if (f->C_GetAttributeValue(s, kek, &val, 1) == CKR_OK && val.ulValueLen == 32) {
      rc = 0;
    }
  }
  f->C_DestroyObject(s, kek);
out:
  return rc; /* the process exits soon; no C_Finalize so the hsm module in-process is unaffected */
}
