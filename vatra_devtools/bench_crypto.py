"""``python -m vatra_devtools.bench_crypto``: what the session and the tablet vault cost.

Prints the CPU cost of one session handshake (both sides, in memory), of
sealing and opening one frame at three sizes, and of one Argon2id derivation
of a tablet's replica key (interactive limits), with the time an offline
search of every 4-, 5- and 6-digit PIN would take on one such core.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from nacl.pwhash import argon2id
from nacl.signing import SigningKey

from sync_server.protocol.session import (
    ClientHandshake,
    FrameOpener,
    FrameSealer,
    ServerHandshake,
    SessionKeys,
)


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    server, device = SigningKey.generate(), SigningKey.generate()

    def handshake() -> tuple[SessionKeys, SessionKeys]:
        c, s = ClientHandshake("d", device, server.verify_key), ServerHandshake(server)
        auth, keys = c.on_welcome(s.on_hello(c.hello()))
        return keys, s.on_auth(auth, device.verify_key)

    print(f"handshake, both sides:      {_median_seconds(handshake, 200) * 1e3:.3f} ms")
    client_keys, server_keys = handshake()
    seal, opener = FrameSealer(client_keys.send), FrameOpener(server_keys.receive)
    for size in (200, 2_000, 20_000):
        payload = bytes(size)

        def round_trip(p: bytes = payload) -> bytes:
            return opener.open(seal.seal(p))

        per = _median_seconds(round_trip, 2000)
        print(f"seal + open {size:>6} B:       {per * 1e6:.1f} us")
    kdf = _median_seconds(lambda: argon2id.kdf(
        32, b"1234", bytes(16), opslimit=argon2id.OPSLIMIT_INTERACTIVE,
        memlimit=argon2id.MEMLIMIT_INTERACTIVE), 5)
    print(f"Argon2id (interactive):     {kdf * 1e3:.1f} ms")
    for digits in (4, 5, 6):
        print(f"  every {digits}-digit PIN:    {10**digits * kdf / 3600:.1f} h on one core")


if __name__ == "__main__":
    main()
