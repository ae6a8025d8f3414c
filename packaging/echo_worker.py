"""The example tenant of the packaged stockaded.toml: answers each request
with its body, over the Stockade worker SDK's encrypted channel."""
import stockade_worker


def handle(payload: bytes) -> bytes:
    return payload


if __name__ == "__main__":
    stockade_worker.serve(handle)
