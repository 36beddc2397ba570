"""Content-addressed local cache with atomic writes, and self-describing safetensors checkpoints.

Location: ``$INVERTKIT_CACHE``, else ``$XDG_CACHE_HOME/invertkit``, else ``~/.cache/invertkit``.
A file is written to a temporary name (unique to the writer) in the same folder and renamed into place,
so a reader sees either nothing or the whole file, and an interrupted run never leaves a half-written
entry; it gets the mode an ordinary ``open()`` would (``0o666`` less the umask). :func:`entry_lock` is an
inter-process lock on one entry, so two runs sharing a cache make (train) it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from invertkit.core.errors import CheckpointError

META_KEY = "invertkit"


def cache_dir() -> Path:
    root = os.environ.get("INVERTKIT_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "invertkit"
    path.mkdir(parents=True, exist_ok=True)
    return path


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex); a missing file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_key(obj: Any, length: int = 20) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:length]


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path, unique to this writer, in ``path``'s folder; renamed onto ``path`` when the block
    ends without an error, removed otherwise. Its mode honours the umask (``mkstemp`` alone gives 0600)."""
    path = Path(path)
    # the temporary file must live in the destination folder: a rename is only atomic (or even possible,
    # across filesystems) within one filesystem
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())  # after the writer: some (safetensors) create the file anew
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def record_checksum(record: dict[str, Any], *blobs: bytes) -> str:
    """SHA-256 (hex) of ``record``'s canonical JSON without its ``checksum`` field, then ``blobs`` (the bytes of
    the files stored with it): what a cached entry is checked against when it is read back."""
    h = hashlib.sha256(canonical({k: v for k, v in record.items() if k != "checksum"}).encode())
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


@contextmanager
def entry_lock(path: str | Path, what: str = "") -> Iterator[None]:
    """An exclusive lock, across processes, on the cache entry ``path`` (the file ``<path>.lock``): hold it
    around "make the entry unless it exists" so that two runs sharing a cache make it once, the second
    waiting for the first and then reading what it made."""
    from filelock import FileLock, Timeout

    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process making {what or Path(path).name}", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def save_module(path: str | Path, module: nn.Module, meta: dict[str, Any]) -> None:
    """Save ``module``'s state as safetensors with ``meta`` (architecture, shapes, config) in its header."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def read_meta(path: str | Path) -> dict[str, Any]:
    """The invertkit metadata of a safetensors file (``{}`` if it has none)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    try:
        out = json.loads(meta.get(META_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invertkit metadata is not valid JSON: {exc}") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"{path}: invertkit metadata is not a JSON object (got {type(out).__name__})")
    return out


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None


def load_into(module: nn.Module, path: str | Path, key_map: Any = None) -> nn.Module:
    """Load a safetensors state into ``module``; missing/unexpected keys or shape mismatches are one clear error.
    ``key_map`` renames the file's keys first (:func:`remap_keys`)."""
    return fit_state(module, load_state(path), path, key_map)


def remap_keys(state: dict[str, Any], own: dict[str, Any], key_map: Any, source: str | Path = "<state>") -> dict[str, Any]:
    """Rename a checkpoint's keys to a module's.

    ``key_map`` is ``None`` (as they are), a mapping of regular expressions to replacements applied in order to
    every key (``{"^module\\." = "", "^fc\\." = "head."}``; a key mapped to ``""`` entirely is dropped), or
    ``"by-position"``: the file's tensors are paired with the module's state entries, both lists sorted the same
    way (natural order: numbers by value, so ``layer.10`` follows ``layer.9``; safetensors files keep no write
    order), and every pair must have the same shape (the first that does not is named). It fits two namings that
    differ in prefixes or in module names that sort alike; the shape check turns a wrong pairing into an error."""
    import re

    def natural(key: str) -> list[Any]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", key) if p]

    if key_map is None:
        return state
    if key_map == "by-position":
        if len(state) != len(own):
            raise CheckpointError(f"{source}: by-position key mapping needs as many tensors as the module has "
                                  f"({len(state)} in the file, {len(own)} in the module)")
        out = {}
        pairs = zip(sorted(state.items(), key=lambda kv: natural(kv[0])), sorted(own.items(), key=lambda kv: natural(kv[0])))
        for (fk, fv), (mk, mv) in pairs:
            if tuple(fv.shape) != tuple(mv.shape):
                raise CheckpointError(f"{source}: by-position key mapping: the file's '{fk}' {tuple(fv.shape)} does "
                                      f"not fit the module's '{mk}' {tuple(mv.shape)}")
            out[mk] = fv
        return out
    if not isinstance(key_map, dict):
        raise CheckpointError(f"{source}: key_map must be a table of pattern = replacement, or 'by-position'")
    rules = []
    for pat, rep in key_map.items():
        try:
            rules.append((re.compile(pat), str(rep)))
        except re.error as exc:
            raise CheckpointError(f"{source}: key_map pattern '{pat}' is not a regular expression: {exc}") from None
    out = {}
    for k, v in state.items():
        new = k
        for rx, rep in rules:
            new = rx.sub(rep, new)
        if new:
            if new in out:
                raise CheckpointError(f"{source}: key_map maps two of the file's keys to '{new}'")
            out[new] = v
    return out


def fit_state(module: nn.Module, state: dict[str, Any], path: str | Path, key_map: Any = None) -> nn.Module:
    """Load ``state`` (after ``key_map``) into ``module``: every key and shape must match, else one clear error."""
    own = module.state_dict()
    state = remap_keys(state, own, key_map, path)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        hint = "" if key_map is not None else " (a key_map can rename them)"
        raise CheckpointError(
            f"{path} does not fit {type(module).__name__}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}{hint}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{path}: '{k}' has shape {tuple(v.shape)}, the architecture expects {tuple(own[k].shape)}")
    module.load_state_dict(state)
    return module


PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".tar"}


def load_checkpoint(module: nn.Module, path: str | Path, key_map: Any = None) -> nn.Module:
    """Load weights into ``module``: safetensors (:func:`load_into`), or a pickled torch checkpoint
    (``state_dict`` wrappers and DataParallel ``module.`` prefixes undone) only with INVERTKIT_ALLOW_PICKLE=1.
    ``key_map`` renames the file's keys (:func:`remap_keys`)."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        if os.environ.get("INVERTKIT_ALLOW_PICKLE") != "1":
            raise CheckpointError(
                f"{path} is a pickled checkpoint; unpickling runs code from the file. Convert it to safetensors, "
                "or set INVERTKIT_ALLOW_PICKLE=1 if you trust it"
            )
        if not path.is_file():
            raise CheckpointError(f"weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot be read as a torch checkpoint: {exc}") from None
        if isinstance(state, nn.Module):  # a whole pickled model
            state = state.state_dict()
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
        if key_map is None:
            state = {k.removeprefix("module."): v for k, v in state.items()}
        return fit_state(module, state, path, key_map)
    return load_into(module, path, key_map)
