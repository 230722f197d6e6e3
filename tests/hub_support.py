"""A real Hugging Face hub cache folder, built from a local checkpoint: no network, ever.

The layout huggingface_hub writes (and ``scan_cache_dir`` reads)::

    <cache>/models--<owner>--<name>/blobs/<git blob id, or the sha256 of an LFS file>
    <cache>/models--<owner>--<name>/snapshots/<commit>/<path>  ->  relative symlink to its blob
    <cache>/models--<owner>--<name>/refs/<branch or tag>       the commit, without a newline
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ID = "wgsxm/PartCrafter"


def commit_of(source: Path, salt: str = "") -> str:
    """A 40-hex commit id for the files of ``source`` (stands in for the Hub's)."""
    digest = hashlib.sha1(salt.encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(path.relative_to(source).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def blob_name(path: Path) -> str:
    """How the Hub names a file's blob: the sha256 of an LFS file (weights), else its git blob id."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_snapshot(
    cache: Path, source: Path, repo_id: str = REPO_ID, refs: tuple[str, ...] = ("main",), salt: str = ""
) -> Path:
    """Put the files of ``source`` into ``cache`` as one commit of ``repo_id``; ``refs`` point at it.
    Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = commit_of(source, salt)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / blob_name(path)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(path.read_bytes())
        link = repo / "snapshots" / commit / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


def offline_cache(monkeypatch, root: Path) -> Path:
    """``HF_HOME`` at ``root`` (so the cache is ``root/hub``), ``HF_HUB_CACHE`` unset, offline. The cache."""
    monkeypatch.setenv("HF_HOME", str(root))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root / "hub"
