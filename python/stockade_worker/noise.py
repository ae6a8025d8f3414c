"""Noise_NNpsk0_25519_{AESGCM,ChaChaPoly}_SHA256, on the `cryptography` package.

    NNpsk0:
      -> psk, e
      <- e, ee
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

AESGCM_SUITE = 1
CHACHAPOLY_SUITE = 2
SUITE_NAMES = {AESGCM_SUITE: "AESGCM", CHACHAPOLY_SUITE: "ChaChaPoly"}
MAX_NONCE = 2**64 - 1
MAX_MESSAGE = 65535
HANDSHAKE_OVERHEAD = 32 + 16
TAG = 16

# cryptography 47 and later seal and open into a buffer the caller owns
# (encrypt_into/decrypt_into): no ciphertext or plaintext object is allocated
# per record. Older releases (Debian's python3-cryptography is 38) take bytes
# and return bytes; the *_into methods below then copy once more.
HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(ChaCha20Poly1305, "decrypt_into")

# The 96-bit nonce: 32 zero bits, then the 64-bit counter (big-endian for
# AES-GCM, little-endian for ChaChaPoly).
NONCE_COUNTER = {AESGCM_SUITE: struct.Struct(">Q"), CHACHAPOLY_SUITE: struct.Struct("<Q")}


def make_aead(suite: int, key: bytes):
    """A fresh AEAD object for `suite` under `key`."""
    return AESGCM(key) if suite == AESGCM_SUITE else ChaCha20Poly1305(key)


def aead_encrypt_into(aead, nonce, plaintext, ad, out) -> None:
    """Seals `plaintext` into `out` (exactly len(plaintext) + TAG bytes)."""
    if HAS_INTO:
        aead.encrypt_into(nonce, plaintext, ad, out)
    else:
        out[:] = aead.encrypt(bytes(nonce), bytes(plaintext), bytes(ad))


def aead_decrypt_into(aead, nonce, ciphertext, ad, out) -> None:
    """Opens `ciphertext` into `out` (exactly len(ciphertext) - TAG bytes);
    raises InvalidTag, and then what `out` holds means nothing."""
    if HAS_INTO:
        aead.decrypt_into(nonce, ciphertext, ad, out)
    else:
        out[:] = aead.decrypt(bytes(nonce), bytes(ciphertext), bytes(ad))


class NoiseError(Exception):
    """A handshake or transport message failed (bad tag, bad length)."""


class LowOrderPoint(NoiseError):
    """The peer's ephemeral key is a low-order X25519 point (the shared secret would be all zero)."""


def protocol_name(suite: int) -> str:
    return f"Noise_NNpsk0_25519_{SUITE_NAMES[suite]}_SHA256"


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf(chaining_key: bytes, ikm: bytes, n: int) -> list[bytes]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if n == 2:
        return [out1, out2]
    return [out1, out2, _hmac(temp, out2 + b"\x03")]


class CipherState:
    """A key, its AEAD object and the 64-bit nonce counter."""

    def __init__(self, suite: int, key: Optional[bytes] = None):
        self.suite = suite
        self.n = 0
        self.k: Optional[bytes] = None
        self._aead = None
        self._counter = NONCE_COUNTER[suite]
        # Rewritten in place for every record (bytes-like: cryptography takes
        # any buffer for the nonce).
        self._nonce = bytearray(12)
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        self.k = bytes(key)
        self._aead = make_aead(self.suite, self.k)
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def nonce(self, n: int) -> bytes:
        order = "big" if self.suite == AESGCM_SUITE else "little"
        return b"\x00\x00\x00\x00" + n.to_bytes(8, order)

    def _next(self) -> int:
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce counter exhausted")
        n = self.n
        self.n += 1
        return n

    # For small messages the calls that return a new bytes object are the
    # faster ones (the *_into calls cost more to set up than a small copy).

    def encrypt_with_ad(self, ad, plaintext) -> bytes:
        if self._aead is None:
            return bytes(plaintext)
        if HAS_INTO:
            return self._aead.encrypt(self._next_nonce(), plaintext, ad)
        return self._aead.encrypt(bytes(self._next_nonce()), bytes(plaintext), bytes(ad))

    def decrypt_with_ad(self, ad, ciphertext) -> bytes:
        if self._aead is None:
            return bytes(ciphertext)
        nonce = self._next_nonce()
        try:
            if HAS_INTO:
                return self._aead.decrypt(nonce, ciphertext, ad)
            return self._aead.decrypt(bytes(nonce), bytes(ciphertext), bytes(ad))
        except InvalidTag:
            raise NoiseError("message failed authentication") from None

    def _next_nonce(self) -> bytearray:
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce counter exhausted")
        self.n = n + 1
        self._counter.pack_into(self._nonce, 4, n)
        return self._nonce

    def encrypt_into(self, ad, plaintext, out) -> None:
        """Seals `plaintext` with the next nonce into `out`, exactly
        len(plaintext) + TAG bytes (a transport cipher: it has a key)."""
        aead_encrypt_into(self._aead, self._next_nonce(), plaintext, ad, out)

    def decrypt_into(self, ad, ciphertext, out) -> None:
        """Opens `ciphertext` with the next nonce into `out`, exactly
        len(ciphertext) - TAG bytes; NoiseError when it fails authentication."""
        try:
            aead_decrypt_into(self._aead, self._next_nonce(), ciphertext, ad, out)
        except InvalidTag:
            raise NoiseError("message failed authentication") from None

    def rekey(self) -> None:
        """Noise Rekey(): k = ENCRYPT(k, 2^64-1, "", zeros)[:32]; n carries on."""
        if self._aead is None:
            return
        n = self.n
        self.initialize_key(self._aead.encrypt(self.nonce(MAX_NONCE), bytes(32), b"")[:32])
        self.n = n


