"""Simulated secure aggregation (Bonawitz et al., CCS 2017): the server learns the sum of the
cohort's updates and nothing about any one of them.

Each round's cohort (the participants the round keeps) runs the protocol's four steps:

 1. AdvertiseKeys: participant i draws a Diffie-Hellman secret a_i (a 256-bit exponent in the
    2048-bit MODP group of RFC 3526) and a self-mask seed b_i, and publishes g^a_i.
 2. ShareKeys: i splits a_i and b_i into Shamir shares (threshold t over the prime 2^521 - 1),
    one per cohort member, sent encrypted through the server.
 3. MaskedInput: i encodes its update in fixed point (x * 2^fractional_bits, rounded) in the
    ring Z_(2^32) and sends
        y_i = x_i + PRG(b_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)   (mod 2^32)
    with s_ij = g^(a_i a_j), which i computes from its own a_i and j's public key; the pairwise
    masks cancel in the sum, the self mask does not.
 4. Unmasking: the server names who arrived (survivors S) and who dropped after masking (D).
    Each survivor reveals its shares of b_i for every i in S and of a_d for every d in D, never
    both for one participant. With at least t survivors the server rebuilds each b_i and
    removes PRG(b_i), and rebuilds each a_d, recomputes s_dj with j's public key and removes
    the pairwise masks survivors added for d. Fewer than t survivors: nothing can be unmasked.

What is simulated: the messages of steps 1, 2 and 4 are not routed through the driver. Every
participant's keys derive from (seed, participant, round, method), so a participant computes
the public keys of the others (what the server would relay in step 1), and the driver's
`unmask` computes the shares the survivors would reveal in step 4 from the same derivation;
their bytes are counted as if sent (`protocol_bytes`). The masked inputs of step 3 are the
only thing a participant's host returns, and that is what the driver holds: the tests check
that it is an integer vector uncorrelated with the update, and that the unmasked sum equals
the plain sum within the quantisation bound.

Hand-written because no well-kept Python library implements the simulation side of SecAgg
(Flower's SecAgg+ is bound to its own message layer); the primitives are the textbook ones:
modular exponentiation (Python's pow), Shamir sharing with Lagrange interpolation at 0, and
numpy's Philox generator as the PRG.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

RING_BITS = 32
RING = 1 << RING_BITS
# RFC 3526, 2048-bit MODP group (group 14), generator 2.
DH_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
DH_GENERATOR = 2
SHARE_PRIME = (1 << 521) - 1  # a Mersenne prime larger than every secret shared
KEY_BYTES = 256               # a public key: one element of the 2048-bit group
SHARE_BYTES = 2 * 66          # an encrypted share of (a_i, b_i): two elements below 2^521
ID_BYTES = 4


def _hash_int(*parts, bits: int = 256) -> int:
    digest = hashlib.sha512(repr(parts).encode()).digest()
    return int.from_bytes(digest, "big") >> (512 - bits)


class Keys:
    """One participant's secrets for one round: the DH exponent a and the self-mask seed b."""

    def __init__(self, seed: int, pid: int, round_number: int, stream: str):
        self.pid = pid
        self.secret = _hash_int(seed, pid, round_number, stream, "secagg-dh") | 1
        self.self_seed = _hash_int(seed, pid, round_number, stream, "secagg-self-mask")
        self._context = (seed, round_number, stream)

    @property
    def public(self) -> int:
        return pow(DH_GENERATOR, self.secret, DH_PRIME)

    def shares(self, holders: list[int], threshold: int) -> dict[int, tuple[int, int]]:
        """Shamir shares of (a, b) for each holder (evaluated at holder id + 1)."""
        coefficients = [[secret] + [_hash_int(*self._context, self.pid, which, k, bits=512)
                                    for k in range(1, threshold)]
                        for which, secret in enumerate((self.secret, self.self_seed))]
        return {j: tuple(_evaluate(c, j + 1) for c in coefficients) for j in holders}


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % SHARE_PRIME
    return value


def reconstruct(shares: dict[int, int]) -> int:
    """The secret from {holder id: share} (Lagrange interpolation at 0 over SHARE_PRIME)."""
    secret = 0
    xs = {j: j + 1 for j in shares}
    for j, y in shares.items():
        numerator, denominator = 1, 1
        for k in shares:
            if k != j:
                numerator = numerator * (-xs[k]) % SHARE_PRIME
                denominator = denominator * (xs[j] - xs[k]) % SHARE_PRIME
        secret = (secret + y * numerator * pow(denominator, -1, SHARE_PRIME)) % SHARE_PRIME
    return secret


def prg(seed: int, size: int) -> torch.Tensor:
    """`size` uniform elements of Z_(2^32) (int64) from a 256-bit seed (numpy's Philox)."""
    key = np.frombuffer(seed.to_bytes(32, "big")[:16], dtype=np.uint64)
    generator = np.random.Generator(np.random.Philox(key=key))
    return torch.from_numpy(generator.integers(0, RING, size=size, dtype=np.int64))


