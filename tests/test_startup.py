"""Fast start (issue 11): ``invertkit --help`` and ``list`` import no torch, and neither does ``show`` of a
component whose facts it has read from the class once (they are remembered, with the source files they came
from, in ``$INVERTKIT_CACHE/component-facts.json``).

Names and summaries come from the entry points and a static read of each plugin module (the plugin index);
a module is imported only when its class is needed (``show``, ``run``, ``bench``). Modules that register in
a loop are imported once and remembered in ``$INVERTKIT_CACHE/plugin-index.json``, hence the warm-up run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from invertkit.core.plugins import static_index

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"


#: runs ``cli.py ARGS`` as ``python cli.py`` does and writes ``sys.modules`` at exit (``-X importtime`` misses
#: modules loaded through ``importlib.import_module``, as entry points are)
RUN = """
import atexit, runpy, sys
out, cli = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
sys.argv = sys.argv[2:]
runpy.run_path(cli, run_name="__main__")
"""


def imported(*args: str, cwd: Path, cache: Path | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``python cli.py ARGS`` in a subprocess (with the cache ``cache``, else the session's): the result and the
    names of the modules it imported."""
    out = cwd / "modules.txt"
    env = {**os.environ, **({"INVERTKIT_CACHE": str(cache)} if cache is not None else {})}
    proc = subprocess.run([sys.executable, "-c", RUN, str(out), str(CLI), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, set(out.read_text().split())


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "attacks"], ["show", "preset", "digits"]])
def test_no_torch_at_start(args: list[str], tmp_path: Path) -> None:
    imported("list", cwd=tmp_path)  # warm the index cache (the session's INVERTKIT_CACHE)
    proc, mods = imported(*args, cwd=tmp_path)
    assert "torch" not in mods and not any(m.startswith("torch.") for m in mods), sorted(m for m in mods if "torch" in m)
    assert "invertkit.plugins.attacks.gan_search" not in mods  # no plugin module imported to list it
    if args[0] == "list":
        assert "  gmi " in proc.stdout and "[gan-search]" in proc.stdout


def torch_in(mods: set[str]) -> bool:
    return "torch" in mods or any(m.startswith("torch.") for m in mods)


def test_show_imports_only_the_component_module(tmp_path: Path) -> None:
    imported("list", cwd=tmp_path, cache=tmp_path / "cold")  # the plugin index warm, no component's facts yet
    proc, mods = imported("show", "attack", "gmi", cwd=tmp_path, cache=tmp_path / "cold")
    assert "invertkit.plugins.attacks.gan_search" in mods and "https://arxiv.org/abs/1911.07135" in proc.stdout
    assert "invertkit.plugins.attacks.nes" not in mods and "invertkit.plugins.targets.timm_nets" not in mods


def test_static_index_reads_register_calls_and_literal_metadata() -> None:
    src = '''
PAPER = "https://example.org/p"
class Base:
    paper = PAPER
class Mine(Base):
    """First line.

    More."""
    name = "mine"
@hookimpl
def invertkit_register_attacks(register):
    register(Mine)
def f(): ...
f.name = "f-arch"
f.summary = "an " + "architecture"
@hookimpl
def invertkit_register_architectures(register):
    register(f)
@hookimpl
def invertkit_register_commands(cli): ...
'''
    index = static_index(src)
    assert index is not None
    assert index.components == (("attack", "mine", "First line.", "https://example.org/p"),
                                 ("architecture", "f-arch", "an architecture", ""))
    assert "invertkit_register_commands" in index.hooks


@pytest.mark.parametrize("body", [
    "    for a in ARCHS:\n        register(a)\n",  # a loop
    "    register(make())\n",  # not a name
    "    register(Imported)\n",  # defined elsewhere
])
def test_static_index_gives_up_on_what_it_cannot_follow(body: str) -> None:
    assert static_index(f"@hookimpl\ndef invertkit_register_attacks(register):\n{body}") is None


@pytest.mark.parametrize("kind,name", [("attack", "gmi"), ("defense", "top-k"), ("prior", "wgan-gp"),
                                       ("metric", "attack-acc")])
def test_show_without_torch_once_remembered(kind: str, name: str, tmp_path: Path) -> None:
    """``show`` reads a component's facts (requirements, defaults, config schema) from its class once, and after
    from the cache, without importing its module or torch, while none of the source files they came from has
    changed; the output is the same either way."""
    cache = tmp_path / "cache"
    imported("list", cwd=tmp_path, cache=cache)
    first, mods = imported("show", kind, name, cwd=tmp_path, cache=cache)
    assert torch_in(mods)
    again, mods = imported("show", kind, name, cwd=tmp_path, cache=cache)
    assert not torch_in(mods), sorted(m for m in mods if "torch" in m)
    assert again.stdout == first.stdout and f"{kind} {name}  (plugin '" in again.stdout
    if kind in ("attack", "defense"):
        assert "  defaults:     {" in again.stdout and "  config schema:" in again.stdout
    facts_file = cache / "component-facts.json"
    facts = json.loads(facts_file.read_text())
    (entry,) = facts.values()
    first_file = next(iter(entry["files"]))
    entry["files"][first_file][1] -= 1  # as if that source file had been edited since
    facts_file.write_text(json.dumps(facts))
    stale, mods = imported("show", kind, name, cwd=tmp_path, cache=cache)
    assert torch_in(mods) and stale.stdout == first.stdout  # read from the class again
