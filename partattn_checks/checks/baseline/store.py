"""Baseline store: per-image folders of headline metrics plus the environment they came from.

Layout (``<key>`` is the image's path below the fixtures folder, without suffix)::

    <baselines>/<key>/metrics.json       {"schema_version", "image", "seeds", "metrics", "spread", "samples", "checks"}
    <baselines>/<key>/environment.json   the fingerprint: model, config hash, steps, seed, ...
    <baselines>/<key>/attention.safetensors  the attention summary (``attention.py``), for drift figures

``samples`` are ``AttentionRecord.summary()`` of one run per noise seed (``seeds``, see
:mod:`partattn_checks.checks.baseline.noise`), ``metrics`` their mean and ``spread`` their seed-to-seed standard
deviation (for the reader; the gate recomputes it from the samples): the ``baseline`` check judges
a run in units of that spread. ``checks`` are the values of the record checks (mean over the seeds;
shown next to the measured values in failure reports, never compared).

Schema 1 (before the seed spread) holds one run's ``metrics`` and no ``seeds``: it still loads and
is compared with ``Thresholds.baseline`` atol/rtol, with a note to regenerate it. A candidate
(written under the results folder when a comparison fails) holds the gate's own run only.

Metrics are stored rounded to ``DECIMALS`` places (far inside the default tolerance, atol 0.02),
and a value that moved by less than one rounding step keeps its stored digits: rewriting the
baselines of an unchanged model leaves the files, and ``git status``, as they were. Non-finite
values are never stored, and a stored one makes the baseline unusable.

Every file is written to a temporary file in the same folder and moved into place with
``os.replace`` (``environment.json`` first, then ``attention.safetensors``, ``metrics.json`` last),
so an interrupted run leaves either the old or the new file, never half of one. A file that
cannot be read is reported with its path and is never overwritten, except by
``--partattn-update=all`` together with ``--partattn-force-update``.

A baseline without ``attention.safetensors`` (written before it existed) is compared on its
metrics alone; an unreadable one is reported and ignored (the metrics still count).

No torch here: the store is JSON plus an fp16 safetensors file read with numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...base.atomic import atomic_write_text
from ...errors import PartattnError

if TYPE_CHECKING:  # numpy loads with the summary, not with the plugin
    from filelock import BaseFileLock

    from .attention import AttentionSummary

BASELINE_SCHEMA_VERSION = 2
#: Schema versions this version reads (1: one run, no seeds).
READABLE_SCHEMAS = (1, 2)
#: Version of environment.json's fingerprint (unchanged by the metrics schema).
FINGERPRINT_VERSION = 1
#: Decimal places of stored metrics; a change smaller than one step keeps the stored value.
DECIMALS = 5
METRICS_FILE = "metrics.json"
ENVIRONMENT_FILE = "environment.json"
#: The attention summary (``attention.AttentionSummary``) that drift figures are drawn from.
SUMMARY_FILE = "attention.safetensors"
#: Fingerprint keys whose mismatch is reported (in this order).
FINGERPRINT_KEYS = (
    "schema_version",
    "model",
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


class BaselineError(PartattnError, ValueError):
    """A baseline file that cannot be used; the message names the file and what to do.

    ``corrupt`` is True for a file that cannot be read at all (bad JSON, wrong structure) and
    False for a readable file of another schema version.
    """

    def __init__(self, message: str, path: Path, corrupt: bool = True):
        super().__init__(message)
        self.path = path
        self.corrupt = corrupt


@dataclass(frozen=True)
class BaselinePaths:
    folder: Path

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS_FILE

    @property
    def environment(self) -> Path:
        return self.folder / ENVIRONMENT_FILE

    @property
    def attention(self) -> Path:
        return self.folder / SUMMARY_FILE

    def files(self) -> tuple[Path, Path, Path]:
        """Every file of the baseline (what ``remove`` deletes)."""
        return (self.metrics, self.environment, self.attention)


@dataclass
class StoredBaseline:
    metrics: dict[str, float]
    checks: dict[str, float | None]
    environment: dict | None
    paths: BaselinePaths
    attention: AttentionSummary | None = None  # None: not stored (older baseline) or unreadable
    attention_error: str | None = None  # why a stored summary could not be read
    seeds: tuple[int, ...] = ()  # the noise seeds of ``samples``; empty: a single run (schema 1)
    samples: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per seed
    schema_version: int = BASELINE_SCHEMA_VERSION

    @property
    def has_spread(self) -> bool:
        """Written from several noise seeds: the comparison can be judged in units of noise."""
        return len(self.seeds) >= 2 and bool(self.samples)


# ----------------------------------------------------------------------------- fingerprint
def config_hash(config: dict) -> str:
    """Short stable hash of a model config (sorted-key JSON)."""
    text = json.dumps(config or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def environment_fingerprint(meta: dict, model_label: str) -> dict:
    """The environment a record was made in, from ``AttentionRecord.meta``."""
    versions = meta.get("versions", {}) or {}
    device = str(meta.get("device", ""))
    return {
        "schema_version": FINGERPRINT_VERSION,
        "model": model_label,
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


def fingerprint_diff(stored: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences (``"steps: 10 in the baseline, 2 now"``), empty when equal;
    ``ignore``: keys not compared (a baseline with a seed spread is independent of the gate's seed)."""
    out = []
    for key in FINGERPRINT_KEYS:
        if key in ignore:
            continue
        a, b = stored.get(key), current.get(key)
        if a != b:
            out.append(f"{key}: {a!r} in the baseline, {b!r} now")
    return out


