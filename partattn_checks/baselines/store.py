"""Baseline store: per-image folders of the runs of several noise seeds, and the environment they came from.

Layout (``<key>`` is the image's path below the fixtures folder, without suffix)::

    <baselines>/<key>/metrics.json          {"schema_version", "image", "seeds", "metrics", "spread",
                                             "samples", "checks", "paired", "files"}
    <baselines>/<key>/environment.json      the fingerprint: model, config hash, steps, dtype, ...
    <baselines>/<key>/attention.safetensors the attention summary (``summary.py``), for drift figures
    <baselines>/<key>/paired.safetensors    the paired seeds' per-step attention and numeric floor (``paired.py``)

``samples`` hold the headline metrics of one run per noise seed (``seeds``), ``metrics`` their mean
and ``spread`` their seed-to-seed standard deviation (for the reader; the judge recomputes it).
``checks`` are the record checks' values (mean over the seeds; shown next to the measured values,
never compared). ``paired`` (schema 3) names the paired seeds (the first of ``seeds``) and the
numeric floor's conditions with their runs' metrics; ``files`` the SHA-256 of the two tensor files,
so a file left by an interrupted update is recognised as not belonging to this ``metrics.json``.

Schema 1 (one run, no seeds) still loads and is compared with ``Thresholds.baseline`` atol/rtol;
schema 2 (seeds, no paired part) is judged by the seed spread. A *candidate* (the gate's own runs,
written under the results folder when a comparison fails, for review) is not a baseline: loading
one says so.

Metrics are stored rounded to ``DECIMALS`` places, and a value that moved by less than one rounding
step keeps its stored digits: rewriting the baselines of an unchanged model leaves the files, and
``git status``, as they were. Non-finite values are never stored, and a stored one makes the
baseline unusable.

Writing checks every target first (a folder where a file belongs, a file where the folder belongs
stop it before anything is written), then writes each file to a temporary file in the same folder
and moves it into place (``environment.json``, the tensor files, ``metrics.json`` last). A full disk
or a read-only folder is one :class:`BaselineWriteError` line; the old files are kept.

No torch here: the store is JSON plus safetensors files read with numpy.
"""

from __future__ import annotations

import errno
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.atomic import atomic_write_text
from .errors import BaselineError, BaselineWriteError
from .reading import (
    file_sha,
    is_number,
    metrics_table,
    paired_table,
    read_json,
    read_summary,
    seed_samples,
    with_paired_attention,
)

if TYPE_CHECKING:  # numpy loads with the tensor files, not with the plugin
    from filelock import BaseFileLock

    from .paired import PairedBaseline
    from .sample import SeedSample
    from .summary import AttentionSummary

BASELINE_SCHEMA_VERSION = 3
#: Schema versions this version reads (1: one run; 2: seeds, no paired part).
READABLE_SCHEMAS = (1, 2, 3)
#: Decimal places of stored metrics; a change smaller than one step keeps the stored value.
DECIMALS = 5
METRICS_FILE = "metrics.json"
ENVIRONMENT_FILE = "environment.json"
SUMMARY_FILE = "attention.safetensors"
PAIRED_FILE = "paired.safetensors"


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

    @property
    def paired(self) -> Path:
        return self.folder / PAIRED_FILE

    def files(self) -> tuple[Path, Path, Path, Path]:
        """Every file of the baseline (what ``remove`` deletes), in writing order."""
        return (self.environment, self.attention, self.paired, self.metrics)


@dataclass(frozen=True, eq=False)
class StoredBaseline:
    metrics: dict[str, float]
    checks: dict[str, float | None]
    environment: dict[str, Any] | None
    paths: BaselinePaths
    attention: AttentionSummary | None = None  # None: not stored (older baseline) or unusable
    attention_error: str | None = None  # why a stored summary could not be used
    seeds: tuple[int, ...] = ()  # the noise seeds of ``samples``; empty: a single run (schema 1)
    samples: dict[str, list[float]] | None = None  # metric -> one value per seed
    schema_version: int = BASELINE_SCHEMA_VERSION
    paired: PairedBaseline | None = None  # schema 3

    @property
    def has_spread(self) -> bool:
        """Written from several noise seeds: the comparison can be judged in units of noise."""
        return len(self.seeds) >= 2 and bool(self.samples)

    @property
    def dtype(self) -> str | None:
        return (self.environment or {}).get("dtype")


@dataclass(frozen=True, eq=False)
class BaselineContent:
    """What a baseline (or a candidate) holds: the runs of its seeds, the environment and the paired part."""

    image: str
    sample: SeedSample
    environment: dict[str, Any]
    paired: PairedBaseline | None = None
    candidate: bool = False


# ----------------------------------------------------------------------------- files
def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=True) + "\n"