def pair_seed(secret: int, other_public: int) -> int:
    """The pairwise mask seed s_ij = H(g^(a_i a_j)): the same from either side."""
    return _hash_int(pow(other_public, secret, DH_PRIME))


def threshold_of(cohort_size: int, fraction: float) -> int:
    return min(cohort_size, max(2, math.ceil(fraction * cohort_size)))


# ---- fixed point ------------------------------------------------------------------------------
def layout(update: dict[str, torch.Tensor]) -> list[tuple[str, torch.Size]]:
    return [(name, update[name].shape) for name in sorted(update)]


def flatten(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([update[name].to(torch.float64).reshape(-1) for name in sorted(update)])


def unflatten(vector: torch.Tensor, shapes: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, shape in shapes:
        size = math.prod(shape)
        out[name] = vector[start:start + size].reshape(shape)
        start += size
    return out


def encode(vector: torch.Tensor, fractional_bits: int) -> torch.Tensor:
    """Fixed point in Z_(2^32): round(x * 2^bits) mod 2^32 (int64). Values must lie within
    +-2^(31 - bits) once summed, or the sum wraps."""
    return torch.remainder(torch.round(vector * (1 << fractional_bits)).to(torch.int64), RING)


def decode(ring_vector: torch.Tensor, fractional_bits: int) -> torch.Tensor:
    """The signed value of a ring element, as float64 (the inverse of encode, up to rounding)."""
    signed = torch.where(ring_vector >= RING // 2, ring_vector - RING, ring_vector)
    return signed.to(torch.float64) / (1 << fractional_bits)


# ---- the two sides ----------------------------------------------------------------------------
def mask(vector: torch.Tensor, pid: int, cohort: list[int], seed: int, round_number: int, stream: str,
         fractional_bits: int) -> torch.Tensor:
    """Participant `pid`'s masked input y_i (step 3) for its float64 `vector`."""
    keys = Keys(seed, pid, round_number, stream)
    masked = encode(vector, fractional_bits) + prg(keys.self_seed, vector.numel())
    for j in cohort:
        if j == pid:
            continue
        pairwise = prg(pair_seed(keys.secret, Keys(seed, j, round_number, stream).public), vector.numel())
        masked = masked + pairwise if j > pid else masked - pairwise
        masked = torch.remainder(masked, RING)
    return torch.remainder(masked, RING)


class TooFewSurvivors(Exception):
    """Fewer than the threshold arrived: the sum cannot be unmasked."""


def unmask(masked: dict[int, torch.Tensor], cohort: list[int], seed: int, round_number: int, stream: str,
           threshold: int) -> tuple[torch.Tensor, dict]:
    """The sum (in the ring) of the survivors' inputs from their masked inputs `masked`
    ({survivor: y_i}), and what was revealed: {"self_seeds": survivors whose b was rebuilt,
    "dh_secrets": dropouts whose a was rebuilt}. The shares the survivors reveal are computed
    here on their behalf (see the module notes); each secret is rebuilt from exactly
    `threshold` of them."""
    survivors = sorted(masked)
    dropped = sorted(set(cohort) - set(masked))
    if len(survivors) < threshold:
        raise TooFewSurvivors(f"{len(survivors)} of {len(cohort)} masked inputs arrived; "
                              f"{threshold} are needed to unmask")
    size = next(iter(masked.values())).numel()
    revealers = survivors[:threshold]
    total = torch.zeros(size, dtype=torch.int64)
    for i in survivors:
        total = torch.remainder(total + masked[i], RING)
    for i in survivors:  # survivors reveal their shares of b_i
        shares = Keys(seed, i, round_number, stream).shares(revealers, threshold)
        b = reconstruct({j: shares[j][1] for j in revealers})
        total = torch.remainder(total - prg(b, size), RING)
    for d in dropped:  # ... and of a_d for each participant that dropped after masking
        shares = Keys(seed, d, round_number, stream).shares(revealers, threshold)
        a = reconstruct({j: shares[j][0] for j in revealers})
        for j in survivors:
            pairwise = prg(pair_seed(a, Keys(seed, j, round_number, stream).public), size)
            # survivor j added +PRG(s_jd) if d > j, -PRG(s_jd) if d < j
            total = torch.remainder(total - pairwise if d > j else total + pairwise, RING)
    return total, {"self_seeds": survivors, "dh_secrets": dropped}


def protocol_bytes(cohort_size: int, survivors: int) -> tuple[int, int]:
    """(uploaded, downloaded) bytes of steps 1, 2 and 4 over the whole cohort, besides the
    masked inputs: each member uploads its public key and one encrypted share per other member
    and downloads the others' keys and the shares meant for it; each survivor downloads the
    survivor and dropout lists and uploads one share per other member."""
    others = cohort_size - 1
    up = cohort_size * (KEY_BYTES + others * SHARE_BYTES) + survivors * others * SHARE_BYTES // 2
    down = cohort_size * others * (KEY_BYTES + SHARE_BYTES) + survivors * cohort_size * ID_BYTES
    return up, down
