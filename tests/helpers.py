"""Small helpers shared by the model tests (paths, file-tree comparison, the reference key list).

Nothing here knows PartCrafter's math: the independent attention reference lives in
``test_attention.py`` on purpose, next to the test that uses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_FIXTURE = REPO / "fixtures" / "checkpoints" / "tiny-random"
FIXTURE_IMAGES = REPO / "fixtures" / "images"

REFERENCE_KEYS_NAME = "partcrafter_release_transformer_keys.tsv"
#: Environment variable that points at the reference key list when ``../shared`` is elsewhere.
REFERENCE_KEYS_ENV = "PARTATTN_REFERENCE_KEYS"


def reference_keys_path() -> Path:
    """``../shared/reference/<tsv>`` next to the repo, else the copy committed under
    ``tests/data/`` (so a lone clone can run the check), else ``$PARTATTN_REFERENCE_KEYS``.

    Missing is a test failure, not a skip: a silently skipped state-dict check would hide
    exactly the regression it exists for.
    """
    candidates = [
        REPO.parent / "shared" / "reference" / REFERENCE_KEYS_NAME,
        REPO / "tests" / "data" / REFERENCE_KEYS_NAME,
    ]
    if os.environ.get(REFERENCE_KEYS_ENV):
        candidates.append(Path(os.environ[REFERENCE_KEYS_ENV]).expanduser())
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail(
        f"reference key list not found (looked at: {', '.join(map(str, candidates))}); "
        f"check out ../shared next to the repo or set {REFERENCE_KEYS_ENV}=/path/to/{REFERENCE_KEYS_NAME}",
        pytrace=False,
    )


def read_keys_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    """``name<TAB>[d0, d1, ...]`` lines -> {name: shape}; duplicate names are an error."""
    keys: dict[str, tuple[int, ...]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, shape = line.split("\t")
        assert name not in keys, f"{path}:{number}: duplicate name {name}"
        keys[name] = tuple(json.loads(shape))
    return keys


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` as {relative posix path: bytes}."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def more_colours_than(image, n: int) -> bool:
    """Whether the PIL ``image`` (its current frame, as RGB) holds more than ``n`` distinct colours.

    PIL counts them in C and stops at ``n + 1``; ``np.unique(pixels, axis=0)`` sorts every pixel
    as a row and took about half a second per figure (16 s of one test)."""
    return image.convert("RGB").getcolors(n) is None
