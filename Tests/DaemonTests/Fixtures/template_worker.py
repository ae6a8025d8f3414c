"""The daemon tests' template worker: the test worker's handler, served from
workers forked off one template (stockade_worker.serve_template). Besides
test_worker.py's requests:
    b"ppid"   -> the pid of the process it was forked from (the template)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stockade_worker  # noqa: E402

import test_worker  # noqa: E402


def load():
    def handle(payload: bytes) -> bytes:
        if payload == b"ppid":
            return str(os.getppid()).encode()
        return test_worker.handle(payload)
    return handle


if __name__ == "__main__":
    sys.exit(stockade_worker.serve_template(load))