class BaselineStore:
    """Per-image baseline folders under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def paths(self, key: str) -> BaselinePaths:
        return BaselinePaths(self.root / key)

    def load(self, key: str, *, tensors: bool = True) -> StoredBaseline | None:
        """The stored baseline, ``None`` when ``metrics.json`` does not exist; ``BaselineError`` when
        unusable. ``tensors=False`` skips the tensor files (the spreads alone)."""
        paths = self.paths(key)
        if not paths.metrics.exists():
            return None
        if not paths.metrics.is_file():
            raise BaselineError(f"{paths.metrics}: not a file (move it away)", paths.metrics)
        doc = read_json(paths.metrics)
        version = doc.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise BaselineError(
                f"{paths.metrics}: baseline schema version {version!r}, this partattn-checks reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}",
                paths.metrics,
                corrupt=not isinstance(version, int),
            )
        if doc.get("candidate"):
            raise BaselineError(
                f"{paths.metrics}: a candidate (one gate run's measurements, for review), not a baseline; write the "
                f"baseline from its noise seeds with --partattn-update=failed",
                paths.metrics,
                corrupt=False,
            )
        metrics = metrics_table(doc, paths.metrics)
        checks = doc.get("checks") or {}
        if not isinstance(checks, dict):
            raise BaselineError(f"{paths.metrics}: 'checks' must be a table", paths.metrics)
        seeds, samples = seed_samples(doc, paths.metrics, metrics) if version >= 2 else ((), None)
        environment = read_json(paths.environment) if paths.environment.is_file() else None
        paired = paired_table(doc, paths.metrics, seeds, metrics) if version >= 3 else None
        attention, attention_error = None, None
        if tensors:
            found = doc.get("files")
            hashes: dict[str, Any] = found if isinstance(found, dict) else {}
            attention, attention_error = read_summary(paths.attention, hashes.get(SUMMARY_FILE), version)
            if paired is not None:
                paired = with_paired_attention(paired, paths.paired, hashes.get(PAIRED_FILE))
        return StoredBaseline(
            metrics,
            dict(checks),
            environment,
            paths,
            attention,
            attention_error,
            seeds,
            samples,
            version,
            paired,
        )

    def pooled_spreads(self) -> dict[str, float]:
        """Per metric, the seed-to-seed spread pooled over every stored baseline with seeds (the
        root-mean-square of their spreads, in the units the metric is judged in), and under
        ``LAYERS_POOLED`` the log-spread of the layers' seed drifts pooled over every layer of every
        baseline: what an image's own spread is raised toward. Baselines that cannot be read are left
        out (their own items report them)."""
        from .noise import (
            JUDGED_METRICS,
            LAYERS_POOLED,
            LOG_SCALE,
            TAIL_LAYERS,
            TAIL_METRICS,
            judged_spread,
            leave_one_out,
            log_spread,
            pooled_sd,
            tail_factor,
        )

        spreads: dict[str, list[float]] = {}
        loo: dict[str, list[float]] = {TAIL_METRICS: [], TAIL_LAYERS: []}
        seeds = 0
        for key in self.keys():
            try:
                stored = self.load(key)
            except BaselineError:
                continue
            if stored is None or not stored.has_spread or stored.samples is None:
                continue
            seeds = max(seeds, len(stored.seeds))
            for name, values in stored.samples.items():
                spreads.setdefault(name, []).append(judged_spread(name, values))
                if name in JUDGED_METRICS:
                    loo[TAIL_METRICS] += leave_one_out(
                        [math.log(max(v, 1e-5)) for v in values] if name in LOG_SCALE else values
                    )
            summary = stored.attention
            if summary is not None and summary.seed_drift is not None and summary.has_spread:
                drifts = summary.seed_drift.astype("float64").mean(axis=2)  # (seeds, layers)
                for column in drifts.T:
                    logs = [math.log(max(float(x), 1e-12)) for x in column]
                    spreads.setdefault(LAYERS_POOLED, []).append(log_spread([float(x) for x in column]))
                    loo[TAIL_LAYERS] += leave_one_out(logs)
        pooled = {name: pooled_sd(sds) for name, sds in spreads.items()}
        out = {name: sd for name, sd in pooled.items() if sd is not None}  # None: no finite spread
        out[TAIL_METRICS] = tail_factor(loo[TAIL_METRICS], seeds, two_sided=True)
        out[TAIL_LAYERS] = tail_factor(loo[TAIL_LAYERS], seeds, two_sided=False)
        return out

    def write(self, key: str, content: BaselineContent) -> bool:
        """Write the baseline of ``key`` from ``content``; files whose content would not change are left
        alone (a summary within ``KEEP_ATOL`` of the stored one counts as unchanged). Returns whether
        anything was written; :class:`BaselineWriteError` (nothing new written) when a target is not
        writable."""
        from .noise import mean_sd

        paths = self.paths(key)
        _check_targets(paths)
        sample = content.sample
        old = _stored_doc(paths.metrics)
        samples = sample.samples
        kept_samples = {n: _kept_list(v, (old.get("samples") or {}).get(n)) for n, v in sorted(samples.items())}
        doc: dict[str, Any] = {
            "schema_version": BASELINE_SCHEMA_VERSION,
            "image": content.image,
            "seeds": list(sample.seeds),
            "metrics": _kept(_rounded(sample.metrics), old.get("metrics") or {}),
            "checks": _kept(_rounded(sample.checks), old.get("checks") or {}),
            "samples": kept_samples,
            "spread": {n: round(mean_sd(v)[1], DECIMALS) for n, v in kept_samples.items()}
            if len(sample.runs) > 1
            else {},
        }
        if content.candidate:
            doc["candidate"] = True
        try:
            changed = _write_text(paths.environment, _dumps(content.environment))
            files = {}
            attention = sample.attention()
            if attention is not None:
                changed = attention.write(paths.attention) or changed
                files[SUMMARY_FILE] = file_sha(paths.attention)
            else:  # an older file would not belong to this baseline
                changed = _remove(paths.attention) or changed
            if content.paired is not None:
                doc["paired"] = _kept_paired(content.paired.to_json(), old.get("paired"))
            if content.paired is not None and content.paired.attention is not None:
                changed = content.paired.attention.write(paths.paired) or changed
                files[PAIRED_FILE] = file_sha(paths.paired)
            else:
                changed = _remove(paths.paired) or changed
            if files:
                doc["files"] = files
            return _write_text(paths.metrics, _dumps(doc)) or changed
        except OSError as exc:
            raise write_error(exc, paths.folder) from None

    def keys(self) -> list[str]:
        """Keys of every stored baseline (folders holding a metrics.json, or only a tensor file an
        interrupted first write left), sorted."""
        if not self.root.is_dir():
            return []
        found = {p.parent for name in (METRICS_FILE, SUMMARY_FILE, PAIRED_FILE) for p in self.root.rglob(name)}
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


def write_error(exc: OSError, where: Path) -> BaselineWriteError:
    """One line for a failed write: which file, why, and that nothing else was lost."""
    target = Path(exc.filename) if exc.filename else where
    why = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return BaselineWriteError(
        f"cannot write {target}: {why}; the baseline files already there were kept", target, corrupt=False
    )


def _check_targets(paths: BaselinePaths) -> None:
    """Before the first write: every file of the baseline is absent or a regular file, and its folder
    is a folder (or can be made)."""
    for parent in (paths.folder, *paths.folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise BaselineWriteError(
                    f"cannot write the baseline into {paths.folder}: {parent} is a file, not a folder (move it away)",
                    parent,
                    corrupt=False,
                )
            break
    for path in paths.files():
        if path.exists() and not path.is_file():
            raise BaselineWriteError(
                f"cannot write {path}: a folder (or another non-file) is in the way; move it away and run again "
                f"(nothing was written)",
                path,
                corrupt=False,
            )


def _write_text(path: Path, text: str) -> bool:
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return False
    atomic_write_text(path, text)
    return True


def _remove(path: Path) -> bool:
    if not path.is_file():
        return False
    path.unlink()
    return True


def _rounded(values: dict[Any, Any]) -> dict[Any, Any]:
    return {k: (None if v is None else round(float(v), DECIMALS)) for k, v in sorted(values.items())}


def _stored_doc(path: Path) -> dict[str, Any]:
    """An existing metrics.json, ``{}`` when there is none or it cannot be read."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _kept(new: dict[Any, Any], old: dict[Any, Any]) -> dict[Any, Any]:
    """``new``, keeping each stored value that lies within one rounding step of the new one."""
    step = 10.0**-DECIMALS
    out = {}
    for k, v in new.items():
        o = old.get(k) if isinstance(old, dict) else None
        same = (v is None and o is None) or (v is not None and is_number(o) and abs(o - v) <= step)
        out[k] = round(float(o), DECIMALS) if same and o is not None else v
    return out


def _kept_list(new: list[float], old: Any) -> list[float]:
    """:func:`_kept` for one value per seed (kept only when the stored list has the same length)."""
    rounded = _rounded(dict(enumerate(new)))
    same_length = isinstance(old, list) and len(old) == len(new)
    kept = _kept(rounded, dict(enumerate(old)) if same_length else {})
    return [kept[i] for i in range(len(new))]


def _kept_paired(new: dict[str, Any], old: Any) -> dict[str, Any]:
    """The paired table, each condition's values kept within one rounding step of the stored ones."""
    stored = {c.get("name"): c for c in (old or {}).get("conditions", []) if isinstance(c, dict)}
    conditions = []
    for cond in new["conditions"]:
        before = (stored.get(cond["name"]) or {}).get("shifts") or {}
        shifts = {n: _kept_list(v, before.get(n)) for n, v in sorted(cond["shifts"].items())}
        conditions.append({**cond, "shifts": shifts})
    return {**new, "conditions": conditions}


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
