"""The SDK's Noise implementation against the cacophony vectors (unittest; pytest runs it too)."""
import json
import os
import unittest

from stockade_worker.noise import AESGCM_SUITE, CHACHAPOLY_SUITE, Handshake

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = os.path.join(ROOT, "Tests", "TestData", "noise-cacophony.json")
SUITES = {"Noise_NNpsk0_25519_AESGCM_SHA256": AESGCM_SUITE, "Noise_NNpsk0_25519_ChaChaPoly_SHA256": CHACHAPOLY_SUITE}


class NoiseVectors(unittest.TestCase):
    def test_vectors(self):
        with open(VECTORS) as f:
            vectors = [v for v in json.load(f) if v["protocol_name"] in SUITES]
        self.assertEqual(len(vectors), 2)
        for v in vectors:
            suite = SUITES[v["protocol_name"]]
            h = bytes.fromhex
            init = Handshake(True, suite, h(v["init_prologue"]), h(v["init_psks"][0]), h(v["init_ephemeral"]))
            resp = Handshake(False, suite, h(v["resp_prologue"]), h(v["resp_psks"][0]), h(v["resp_ephemeral"]))
            msgs = v["messages"]
            ct = init.write_message(h(msgs[0]["payload"]))
            self.assertEqual(ct.hex(), msgs[0]["ciphertext"])
            self.assertEqual(resp.read_message(ct).hex(), msgs[0]["payload"])
            ct = resp.write_message(h(msgs[1]["payload"]))
            self.assertEqual(ct.hex(), msgs[1]["ciphertext"])
            self.assertEqual(init.read_message(ct).hex(), msgs[1]["payload"])
            self.assertEqual(init.handshake_hash.hex(), v["handshake_hash"])
            self.assertEqual(resp.handshake_hash.hex(), v["handshake_hash"])
            i_tx, i_rx = init.split()
            r_rx, r_tx = resp.split()
            for n, m in enumerate(msgs[2:]):
                tx, rx = (i_tx, r_rx) if n % 2 == 0 else (r_tx, i_rx)
                ct = tx.encrypt_with_ad(b"", h(m["payload"]))
                self.assertEqual(ct.hex(), m["ciphertext"], f"{v['protocol_name']} message {n + 2}")
                self.assertEqual(rx.decrypt_with_ad(b"", ct).hex(), m["payload"])


if __name__ == "__main__":
    unittest.main()
