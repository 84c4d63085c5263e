"""Privacy of what leaves a participant: the mechanisms and the attacks that measure them.

    dp.py                  differential privacy on the shared update (DP-FedAvg): clipping,
                           Gaussian noise (central at the driver, local per participant, or
                           distributed under secure aggregation), the fixed-denominator mean
    accountant.py          the privacy spent (epsilon at delta), computed by Google's
                           dp-accounting library, and the noise for a target epsilon
    secure_aggregation.py  simulated secure aggregation (Bonawitz et al., 2017): pairwise and
                           self masks on fixed-point updates, Shamir shares for dropout recovery
    mechanisms.py          where each mechanism is applied: `ParticipantPrivacy` as an update
                           leaves a participant, `ServerPrivacy` where the driver combines them
    attacks.py             membership inference (an evaluation, not a mechanism): loss-threshold
                           and calibrated attacks on each participant's model and on what the
                           server holds
    report.py              a sweep's privacy.md and privacy.png (epsilon, accuracy, attack AUCs)

The scenario's `privacy:` keys (defaults after `=`; see check_privacy_spec):

    dp = null                     a mapping turns DP on for the methods that share (fedgrow,
                                  fedavg_scratch):
      clip = 1.0                  C: each participant's update (new shared state - the one it
                                  received) is scaled to L2 norm <= C, all tensors together
      noise_multiplier = null     sigma: Gaussian noise of std sigma * C on the sum, or
      target_epsilon = null       epsilon to reach after `rounds` rounds; sigma is computed
                                  (exactly one of the two)
      delta = 1e-5
      noise = central             central (the driver adds it to the sum) | local (each
                                  participant adds std sigma * C to its own update) |
                                  distributed (each adds std sigma * C / sqrt(expected count)
                                  before masking; needs secure_aggregation)
    secure_aggregation = null     a mapping turns it on for the methods that share:
      fractional_bits = 16        fixed point: value * 2^bits, rounded, in the ring Z_(2^32)
      threshold = 0.5             survivors needed to unmask: ceil(threshold * cohort), >= 2
    attack = null                 a mapping turns the membership-inference evaluation on:
      samples = 64                members and as many non-members per participant (at most)
      reference_steps = 100       training steps of the calibration (reference) models
      proxy_steps = 100           training steps of the server's proxy through Global-LiGO
"""

from __future__ import annotations

import math

DP_NOISE = ("central", "local", "distributed")
DP_DEFAULTS = {"clip": 1.0, "noise_multiplier": None, "target_epsilon": None, "delta": 1e-5, "noise": "central"}
SECAGG_DEFAULTS = {"fractional_bits": 16, "threshold": 0.5}
ATTACK_DEFAULTS = {"samples": 64, "reference_steps": 100, "proxy_steps": 100}


def _number(key, value, low=None, high=None, above=None, integer=False):
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if ok and not integer:
        ok = not math.isnan(value)
    if ok and ((low is not None and value < low) or (high is not None and value > high)
               or (above is not None and value <= above)):
        ok = False
    if not ok:
        bounds = [f"> {above}"] if above is not None else []
        bounds += [f">= {low}"] if low is not None else []
        bounds += [f"<= {high}"] if high is not None else []
        raise ValueError(f"scenario key 'privacy.{key}': {value!r} is not allowed; expected {kind}"
                         + (" " + " and ".join(bounds) if bounds else ""))
    return value if integer else float(value)


def _section(raw, name: str, defaults: dict) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"scenario key 'privacy.{name}': {raw!r} is not allowed; expected null "
                         f"(off) or a mapping with keys {sorted(defaults)}")
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ValueError(f"scenario key 'privacy.{name}.{unknown[0]}' is unknown; allowed here: "
                         f"{sorted(defaults)}")
    return {**defaults, **raw}


