"""Hugging Face Hub repo ids as model folders: ``wgsxm/PartCrafter`` or ``wgsxm/PartCrafter@<revision>``.

Every front end (the gate's ``--partattn-model``, the ``partattn`` command's model arguments,
``load_checkpoint``) turns what the user wrote into a folder with :func:`model_folder`: an existing
local path wins (as in diffusers), else text written like a repo id is resolved through
huggingface_hub's cache with its public ``snapshot_download``, as diffusers resolves it: the cache is
``HF_HUB_CACHE`` (else ``HF_HOME/hub``), ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) means cache
only, and a download happens only where the environment allows one. Only JSON files and
safetensors weights are fetched: pickle weights are never downloaded (and never loaded).

A folder inside the cache (``models--owner--name/snapshots/<commit>``) names its repo and commit:
:func:`snapshot_of`, which records and baseline fingerprints store. Standard library at import;
huggingface_hub is imported only to resolve a repo id.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .files import CheckpointError

#: What a model folder needs from a repo: configs and safetensors weights, nothing else.
FETCH_PATTERNS = ("*.json", "*.safetensors")
#: ``owner/name`` with an optional ``@revision`` (a branch, tag, commit or ``refs/pr/N``).
_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = ("1", "ON", "YES", "TRUE")


class HubError(CheckpointError):
    """A repo id that cannot be had (not in the cache offline, no such repo or revision, no network);
    the message is one line naming the repo id and the command that fetches it."""


@dataclass(frozen=True)
class HubSnapshot:
    """A repo at one commit, as a folder of the hub cache."""

    repo_id: str
    commit: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit}"

    def provenance(self) -> dict[str, str]:
        """What records and fingerprints keep: ``{"repo_id": ..., "commit": ...}``."""
        return {"repo_id": self.repo_id, "commit": self.commit}


def parse(text: str) -> tuple[str, str | None] | None:
    """``(repo id, revision or None)`` when ``text`` is written like a repo id, else None."""
    match = _REPO_ID.fullmatch(str(text).strip())
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        return None
    return match["repo"], match["revision"]


def is_repo_id(text: str | os.PathLike[str], base: Path | None = None) -> bool:
    """True when ``text`` names a repo: written like one, and no local file or folder has that name."""
    local = Path(os.path.expanduser(str(text)))
    local = local if local.is_absolute() or base is None else base / local
    return parse(str(text)) is not None and not local.exists()


def model_folder(text: str | os.PathLike[str], base: Path | None = None) -> Path:
    """The folder ``text`` names: a local path (relative to ``base``, else the current folder), or a
    repo id's snapshot in the hub cache (:func:`resolve`). A local path is returned as it is, existing
    or not: its caller says what is wrong with it."""
    if isinstance(text, str) and is_repo_id(text, base):
        return resolve(text).path
    local = Path(os.path.expanduser(str(text)))
    return local if local.is_absolute() or base is None else base / local


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now (huggingface_hub reads it once)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses, read from the environment now: ``HF_HUB_CACHE`` (or the
    older ``HUGGINGFACE_HUB_CACHE``), else ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def fetch_command(repo_id: str, revision: str | None = None) -> str:
    """The shell command that puts ``repo_id`` (at ``revision``) into the cache, as this project fetches it."""
    import importlib.metadata as md

    try:
        major, minor = (int(p) for p in md.version("huggingface_hub").split(".")[:2])
        cli = "hf download" if (major, minor) >= (0, 34) else "huggingface-cli download"
    except (md.PackageNotFoundError, ValueError):
        cli = "hf download"
    rev = f" --revision {revision}" if revision else ""
    patterns = " ".join(f"'{p}'" for p in FETCH_PATTERNS)
    return f"{'HF_HUB_OFFLINE=0 ' if offline() else ''}{cli} {repo_id}{rev} --include {patterns}"


def resolve(text: str) -> HubSnapshot:
    """The snapshot folder of repo id ``text`` (``owner/name[@revision]``, default revision ``main``):
    from the cache when ``HF_HUB_OFFLINE`` is set, else looked up on the Hub and downloaded when
    needed (configs and safetensors only). Raises :class:`HubError` in one line."""
    parsed = parse(text)
    if parsed is None:
        raise HubError(f"{text!r} is not a Hugging Face repo id (owner/name or owner/name@revision)")
    repo_id, revision = parsed
    from huggingface_hub import snapshot_download
    from huggingface_hub import utils as hf

    cache, local_only = cache_dir(), offline()
    fetch = f"fetch it with: {fetch_command(repo_id, revision)}"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=local_only,
            allow_patterns=list(FETCH_PATTERNS),
        )
    except hf.RevisionNotFoundError:
        raise HubError(f"the Hugging Face repo {repo_id} has no revision {revision!r}") from None
    except hf.GatedRepoError:
        raise HubError(
            f"the Hugging Face repo {repo_id} is gated: accept its terms on the Hub, log in (hf auth login) and {fetch}"
        ) from None
    except hf.RepositoryNotFoundError:
        raise HubError(
            f"no such local folder, and no Hugging Face repo {repo_id} (or it is private: log in with hf auth login)"
        ) from None
    except hf.LocalEntryNotFoundError as err:
        why = (
            "HF_HUB_OFFLINE is set"
            if local_only
            else f"the Hub could not be reached ({_first_line(err.__cause__ or err)})"
        )
        raise HubError(
            f"no such local folder, and the Hugging Face repo {repo_id}"
            f"{f' at revision {revision}' if revision else ''} is not in the hub cache ({cache}) while {why}; {fetch}"
        ) from None
    except Exception as err:  # noqa: BLE001 - a cache that cannot be written, a proxy error: one line
        raise HubError(f"could not resolve the Hugging Face repo {repo_id}: {_first_line(err)}") from None
    snapshot = snapshot_of(folder)
    if snapshot is None:  # huggingface_hub returned a folder outside its cache layout
        return HubSnapshot(repo_id, Path(folder).name, Path(folder))
    return snapshot


def snapshot_of(path: str | os.PathLike[str]) -> HubSnapshot | None:
    """The repo and commit of a snapshot folder of the hub cache (``.../models--owner--name/snapshots/
    <commit>``), else None. Reads nothing."""
    folder = Path(path)
    repo = folder.parent.parent.name
    if folder.parent.name != "snapshots" or not repo.startswith("models--") or not _COMMIT.fullmatch(folder.name):
        return None
    owner_name = repo.removeprefix("models--").split("--")
    if len(owner_name) != 2 or not all(owner_name):
        return None
    return HubSnapshot("/".join(owner_name), folder.name, folder)


def provenance(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{"repo_id", "commit"}`` of a model folder inside the hub cache, else ``{}``."""
    snapshot = snapshot_of(path)
    return snapshot.provenance() if snapshot is not None else {}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].removeprefix("Got: ") if text else type(err).__name__
