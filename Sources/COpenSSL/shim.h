/* OpenSSL 3: EVP ciphers (AES-256-GCM, ChaCha20-Poly1305), X25519, HKDF/HMAC-SHA256. */
#ifndef STOCKADE_COPENSSL_SHIM_H
#define STOCKADE_COPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/err.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#endif
