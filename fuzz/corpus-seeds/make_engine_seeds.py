#!/usr/bin/env python3
"""Writes the seed inputs of engine_fuzz to fuzz/seeds/engine/.

Each seed is a short script in the fuzzer's input format (see Harness::run in
fuzz/engine_fuzz.cc): a config byte, then operations, each an opcode byte (taken modulo 16)
followed by its arguments. The seeds start the fuzzer from complete exchanges (small,
scheduled, lossy, aborted, concurrent RPCs, peer-table pressure) instead of from nothing.

Usage: fuzz/corpus-seeds/make_engine_seeds.py [output-dir]
"""
import os
import sys

START, FWD_A, FWD_B, PUMP, ADVANCE, RUN_TICKS, RESPOND, ABORT_SERVER = range(8)
ABORT_CLIENT, RELEASE, RAW, STRUCTURED, DATA_BURST, MUTATE, RELEASE_HELD, FINISH = range(8, 16)

DATA, GRANT, RESEND, RPC_UNKNOWN, BUSY, CUTOFFS, FREEZE, NEED_ACK, ACK = range(9)


def u32(v):
    return v.to_bytes(4, "big")


def start(length, on_b=False):
    """startRequest of `length` bytes (length selector case 4: 1 + u32 % max)."""
    return bytes([START, 0x80 if on_b else 0x00, 4]) + u32(length - 1)


def run_ticks(n):
    return bytes([RUN_TICKS, (n - 1) % 32])


def respond(length, on_a=False):
    return bytes([RESPOND, 0x80 if on_a else 0x00, 4]) + u32(length - 1)


def release(on_b=False):
    return bytes([RELEASE, 0x80 if on_b else 0x00])


def forward_lossy(side, actions):
    """Forwards one side's queue; per packet 0/1 deliver, 2 drop, 3 duplicate, 4 hold."""
    return bytes([FWD_A if side == "A" else FWD_B, 1]) + bytes(actions)


SEEDS = {
    # One single-packet RPC, answered and released.
    "small-rpc": bytes([0]) + start(100) + bytes([PUMP]) + respond(50) + bytes([PUMP])
    + run_ticks(3) + release() + release(True),
    # A request that needs grants, and a response that needs grants.
    "scheduled-rpc": bytes([0]) + start(100_000) + run_ticks(5) + respond(60_000) + run_ticks(10)
    + release() + release(True),
    # Lossy delivery in both directions, then recovery by RESEND.
    "lossy-rpc": bytes([0x05]) + start(30_000) + forward_lossy("A", [0, 2, 3, 4, 0, 2, 1, 0])
    + forward_lossy("B", [2, 0, 2]) + bytes([ADVANCE, 2]) + run_ticks(8)
    + bytes([RELEASE_HELD, 0]) + run_ticks(8),
    # The client gives up on an RPC while its request is on the wire.
    "abort-client": bytes([0]) + start(20_000) + bytes([FWD_A, 0, ABORT_CLIENT, 0]) + run_ticks(10),
    # Several concurrent RPCs in both directions, different grant policies.
    "concurrent": bytes([0x1b]) + start(5_000) + start(80_000) + start(40_000, on_b=True)
    + start(1) + run_ticks(4) + respond(90_000) + respond(10) + respond(3_000, on_a=True)
    + run_ticks(20),
    # Forged GRANT, RESEND, NEED_ACK and ACK for the ids in use.
    "forged-control": bytes([0]) + start(50_000) + bytes([FWD_A, 0])
    + bytes([STRUCTURED, 0x00, 0x00, GRANT, 0x00, 0x41, 0x02])
    + bytes([STRUCTURED, 0x00, 0x00, RESEND, 0x00, 0x01, 0x00, 0x03])
    + bytes([STRUCTURED, 0x00, 0x00, NEED_ACK, 0x00])
    + bytes([STRUCTURED, 0x01, 0x00, ACK, 0x00, 0x02, 0x00, 0x00]) + run_ticks(10),
    # Packets from many sources fill the peer table; a long pause lets idle peers go.
    "peer-pressure": bytes([0x40]) + start(10)
    + b"".join(bytes([STRUCTURED, 0x01, 0x80 + i, CUTOFFS, 0x00, 0x00, 0x00, 0x01]) for i in range(20))
    + bytes([ADVANCE, 3, 0]) + start(10) + run_ticks(3),
    # The real request is lost; forged segments at every other slot leave more gaps than
    # one round of RESENDs asks for.
    "gappy-request": bytes([0]) + start(100_000) + bytes([FWD_A, 3])
    + bytes([DATA_BURST, 0x01, 0x00, 0x00, 0x00, 38, 0x01]) + run_ticks(12),
    # Packets held by the network arrive after the RPC ended (at-most-once).
    "late-duplicates": bytes([0]) + start(3_000) + forward_lossy("A", [3, 4, 4]) + bytes([PUMP])
    + respond(100) + run_ticks(6) + bytes([ADVANCE, 1, 10, RELEASE_HELD, 0]) + run_ticks(3),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "seeds", "engine")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