def check_privacy_spec(raw: dict | None) -> dict:
    """Validate the `privacy:` mapping alone and fill defaults (one-line errors naming the key).
    Rules that involve other sections are in check_privacy_scenario."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"scenario key 'privacy': {raw!r} is not allowed; expected a mapping")
    unknown = sorted(set(raw) - {"dp", "secure_aggregation", "attack"})
    if unknown:
        raise ValueError(f"scenario key 'privacy.{unknown[0]}' is unknown; allowed here: "
                         f"['attack', 'dp', 'secure_aggregation']")
    dp = _section(raw.get("dp"), "dp", DP_DEFAULTS)
    if dp is not None:
        dp["clip"] = _number("dp.clip", dp["clip"], above=0)
        dp["delta"] = _number("dp.delta", dp["delta"], above=0, high=0.1)
        given = [k for k in ("noise_multiplier", "target_epsilon") if dp[k] is not None]
        if len(given) != 1:
            raise ValueError(f"scenario key 'privacy.dp': {'both' if given else 'neither'} of noise_multiplier "
                             f"and target_epsilon given; set exactly one (the other is computed)")
        dp[given[0]] = _number(f"dp.{given[0]}", dp[given[0]], above=0)
        if dp["noise"] not in DP_NOISE:
            raise ValueError(f"scenario key 'privacy.dp.noise': {dp['noise']!r} is not allowed; "
                             f"allowed: {list(DP_NOISE)}")
    secagg = _section(raw.get("secure_aggregation"), "secure_aggregation", SECAGG_DEFAULTS)
    if secagg is not None:
        secagg["fractional_bits"] = _number("secure_aggregation.fractional_bits",
                                            secagg["fractional_bits"], 0, 24, integer=True)
        secagg["threshold"] = _number("secure_aggregation.threshold", secagg["threshold"], above=0, high=1)
    attack = _section(raw.get("attack"), "attack", ATTACK_DEFAULTS)
    if attack is not None:
        attack["samples"] = _number("attack.samples", attack["samples"], 4, integer=True)
        attack["reference_steps"] = _number("attack.reference_steps", attack["reference_steps"], 0, integer=True)
        attack["proxy_steps"] = _number("attack.proxy_steps", attack["proxy_steps"], 0, integer=True)
    return {"dp": dp, "secure_aggregation": secagg, "attack": attack}


def check_privacy_scenario(s: dict) -> str | None:
    """Why a resolved scenario's privacy settings cannot run, in one line, or None."""
    privacy = s["privacy"]
    dp, secagg = privacy["dp"], privacy["secure_aggregation"]
    if dp is None and secagg is None:
        return None
    if dp is not None and dp["noise"] == "distributed" and secagg is None:
        return ("scenario key 'privacy.dp.noise': 'distributed' is not allowed without "
                "privacy.secure_aggregation (each participant's share of the noise is only private "
                "when its update is masked); use central or local, or set secure_aggregation")
    if secagg is not None and s["server"]["aggregator"] != "fedavg":
        return (f"scenario key 'server.aggregator': {s['server']['aggregator']!r} is not allowed with "
                f"privacy.secure_aggregation; a median or trimmed mean needs each update, and the "
                f"server sees only their sum; use fedavg")
    if s["protocol"] != "paper":
        return (f"scenario key 'protocol': {s['protocol']!r} is not allowed with privacy.dp or "
                f"privacy.secure_aggregation; the reference-code protocol shares an intermediate "
                f"model no mechanism here covers; use paper")
    if secagg is not None and s["server"]["max_update_norm"] is not None:
        return ("scenario key 'server.max_update_norm': not allowed with privacy.secure_aggregation; "
                "the server cannot measure an individual update (privacy.dp.clip bounds it instead)")
    if secagg is not None and s["faults"]["bad_update"]:
        return ("scenario key 'faults.bad_update': not allowed with privacy.secure_aggregation; the "
                "server cannot see (or check) an individual update")
    return None