class SymmetricState:
    def __init__(self, suite: int):
        name = protocol_name(suite).encode()
        self.h = name.ljust(32, b"\x00") if len(name) <= 32 else hashlib.sha256(name).digest()
        self.ck = self.h
        self.cipher = CipherState(suite)
        self.suite = suite

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp = hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(temp)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(self.suite, k1), CipherState(self.suite, k2)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Handshake:
    """One NNpsk0 handshake. `ephemeral` is only for test vectors."""

    def __init__(self, initiator: bool, suite: int, prologue: bytes, psk: bytes,
                 ephemeral: Optional[bytes] = None):
        if len(psk) != 32:
            raise ValueError("a Noise PSK is 32 bytes")
        self.initiator = initiator
        self.psk = bytes(psk)
        self.ss = SymmetricState(suite)
        self.ss.mix_hash(prologue)
        self.e = (X25519PrivateKey.from_private_bytes(ephemeral) if ephemeral is not None
                  else X25519PrivateKey.generate())
        self.re: Optional[bytes] = None
        self.step = 0

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h

    def write_message(self, payload: bytes = b"") -> bytes:
        if len(payload) > MAX_MESSAGE - HANDSHAKE_OVERHEAD:
            raise ValueError("handshake payload too long")
        e_pub = _public(self.e)
        if self.initiator and self.step == 0:
            self.ss.mix_key_and_hash(self.psk)
            self.ss.mix_hash(e_pub)
            self.ss.mix_key(e_pub)
        elif not self.initiator and self.step == 1:
            self.ss.mix_hash(e_pub)
            self.ss.mix_key(e_pub)
            try:
                shared = self.e.exchange(X25519PublicKey.from_public_bytes(self.re))
            except ValueError:
                raise LowOrderPoint("peer ephemeral is a low-order point") from None
            self.ss.mix_key(shared)
        else:
            raise NoiseError(f"cannot write handshake message {self.step + 1}")
        out = e_pub + self.ss.encrypt_and_hash(payload)
        self.step += 1
        return out

    def read_message(self, message: bytes) -> bytes:
        if len(message) < HANDSHAKE_OVERHEAD:
            raise NoiseError(f"handshake message of {len(message)} bytes is too short")
        if len(message) > MAX_MESSAGE:
            raise NoiseError("handshake message too long")
        re, rest = bytes(message[:32]), bytes(message[32:])
        if not self.initiator and self.step == 0:
            self.ss.mix_key_and_hash(self.psk)
            self.re = re
            self.ss.mix_hash(re)
            self.ss.mix_key(re)
        elif self.initiator and self.step == 1:
            self.re = re
            self.ss.mix_hash(re)
            self.ss.mix_key(re)
            try:
                shared = self.e.exchange(X25519PublicKey.from_public_bytes(re))
            except ValueError:
                raise LowOrderPoint("peer ephemeral is a low-order point") from None
            self.ss.mix_key(shared)
        else:
            raise NoiseError(f"unexpected handshake message {self.step + 1}")
        payload = self.ss.decrypt_and_hash(rest)
        self.step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator to responder, responder to initiator)."""
        if self.step != 2:
            raise NoiseError("handshake not complete")
        return self.ss.split()
