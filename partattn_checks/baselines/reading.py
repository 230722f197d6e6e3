"""Reading a stored ``metrics.json`` and its tensor files, each part checked: a part that cannot be used
is a :class:`BaselineError` naming the file and the fix (or, for a tensor file, the reason it is left out)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import REGENERATE, BaselineError

if TYPE_CHECKING:  # numpy loads with the tensor files, not with the plugin
    from .paired import PairedBaseline
    from .summary import AttentionSummary


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: not valid JSON ({exc})", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot be read ({exc})", path) from None
    if not isinstance(doc, dict):
        raise BaselineError(f"{path}: expected a JSON object, got {type(doc).__name__}", path)
    return doc


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_table(doc: dict[str, Any], path: Path) -> dict[str, float]:
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict) or not metrics or not all(is_number(v) for v in metrics.values()):
        raise BaselineError(f"{path}: 'metrics' must be a non-empty table of numbers", path)
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise BaselineError(
            f"{path}: metric {bad[0]} is {metrics[bad[0]]}, not a finite number (no drift can be measured against "
            f"it); {REGENERATE}",
            path,
            corrupt=False,
        )
    return {k: float(v) for k, v in metrics.items()}


def seed_samples(
    doc: dict[str, Any], path: Path, metrics: dict[str, Any]
) -> tuple[tuple[int, ...], dict[str, list[float]]]:
    """``seeds`` and ``samples`` of a schema-2+ document, checked: two seeds or more, one finite number
    per seed for every metric."""
    if "seeds" not in doc or "samples" not in doc:
        missing = "seeds" if "seeds" not in doc else "samples"
        raise BaselineError(
            f"{path}: the {missing!r} table is missing (a schema {doc['schema_version']} baseline holds the runs of "
            f"its noise seeds); {REGENERATE}",
            path,
            corrupt=False,
        )
    seeds, samples = doc["seeds"], doc["samples"]
    if not isinstance(seeds, list) or not all(is_number(s) and float(s).is_integer() for s in seeds):
        raise BaselineError(f"{path}: 'seeds' must be a list of whole numbers", path)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise BaselineError(
            f"{path}: 'seeds' must hold two or more different seeds (it holds {seeds}); {REGENERATE}",
            path,
            corrupt=False,
        )
    if not isinstance(samples, dict):
        raise BaselineError(f"{path}: 'samples' must be a table of lists", path)
    unsampled = sorted(set(metrics) - set(samples))
    if unsampled:
        raise BaselineError(
            f"{path}: metric {unsampled[0]} has no samples (one value per seed); {REGENERATE}", path, corrupt=False
        )
    for name, values in samples.items():
        if not isinstance(values, list) or len(values) != len(seeds) or not all(is_finite(v) for v in values):
            raise BaselineError(
                f"{path}: samples of {name} must be {len(seeds)} finite numbers, one per seed; {REGENERATE}",
                path,
                corrupt=False,
            )
    return tuple(int(s) for s in seeds), {name: [float(v) for v in values] for name, values in samples.items()}


def paired_table(
    doc: dict[str, Any], path: Path, seeds: tuple[int, ...], metrics: dict[str, Any]
) -> PairedBaseline | None:
    """The ``paired`` table of a schema-3 document (None when the baseline was written without one)."""
    from .floor import Condition
    from .paired import PairedBaseline

    table = doc.get("paired")
    if table is None:
        return None
    bad = BaselineError(f"{path}: 'paired' must hold 'seeds' and 'conditions' ({REGENERATE})", path, corrupt=False)
    if (
        not isinstance(table, dict)
        or not isinstance(table.get("seeds"), list)
        or not isinstance(table.get("conditions"), list)
    ):
        raise bad
    paired = table["seeds"]
    if not paired or paired != list(seeds[: len(paired)]):
        raise BaselineError(
            f"{path}: the paired seeds {paired} must be the first of the baseline's seeds {list(seeds)}; {REGENERATE}",
            path,
            corrupt=False,
        )
    conditions, values = [], {}
    for entry in table["conditions"]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("shifts"), dict)
        ):
            raise bad
        for name, vals in entry["shifts"].items():
            if not isinstance(vals, list) or len(vals) != len(paired) or not all(is_finite(v) for v in vals):
                raise BaselineError(
                    f"{path}: the floor's {entry['name']} shifts of {name} must be {len(paired)} finite numbers; "
                    f"{REGENERATE}",
                    path,
                    corrupt=False,
                )
        conditions.append(Condition.from_dict(entry))
        values[entry["name"]] = {n: [float(v) for v in vals] for n, vals in entry["shifts"].items()}
    return PairedBaseline(tuple(int(s) for s in paired), tuple(conditions), values)


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def read_summary(path: Path, sha: str | None, version: int) -> tuple[AttentionSummary | None, str | None]:
    if not path.is_file():
        return None, None
    from .summary import AttentionSummary, SummaryError

    if version >= 3 and sha is not None and file_sha(path) != sha:
        return None, f"{path} does not belong to its metrics.json (left by an interrupted update?)"
    try:
        return AttentionSummary.read(path), None
    except SummaryError as err:
        return None, str(err)


def with_paired_attention(paired: PairedBaseline, path: Path, sha: str | None) -> PairedBaseline:
    from dataclasses import replace

    from .paired import PairedError
    from .paired_attention import PairedAttention

    if not path.is_file():
        return replace(paired, attention_error=f"{path} is missing")
    if sha is None or file_sha(path) != sha:
        return replace(paired, attention_error=f"{path} does not belong to its metrics.json (an interrupted update?)")
    try:
        attention = PairedAttention.read(path)
    except PairedError as err:
        return replace(paired, attention_error=str(err))
    if attention.seeds != paired.seeds or attention.conditions != paired.conditions:
        return replace(paired, attention_error=f"{path}: its seeds or conditions differ from metrics.json's")
    return replace(paired, attention=attention)


def nonfinite_metrics(metrics: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in metrics.items() if v is None or not math.isfinite(float(v)))
