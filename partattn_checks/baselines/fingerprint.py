"""The environment a baseline was written in (``environment.json``) and how two environments differ."""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Version of environment.json's fingerprint (unchanged by the metrics schema).
FINGERPRINT_VERSION = 1
#: Fingerprint keys whose mismatch is reported (in this order).
FINGERPRINT_KEYS = (
    "schema_version",
    "model",
    "weights",
    "repo_id",
    "commit",
    "config_hash",
    "num_parts",
    "steps",
    "seed",
    "guidance_scale",
    "num_tokens",
    "dtype",
    "device_kind",
    "torch",
    "diffusers",
)
#: Keys compared only where both sides have them (a baseline written before them; a local folder has no repo).
OPTIONAL_KEYS = ("weights", "repo_id", "commit")
#: The fingerprint keys that make another experiment: a run that differs in one is not paired.
RUN_SETTINGS = ("num_parts", "steps", "guidance_scale", "num_tokens")


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a model config (sorted-key JSON)."""
    text = json.dumps(config or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def environment_fingerprint(meta: dict[str, Any], model_label: str) -> dict[str, Any]:
    """The environment a record was made in, from ``AttentionRecord.meta``; ``repo_id`` and ``commit`` only for
    a model from the Hugging Face hub cache (a local folder's fingerprint stays as it was)."""
    versions = meta.get("versions", {}) or {}
    device = str(meta.get("device", ""))
    return {
        "schema_version": FINGERPRINT_VERSION,
        "model": model_label,
        "weights": meta.get("weights"),
        **{key: meta[key] for key in ("repo_id", "commit") if meta.get(key)},
        "config_hash": config_hash(meta.get("config", {})),
        "num_parts": meta.get("num_parts"),
        "steps": meta.get("steps"),
        "seed": meta.get("seed"),
        "guidance_scale": meta.get("guidance_scale"),
        "num_tokens": meta.get("num_tokens"),
        "dtype": meta.get("dtype"),
        "device_kind": device.split(":")[0] if device else None,
        "torch": versions.get("torch"),
        "diffusers": versions.get("diffusers"),
    }


def fingerprint_diff(
    stored: dict[str, Any],
    current: dict[str, Any],
    ignore: tuple[str, ...] = (),
    keys: tuple[str, ...] = FINGERPRINT_KEYS,
) -> list[str]:
    """Human-readable differences (``"steps: 10 in the baseline, 2 now"``), empty when equal;
    ``ignore``: keys not compared (the seed: a baseline holds several). The weights are compared by
    content where both sides have a digest: the same weights under another path (or repo, or commit) are the
    same model. A key of :data:`OPTIONAL_KEYS` missing on one side is not a difference."""
    same_weights = stored.get("weights") is not None and stored.get("weights") == current.get("weights")
    skip = set(ignore) | ({"model", "repo_id", "commit"} if same_weights else set())
    skip |= {key for key in OPTIONAL_KEYS if stored.get(key) is None or current.get(key) is None}
    return [
        f"{key}: {stored.get(key)!r} in the baseline, {current.get(key)!r} now"
        for key in keys
        if key not in skip and stored.get(key) != current.get(key)
    ]