# ----------------------------------------------------------------------------- files
def _dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=True) + "\n"


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: not valid JSON ({exc})", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot be read ({exc})", path) from None
    if not isinstance(doc, dict):
        raise BaselineError(f"{path}: expected a JSON object, got {type(doc).__name__}", path)
    return doc


class BaselineStore:
    """Per-image baseline folders under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def paths(self, key: str) -> BaselinePaths:
        return BaselinePaths(self.root / key)

    def load(self, key: str) -> StoredBaseline | None:
        """The stored baseline, ``None`` when ``metrics.json`` does not exist; ``BaselineError`` when unusable."""
        paths = self.paths(key)
        if not paths.metrics.is_file():
            return None
        doc = _read_json(paths.metrics)
        version = doc.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise BaselineError(
                f"{paths.metrics}: baseline schema version {version!r}, this partattn-checks reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}",
                paths.metrics,
                corrupt=not isinstance(version, int),
            )
        metrics = doc.get("metrics")
        if (
            not isinstance(metrics, dict)
            or not metrics
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
        ):
            raise BaselineError(f"{paths.metrics}: 'metrics' must be a non-empty table of numbers", paths.metrics)
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise BaselineError(
                f"{paths.metrics}: metric {bad[0]} is {metrics[bad[0]]}, not a finite number (no drift can be "
                f"measured against it)",
                paths.metrics,
                corrupt=False,
            )
        checks = doc.get("checks") or {}
        if not isinstance(checks, dict):
            raise BaselineError(f"{paths.metrics}: 'checks' must be a table", paths.metrics)
        seeds, samples = _seed_samples(doc, paths.metrics) if version >= 2 else ((), {})
        environment = None
        if paths.environment.is_file():
            environment = _read_json(paths.environment)
        attention, attention_error = None, None
        if paths.attention.is_file():
            from .attention import AttentionSummary, SummaryError

            try:
                attention = AttentionSummary.read(paths.attention)
            except SummaryError as err:
                attention_error = str(err)
        return StoredBaseline(
            {k: float(v) for k, v in metrics.items()},
            dict(checks),
            environment,
            paths,
            attention,
            attention_error,
            seeds,
            samples,
            version,
        )

    def pooled_spreads(self) -> dict[str, float]:
        """Per metric, the seed-to-seed spread pooled over every stored baseline with seeds (the
        root-mean-square of their spreads, in the units the metric is judged in): what an image's
        own spread is shrunk toward. Baselines
        that cannot be read are left out (their own items report them)."""
        from .noise import judged_spread, pooled_sd

        spreads: dict[str, list[float]] = {}
        for key in self.keys():
            try:
                stored = self.load(key)
            except BaselineError:
                continue
            if stored is None or not stored.has_spread:
                continue
            for name, values in stored.samples.items():
                spreads.setdefault(name, []).append(judged_spread(name, values))
        pooled = {name: pooled_sd(sds) for name, sds in spreads.items()}
        return {name: sd for name, sd in pooled.items() if sd is not None}  # None: no finite spread

    def write(
        self,
        key: str,
        *,
        image: str,
        metrics: dict,
        checks: dict,
        environment: dict,
        attention: AttentionSummary | None = None,
        seeds: tuple[int, ...] | list[int] = (),
        samples: dict[str, list[float]] | None = None,
    ) -> bool:
        """Write the files atomically (environment first, then the attention summary, metrics
        last); files whose content would not change are left alone (a summary within
        ``KEEP_ATOL`` of the stored one counts as unchanged). Returns whether anything was written.

        ``samples``: one value per seed of ``seeds`` for each metric; ``metrics`` is then their mean."""
        from .noise import mean_sd

        paths = self.paths(key)
        doc = {
            "schema_version": BASELINE_SCHEMA_VERSION,
            "image": image,
            "seeds": list(seeds),
            "metrics": _kept(_rounded(metrics), _stored_values(paths.metrics, "metrics")),
            "checks": _kept(_rounded(checks), _stored_values(paths.metrics, "checks")),
        }
        if samples:
            stored = _stored_values(paths.metrics, "samples")
            kept = {name: _kept_list(values, stored.get(name)) for name, values in sorted(samples.items())}
            doc["samples"] = kept
            doc["spread"] = {name: round(mean_sd(values)[1], DECIMALS) for name, values in kept.items()}
        changed = _write_text(paths.environment, _dumps(environment))
        if attention is not None:
            changed = attention.write(paths.attention) or changed
        return _write_text(paths.metrics, _dumps(doc)) or changed

    def keys(self) -> list[str]:
        """Keys of every stored baseline (folders holding a metrics.json, or only the attention
        summary an interrupted first write left), sorted."""
        if not self.root.is_dir():
            return []
        found = {p.parent for name in (METRICS_FILE, SUMMARY_FILE) for p in self.root.rglob(name)}
        return sorted(folder.relative_to(self.root).as_posix() for folder in found)

    def remove(self, key: str) -> None:
        """Remove the files of a baseline (only ours), then its folder and parents if left empty."""
        paths = self.paths(key)
        for path in paths.files():
            path.unlink(missing_ok=True)
        folder = paths.folder
        while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _write_text(path: Path, text: str) -> bool:
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return False
    atomic_write_text(path, text)
    return True


def _rounded(values: dict) -> dict:
    return {k: (None if v is None else round(float(v), DECIMALS)) for k, v in sorted(values.items())}


def _stored_values(path: Path, table: str) -> dict:
    """The ``table`` of an existing metrics.json, ``{}`` when there is none or it cannot be read."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        values = doc.get(table) or {}
        return values if isinstance(values, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return {}


def _kept(new: dict, old: dict) -> dict:
    """``new``, keeping each stored value that lies within one rounding step of the new one."""
    step = 10.0**-DECIMALS
    out = {}
    for k, v in new.items():
        o = old.get(k)
        same = (v is None and o is None) or (
            v is not None and isinstance(o, (int, float)) and not isinstance(o, bool) and abs(o - v) <= step
        )
        out[k] = round(float(o), DECIMALS) if same and o is not None else v
    return out


def _kept_list(new: list[float], old) -> list[float]:
    """:func:`_kept` for one value per seed (kept only when the stored list has the same length)."""
    rounded = _rounded(dict(enumerate(new)))
    same_length = isinstance(old, list) and len(old) == len(new)
    kept = _kept(rounded, dict(enumerate(old)) if same_length else {})
    return [kept[i] for i in range(len(new))]


def _seed_samples(doc: dict, path: Path) -> tuple[tuple[int, ...], dict[str, list[float]]]:
    """``seeds`` and ``samples`` of a schema-2 document, checked (one finite number per seed)."""
    seeds = doc.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise BaselineError(f"{path}: 'seeds' must be a list of whole numbers", path)
    samples = doc.get("samples") or {}
    if not isinstance(samples, dict):
        raise BaselineError(f"{path}: 'samples' must be a table of lists", path)
    for name, values in samples.items():
        if (
            not isinstance(values, list)
            or len(values) != len(seeds)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        ):
            raise BaselineError(
                f"{path}: samples of {name} must be {len(seeds)} finite numbers, one per seed; regenerate the "
                f"baseline with --partattn-update=all",
                path,
                corrupt=False,
            )
    return tuple(seeds), {name: [float(v) for v in values] for name, values in samples.items()}


def nonfinite_metrics(metrics: dict) -> list[str]:
    return sorted(k for k, v in metrics.items() if v is None or not math.isfinite(float(v)))


class UpdateLock:
    """Held by the session that writes baselines (``--partattn-update``): a second session that
    would write into the same folder at the same time stops with a clear error instead of
    interleaving with the first. The operating system drops the lock if the holder dies."""

    FILE = ".partattn-update.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.FILE
        self._lock: BaseFileLock | None = None

    def acquire(self) -> None:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise BaselineError(
                f"{self.path.parent}: another pytest --partattn-update session is writing these baselines "
                f"right now (it holds {self.path}); wait for it to finish, then run again",
                self.path,
                corrupt=False,
            ) from None
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            self.path.unlink(missing_ok=True)


def unused_keys(store: BaselineStore, image_keys: set[str]) -> list[str]:
    """Stored baselines whose fixture image no longer exists."""
    return [key for key in store.keys() if key not in image_keys]
