"""A user's own torch network, without packaging it as a plugin.

A target's ``module`` names where the network comes from:

* ``"path/to/file.py:build"`` — a Python file and a function in it; invertkit imports the file (it is the
  user's own code, named by the user, and runs like any script they start) and calls ``build(**options)``
  (``module_options``), which returns an ``nn.Module``. A relative path is taken from the registry file's
  folder.
* ``"path/to/model.ts"`` (any name) holding a TorchScript archive (``torch.jit.save``): loaded with
  ``torch.jit.load``, which compiles TorchScript and unpickles no Python objects.
* ``"path/to/model.pt2"``: a ``torch.export`` archive. ``torch.export.load`` unpickles weights and constants,
  so it is read only with ``INVERTKIT_ALLOW_PICKLE=1`` (the user's opt-in, as for pickled checkpoints).

Weights: ``weights`` then loads a safetensors state into the built module, with ``key_map`` renaming keys
(:func:`invertkit.core.cache.remap_keys`: patterns, or ``"by-position"`` with a shape check); a TorchScript
archive carries its own weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invertkit.core.errors import CheckpointError


def resolve(path: str | Path, base: str | Path | None = None) -> Path:
    p = Path(str(path)).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return p


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with a ``code/`` folder (``torch.save`` zips have ``data.pkl`` and no code)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_user_module(spec: str, options: dict[str, Any] | None = None, *, base: str | Path | None = None) -> nn.Module:
    """The network ``spec`` names (see the module docstring); one :class:`CheckpointError` line when it cannot
    be had."""
    options = dict(options or {})
    file_part, sep, func = spec.rpartition(":")
    if sep and file_part.endswith(".py") and func.isidentifier():
        return _from_python(resolve(file_part, base), func, options)
    path = resolve(spec, base)
    if not path.is_file():
        raise CheckpointError(f"module file not found: {path} (give 'file.py:function' or a TorchScript archive)")
    if path.suffix == ".pt2":
        return _from_export(path, options)
    if path.suffix == ".py":
        raise CheckpointError(f"{path}: name the function that builds the network, as '{spec}:build'")
    if not is_torchscript(path):
        raise CheckpointError(f"{path} is not a TorchScript archive (torch.jit.save); a pickled model is not loaded "
                              "(export it with torch.jit.script/trace, or give 'file.py:build' plus safetensors weights)")
    if options:
        raise CheckpointError(f"{path}: module_options apply to 'file.py:build' only, not to a TorchScript archive")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad archive
        raise CheckpointError(f"{path}: cannot be loaded as TorchScript: {str(exc).splitlines()[0][:200]}") from None


def _from_export(path: Path, options: dict[str, Any]) -> nn.Module:
    import os

    if os.environ.get("INVERTKIT_ALLOW_PICKLE") != "1":
        raise CheckpointError(f"{path} is a torch.export archive, and torch.export.load unpickles its weights and "
                              "constants (code from the file can run); set INVERTKIT_ALLOW_PICKLE=1 if you trust it, "
                              "or give 'file.py:build' plus safetensors weights")
    if options:
        raise CheckpointError(f"{path}: module_options apply to 'file.py:build' only, not to a torch.export archive")
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot be loaded with torch.export.load: {str(exc).splitlines()[0][:200]}") from None


def _from_python(path: Path, func: str, options: dict[str, Any]) -> nn.Module:
    if not path.is_file():
        raise CheckpointError(f"module file not found: {path}")
    name = "invertkit_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    mod = sys.modules.get(name)
    if mod is None or getattr(mod, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise CheckpointError(f"{path}: cannot be imported as a Python module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:  # noqa: BLE001 - the user's file: report what it raised, in one line
            sys.modules.pop(name, None)
            raise CheckpointError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from None
    fn = getattr(mod, func, None)
    if not callable(fn):
        from invertkit.core.registry import unknown

        names = [n for n in vars(mod) if callable(getattr(mod, n)) and not n.startswith("_")]
        raise CheckpointError(f"{path}: {unknown('function', func, names)}")
    try:
        net = fn(**options)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}:{func}({', '.join(f'{k}=...' for k in options)}) raised "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise CheckpointError(f"{path}:{func} returned a {type(net).__name__}, not a torch nn.Module")
    return net.eval()


__all__ = ["load_user_module", "is_torchscript", "resolve"]
