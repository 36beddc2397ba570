"""invertkit command line (thin: parsing and printing; the work is in ``invertkit.core``).

``python cli.py …`` and the ``invertkit`` console script are the same program. Errors, library and
command-line parsing alike, become one ``error: …`` line on stderr and exit code 2 (usage: unknown names,
bad options, malformed files) or 1 (runtime); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

BENCH_DEFAULT_OUT = "invertkit-out"

KIND_ALIASES = {
    "attack": "attack", "attacks": "attack",
    "defense": "defense", "defenses": "defense", "defence": "defense", "defences": "defense",
    "prior": "prior", "priors": "prior",
    "metric": "metric", "metrics": "metric",
    "backend": "backend", "backends": "backend",
    "architecture": "architecture", "architectures": "architecture", "arch": "architecture",
    "dataset": "dataset", "datasets": "dataset",
    "target": "target", "targets": "target",
    "preset": "preset", "presets": "preset",
    "bench": "bench", "benches": "bench", "matrix": "bench", "matrices": "bench",
}
CATALOG_KINDS = ("target", "preset", "bench")
PLURALS = {"bench": "benches"}


class OneLineError(click.ClickException):
    """A click error shown as one ``error: …`` line on stderr (click's own usage errors print several)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _one_line(exc: click.UsageError) -> click.ClickException:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # bare ``invertkit``: the help, not an error
        return exc
    msg = exc.format_message()
    if exc.ctx is not None:
        msg = f"{msg.rstrip()} (see '{exc.ctx.command_path} --help')"
    return OneLineError(msg, exc.exit_code)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug") or (ctx.obj or {}).get("debug"))


class InvertkitGroup(click.Group):
    """Turns invertkit errors into one line + exit code, for the console script and CliRunner alike."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # a bad group-level option
            if "--debug" in args:
                raise
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        from invertkit.core.errors import InvertkitError

        try:
            return super().invoke(ctx)
        except InvertkitError as exc:
            if _debug(ctx):
                raise
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # unknown command, missing or bad option of a command
            if _debug(ctx):
                raise
            raise _one_line(exc) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, BrokenPipeError):
            raise  # click handles these (a closed pipe, as in ``invertkit list | head``, exits quietly)
        except Exception as exc:  # noqa: BLE001
            if _debug(ctx):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"error: {type(exc).__name__}: {msg} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


def _debug_now() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root and root.obj and root.obj.get("debug"))


def _plugins(*, lazy: bool = False):  # noqa: ANN202
    """The plugin set; ``lazy``: the index (``list``/``show``/``--help``), which imports a plugin module only when
    its class is looked up, so listing never loads torch."""
    from invertkit.core.plugins import get_plugins

    plugins = get_plugins(lazy=lazy)
    if not lazy:  # the commands that compute: take the cores that are free, not all of them
        from invertkit.core.threads import apply_threads

        apply_threads()
    for info in plugins.failures():
        click.echo(f"warning: plugin '{info.name}' ({info.source}) failed: {info.error}", err=True)
    return plugins


def _catalog(path: str | None):
    from invertkit.core.catalog import load_catalog

    return load_catalog(path)


def _checked_catalog(path: str | None, plugins):  # noqa: ANN001, ANN202
    """The registry, checked as ``validate`` checks it: before any work, not after training for it."""
    from invertkit.core.catalog import check_catalog

    catalog = _catalog(path)
    check_catalog(catalog, plugins, path or "registry.toml (bundled)")
    return catalog


def _check_out(out: str | None) -> None:
    """Refuse an ``--out`` that can never be written, before any work is done: a file, a path under a file,
    a folder (or the nearest existing folder above a new one) that cannot be written. Nothing is left behind."""
    import os
    import tempfile

    from invertkit.core.errors import UsageError

    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    nearest = path.absolute()
    while not os.path.lexists(nearest) and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UsageError(f"--out {out} is under {nearest}, which is a file, not a folder")
    try:  # the only sure test (read-only filesystems, permissions, ACLs): write a file there, and remove it
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be written: {exc.strerror or exc} ({nearest})") from None


def _kind(kind: str) -> str:
    from invertkit.core.registry import unknown

    k = KIND_ALIASES.get(kind.lower())
    if k is None:
        raise unknown("kind", kind, sorted(set(KIND_ALIASES.values())))
    return k


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``--quiet`` (before the command or after it): no progress on stderr, only warnings and errors."""
    from invertkit.core import progress

    if value or ctx.parent is None:  # the group's flag sets it either way: one process may run several commands
        progress.set_quiet(value)
    return value


quiet_option = click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_quiet,
                            help="No progress on stderr (bars, training, cells): only warnings and errors.")


@click.group(cls=InvertkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@quiet_option
@click.version_option(package_name="invertkit")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """invertkit: model-inversion attacks and defenses, and an honest bench of both."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ----------------------------------------------------------------------------------- list / show
@cli.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False, default="*")
@click.option("--registry", "registry_path", type=click.Path(), help="A registry.toml other than the bundled one.")
def list_cmd(kind: str | None, pattern: str, registry_path: str | None) -> None:
    """List registered components (KIND: attacks, defenses, priors, metrics, backends, architectures,
    datasets, targets, presets, benches), optionally filtered by a wildcard PATTERN."""
    from invertkit.core.registry import KINDS, describe

    plugins = _plugins(lazy=True)
    catalog = _catalog(registry_path)
    kinds = [_kind(kind)] if kind else [*KINDS, *CATALOG_KINDS]
    for k in kinds:
        rows: list[tuple[str, str, str]] = []
        if k in CATALOG_KINDS:
            import fnmatch

            table = {"target": catalog.targets, "preset": catalog.presets, "bench": catalog.bench}[k]
            pats = [p.strip() for p in pattern.split(",") if p.strip()] or ["*"]
            source = registry_path or "registry.toml"
            rows = [(n, source, v.summary) for n, v in sorted(table.items())
                    if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        else:
            reg = plugins.registry[k]
            for n in reg.names(pattern):
                e = reg.peek(n)  # the class's metadata; a module the index read statically is not imported
                summary = describe(e.obj)[0] if e.loaded else e.summary
                rows.append((n, e.plugin, summary))
        if kind is None and not rows:
            continue
        click.echo(f"{PLURALS.get(k, k + 's')}:")
        if not rows:
            click.echo("  (none)")
        width = max((len(r[0]) for r in rows), default=0)
        for n, plugin, summary in rows:
            click.echo(f"  {n.ljust(width)}  [{plugin}]  {summary}")


@cli.command("show")
@click.argument("kind")
@click.argument("name")
@click.option("--registry", "registry_path", type=click.Path())
def show_cmd(kind: str, name: str, registry_path: str | None) -> None:
    """Show one component: paper, threat model, requirements, defaults and config JSON schema (from its class;
    remembered in the cache, so a later show of it does not import its module)."""

    k = _kind(kind)
    if k in CATALOG_KINDS:
        catalog = _catalog(registry_path)
        obj = {"target": catalog.target, "preset": catalog.preset, "bench": catalog.matrix}[k](name)
        click.echo(json.dumps(obj.model_dump(mode="json"), indent=2))
        return
    from invertkit.core.component_facts import component_facts

    plugin, facts = component_facts(_plugins(lazy=True), k, name)  # the class's module, imported once and remembered
    click.echo(f"{k} {name}  (plugin '{plugin}')")
    for key, label in (("paper", "paper"), ("threat_model", "threat model"), ("summary", "summary")):
        if facts.get(key):
            click.echo(f"  {label + ':':13s} {facts[key]}")
    for key, label in (("requires", "requires"), ("prior_requires", "prior requires")):
        if key in facts:
            click.echo(f"  {label + ':':13s} {facts[key] or 'nothing'}")
    if "defense_kind" in facts:
        click.echo(f"  kind:         {facts['defense_kind']} defense; gradients: {facts['gradient']}")
    if "defaults" in facts:
        click.echo("  defaults:     " + json.dumps(facts["defaults"]))
        click.echo("  config schema:")
        click.echo("    " + json.dumps(facts["schema"], indent=2).replace("\n", "\n    "))


@cli.command("plugins")
def plugins_cmd() -> None:
    """List discovered plugins (entry-point group 'invertkit'), their status and what they registered."""
    from invertkit.core.plugins import get_plugins

    plugins = get_plugins()
    infos = sorted(plugins.infos.values(), key=lambda i: i.name)
    w_name = max((len(i.name) for i in infos), default=0)
    w_dist = max((len(i.dist) for i in infos), default=0)
    for info in infos:
        what = ", ".join(f"{k} {n}" for k, n in info.registered) or "-"
        line = f"{info.name:{w_name}s}  {info.status:7s}  {info.dist:{w_dist}s}  {what}"
        if info.error:
            line += f"\n{'':{w_name}s}  error: {' '.join(info.error.split())}"
        click.echo(line)


@cli.command("validate")
@click.argument("file", required=False, type=click.Path())
def validate_cmd(file: str | None) -> None:
    """Validate registry.toml (or FILE): schema, and every name it uses against the registered plugins."""
    from invertkit.core.catalog import check_catalog, load_catalog

    catalog = load_catalog(file)
    plugins = _plugins()
    where = file or "registry.toml (bundled)"
    check_catalog(catalog, plugins, where)
    warned = 0
    for name, spec in catalog.targets.items():
        if not spec.standalone:
            continue
        from invertkit.core.audit import audit_target
        from invertkit.core.interfaces.capability import describe

        target, warnings = audit_target(name, spec, plugins)
        click.echo(f"target {name}: {spec.backend} {spec.kind}, input {list(target.input_shape)}, "
                   f"{target.num_classes} classes, exposes {describe(target.capabilities)}")
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        warned += len(warnings)
    click.echo(f"{where}: ok ({len(catalog.presets)} presets, {len(catalog.targets)} targets, "
               f"{len(catalog.bench)} bench matrices)" + (f"; {warned} warning(s)" if warned else ""))


# ----------------------------------------------------------------------------------- run / bench
def _split_options(options: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``-o gmi.iterations=100`` / ``-o defense.k=3`` style overrides, grouped by component."""
    from invertkit.core.interfaces.config import parse_overrides

    grouped: dict[str, dict[str, Any]] = {}
    for key, value in parse_overrides(options).items():
        comp, _, field = key.rpartition(".")
        grouped.setdefault(comp, {})[field] = value
    return grouped


@cli.command("run")
@quiet_option
@click.option("--attack", "-a", required=True, help="Attack name.")
@click.option("--target", "-t", required=True, help="Target name (registry.toml).")
@click.option("--defense", "-d", default="none", show_default=True, help="Defense name.")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Attack option (e.g. -o iterations=100); prefix defense options with 'defense.' (or its name).")
@click.option("--samples", default=None, type=click.IntRange(min=1), help="Reconstructions per identity.")
@click.option("--identities", default=None, metavar="LIST",
              help="Identities (classes) to attack: indices and ranges, e.g. '0..4,17'; or class names where the "
                   "target's private data is a class-folder (default: every class).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default=None, type=click.Path(), help="Write the reconstructions (PNG grid) and the record here.")
@click.option("--adaptive", is_flag=True,
              help="An adaptive attacker: holds the weights and must pass an output defense (BPDA gradients); labelled.")
@click.option("--registry", "registry_path", type=click.Path())
def run_cmd(attack: str, target: str, defense: str, options: tuple[str, ...], samples: int | None,
            identities: str | None, seed: int, out: str | None, adaptive: bool, registry_path: str | None) -> None:
    """Run one attack against one (defended) target and print its metrics."""
    from invertkit.core.bench.plan import Cell, skip_reason, target_capabilities
    from invertkit.core.bench.report import grid_png
    from invertkit.core.bench.runner import run_cell
    from invertkit.core.cache import atomic_write_bytes, atomic_write_json
    from invertkit.core.errors import CapabilityError, InvertkitError, UsageError
    from invertkit.core.interfaces.config import build_config

    _check_out(out)
    plugins = _plugins()
    catalog = _checked_catalog(registry_path, plugins)
    a_cls = plugins.get("attack", attack)
    d_cls = plugins.get("defense", defense)
    tspec = catalog.target(target)
    grouped = _split_options(options)
    a_opts = grouped.pop("", {})
    a_opts.update(grouped.pop(attack, {}))
    d_opts = grouped.pop("defense", {})
    d_opts.update(grouped.pop(defense, {}))
    if grouped:
        raise UsageError(f"unknown option prefix '{next(iter(grouped))}.' (use KEY=VALUE or defense.KEY=VALUE)")
    build_config(a_cls.Config, a_opts, what=f"attack '{attack}'")
    reason = skip_reason(catalog, plugins, a_cls, d_cls(d_opts), target, target_capabilities(catalog, plugins, target),
                         adaptive=adaptive)
    if reason:
        raise CapabilityError(f"attack '{attack}' on '{target}' under '{defense}': {reason}")
    default = catalog.bench.get("default")
    judged = not tspec.standalone and bool(catalog.preset(tspec.preset).judges)
    cell = Cell(attack=attack, defense=defense, target=target, attack_options=a_opts, defense_options=d_opts,
                samples_per_identity=samples or (default.samples_per_identity if default else 8), seed=seed,
                identities=_identities(identities, catalog, plugins, target) if identities else None,
                metrics=("attack-acc", "knn-dist", *(("judge",) if judged else ())), adaptive=adaptive)
    outcome = run_cell(cell, catalog, plugins, use_cache=False, debug=_debug_now())
    rec = outcome.record
    if rec["status"] != "ok":
        raise InvertkitError(f"{attack} on {target} under {defense} failed: {rec['reason']}")
    m = rec["metrics"]
    click.echo(f"{attack} x {defense} x {target}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    if rec.get("budget", {}).get("exhausted"):
        click.echo(f"query budget of {rec['budget']['limit']} exhausted: the attack ended with what it had")
    if out:
        path = Path(out)
        order = outcome.labels.argsort(stable=True)
        png = grid_png(outcome.images[order], nrow=min(8, cell.samples_per_identity))  # before writing anything
        atomic_write_bytes(path / "reconstructions.png", png)
        atomic_write_json(path / "record.json", rec)
        click.echo(f"wrote {path / 'record.json'} and {path / 'reconstructions.png'}")


def _identities(text: str, catalog: Any, plugins: Any, target: str) -> tuple[int, ...]:
    """``--identities``: comma-separated indices, ``a..b`` ranges, or class names (the folder names of a
    standalone target's class-folder private data), checked against the target's number of classes."""
    from invertkit.core.catalog import class_list
    from invertkit.core.errors import UsageError
    from invertkit.core.registry import unknown

    spec = catalog.target(target)
    if spec.standalone:
        from invertkit.core.zoo.standalone import model_facts

        n = model_facts(target, spec, plugins)["num_classes"]
    else:
        n = len(catalog.preset(spec.preset).private_classes)
    names: list[str] | None = None
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.isdigit() or ".." in part:
            try:
                out.extend([int(part)] if part.isdigit() else class_list(part))
            except ValueError as exc:
                raise UsageError(f"--identities: {exc}") from None
            continue
        if names is None:
            data = spec.private if spec.standalone else None
            adapter = plugins.get("dataset", data.dataset)() if data is not None else None
            if adapter is None or not hasattr(adapter, "class_names"):
                raise UsageError(f"--identities: '{part}' is not an index or a range a..b, and target '{target}' has "
                                 "no named classes (a class-folder private set names them)")
            names = adapter.class_names(data.root)
        if part not in names:
            raise unknown("class", part, names)
        out.append(names.index(part))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise UsageError(f"--identities: {bad} out of range: target '{target}' has {n} classes (0..{n - 1})")
    if not out:
        raise UsageError("--identities: no identity given")
    return tuple(dict.fromkeys(out))


def _print_matrix(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from invertkit.core.bench.report import cell_text, fmt, headlines, matrix

    attacks, defenses, cell = matrix(records)
    key, label = headlines(records)[0]  # acc@1, or (records: attribute inference) the attribute accuracy
    judged = any("judge_acc" in r.get("metrics", {}) for r in records)
    adaptive = any(r.get("mode") == "adaptive" for r in records)
    # names, reasons and titles are the user's (a target may be called '[/oops]'): printed as they are, never
    # read as rich markup
    console = Console(stderr=False, width=160, markup=False)

    def text(r: dict[str, Any] | None) -> str:
        main = cell_text(r, key)
        if judged and r is not None and r["status"] == "ok" and "judge_acc" in r["metrics"]:
            main += f" ({fmt(r['metrics']['judge_acc'])})"
        return main

    for t in dict.fromkeys(r["target"] for r in records):
        what = (f"attack acc@1 on '{t}' (evaluation model{'; the judge in brackets' if judged else ''})"
                if key == "acc@1" else f"{label} on '{t}'")
        title = (what +
                 f"{'  |  ADAPTIVE attackers' if adaptive else ''}  |  last row: defended natural accuracy")
        table = Table(title=title)
        table.add_column("attack \\ defense")
        for d in defenses:
            table.add_column(d, justify="right")
        for a in attacks:
            table.add_row(a, *[text(cell.get((t, a, d))) for d in defenses])
        nat = []
        for d in defenses:
            vals = [r["metrics"].get("natural_acc") for r in records if r["target"] == t and r["defense"] == d and r["status"] == "ok"]
            nat.append(fmt(vals[0]) if vals else "–")
        table.add_row("natural acc", *nat, style="italic")
        console.print(table)
    reasons = dict.fromkeys(r["reason"] for r in records if r["status"] == "skipped")
    for reason in reasons:
        who = sorted({f"{r['attack']} x {r['defense']}" for r in records if r["status"] == "skipped" and r["reason"] == reason})
        console.print(f"skipped ({', '.join(who)}): {reason}", soft_wrap=True)


@cli.command("bench")
@quiet_option
@click.option("--matrix", "matrix_name", default="default", show_default=True, help="Bench matrix in registry.toml.")
@click.option("--attacks", default=None, help="Attack names/wildcards (comma-separated).")
@click.option("--defenses", default=None, help="Defense names/wildcards.")
@click.option("--targets", default=None, help="Target names/wildcards.")
@click.option("-o", "options", multiple=True, metavar="NAME.KEY=VALUE",
              help="Override a component option, e.g. -o gmi.iterations=100 -o top-k.k=2.")
@click.option("--out", default=BENCH_DEFAULT_OUT, show_default=True, type=click.Path(), help="Report folder.")
@click.option("--fresh", is_flag=True, help="Ignore cached cells and recompute them.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: cells one after another here; ray: one Ray task per cell (a local Ray instance, or --address).")
@click.option("--address", default=None, metavar="ADDR",
              help="With --executor ray: the Ray cluster to run on (ray.init(address=ADDR)); default: start a local one.")
@click.option("--adaptive", is_flag=True,
              help="Adaptive attackers: white-box attacks hold the weights and must pass output defenses (BPDA "
                   "gradients). Opt-in; every record and table says so.")
@click.option("--registry", "registry_path", type=click.Path())
def bench_cmd(matrix_name: str, attacks: str | None, defenses: str | None, targets: str | None,
              options: tuple[str, ...], out: str, fresh: bool, executor: str, address: str | None, adaptive: bool,
              registry_path: str | None) -> None:
    """Run an attacks x defenses x targets matrix; print it and write results.{jsonl,csv,md} + report.html.

    results.jsonl grows as cells finish; after an interruption, the same command again runs only what is
    missing (finished cells come from the cache)."""
    from invertkit.core import progress
    from invertkit.core.bench.plan import make_plan
    from invertkit.core.bench.report import ResultsStream, write_report
    from invertkit.core.bench.runner import RayExecutor, run_bench
    from invertkit.core.errors import InvertkitError, UsageError
    from invertkit.core.registry import unknown

    t0 = time.perf_counter()
    if address is not None and executor != "ray":
        raise UsageError("--address applies to --executor ray")
    _check_out(out)
    plugins = _plugins()
    catalog = _checked_catalog(registry_path, plugins)
    overrides: dict[str, dict[str, Any]] = {}
    for comp, values in _split_options(options).items():
        if not comp:
            raise UsageError("bench options need a component prefix, e.g. -o gmi.iterations=100")
        if comp in plugins.registry["attack"]:
            overrides[f"attack:{comp}"] = values
        elif comp in plugins.registry["defense"]:
            overrides[f"defense:{comp}"] = values
        else:
            raise unknown("attack or defense", comp, [*plugins.registry["attack"], *plugins.registry["defense"]])
    plan = make_plan(catalog, plugins, matrix=matrix_name, attacks=attacks, defenses=defenses, targets=targets,
                     options=overrides, adaptive=adaptive)
    progress.note(f"bench '{matrix_name}'{' (ADAPTIVE attackers)' if adaptive else ''}: {len(plan.cells)} cells "
                  f"({len(plan.runnable)} to run, {len(plan.skipped)} skipped for missing capabilities or prior)")

    stream = ResultsStream(out)  # each finished cell lands in results.jsonl at once: a killed bench keeps it
    ex = RayExecutor(registry_path, address=address) if executor == "ray" else None
    if ex is not None:
        ex.worker_env()  # a plugin set the tasks could not load is refused before any work
    counts = {"ok": 0, "failed": 0, "cached": 0}
    with progress.task(f"bench '{matrix_name}'", total=len(plan.runnable), unit="cell") as bar:

        def cell_done(i: int, n: int, rec: dict[str, Any]) -> None:
            stream.append(rec)
            m = rec.get("metrics", {})
            tail = f"acc@1={m['acc@1']:.3f}" if "acc@1" in m else rec.get("reason", "")
            cached = " (cached)" if rec.get("cached") else ""
            if not progress.interactive() or rec["status"] == "failed":  # a log keeps a line per cell
                progress.note(f"  [{i}/{n}] {rec['attack']} x {rec['defense']} x {rec['target']}: {rec['status']} "
                              f"{tail}{cached}")
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            counts["cached"] += bool(rec.get("cached"))
            bar.advance(1, info=", ".join(f"{v} {k}" for k, v in counts.items() if v))

        outcomes = run_bench(plan, catalog, plugins, use_cache=not fresh, executor=ex, progress=cell_done,
                             debug=_debug_now())
    records = [o.record for o in outcomes]
    out_dir = write_report(out, outcomes, title=f"invertkit bench '{matrix_name}'" + (" — adaptive attackers" if adaptive else ""),
                           references=_private_references(catalog, plugins, records), command=shlex.join(sys.argv))
    plugins.notify("invertkit_bench_end", records=records, out_dir=str(out_dir))
    _print_matrix(records)
    failed = [r for r in records if r["status"] == "failed"]
    click.echo(f"wrote {out_dir}/results.jsonl, results.csv, results.md, report.html")
    click.echo(f"bench finished in {time.perf_counter() - t0:.1f} s "
               f"({sum(r['status'] == 'ok' for r in records)} ok, {len(plan.skipped)} skipped, {len(failed)} failed)")
    if failed:
        first = failed[0]
        raise InvertkitError(f"{len(failed)} of {len(plan.runnable)} cells failed (first: {first['attack']} x "
                             f"{first['defense']} x {first['target']}: {first['reason']}); see {out_dir}/results.jsonl")


def _private_references(catalog: Any, plugins: Any, records: list[dict[str, Any]]) -> dict[str, tuple]:
    """Each target with a finished cell -> its private training split (images, labels, dataset classes): the
    evaluator's side the report shows beside the reconstructions. A target whose scenario cannot be loaded
    here is left out (a note on stderr); its reconstructions are shown alone."""
    from invertkit.core import progress
    from invertkit.core.bench.runner import load_target

    refs: dict[str, tuple] = {}
    for t in dict.fromkeys(r["target"] for r in records if r["status"] == "ok"):
        try:
            _, scenario = load_target(catalog, plugins, t)
        except Exception as exc:  # noqa: BLE001 - the report is still written, without these images
            progress.warn(f"note: the report shows no private images of {t}: {type(exc).__name__}: {exc}")
            continue
        refs[t] = (*scenario.split.private_train, scenario.split.private_classes)
    return refs


@cli.command("train")
@quiet_option
@click.argument("what", type=click.Choice(["all", "target", "eval", "prior"]), default="all")
@click.option("--preset", "preset_name", default="digits", show_default=True, help="Preset in registry.toml.")
@click.option("--registry", "registry_path", type=click.Path())
def train_cmd(what: str, preset_name: str, registry_path: str | None) -> None:
    """Train (or load from the cache) a preset's target, evaluation model and prior, seeded as the preset says.

    Models are content-addressed by recipe and data: a re-run loads them; an interrupted classifier
    training resumes from its last finished epoch."""
    from invertkit.core.zoo.scenario import build_scenario, fingerprint, load_split, trained_classifier

    plugins = _plugins()
    catalog = _catalog(registry_path)
    t0 = time.perf_counter()
    if what in ("target", "eval"):  # one classifier only: the prior (which may need the target) is not trained
        preset = catalog.preset(preset_name)
        split = load_split(plugins, preset)
        recipe = getattr(preset, what)
        _, f, key = trained_classifier(plugins, recipe, split, fingerprint(*split.private_train, *split.private_test),
                                       what, scenario=preset_name)
        _echo_classifier(preset_name, what, recipe.arch, f, len(split.private_test[0]), key)
        click.echo(f"done in {time.perf_counter() - t0:.1f} s (cache: models are re-used on the next run)")
        return
    sc = build_scenario(preset_name, catalog, plugins)
    facts = {"target": sc.facts["target"], "eval": sc.facts["eval"], "prior": sc.facts["prior"]}
    for part in (["target", "eval", "prior"] if what == "all" else [what]):
        f = facts[part]
        if part == "prior" and sc.preset.prior is None:
            click.echo(f"{preset_name} has no prior (nothing to train)")
        elif part == "prior":
            click.echo(f"{preset_name} prior ({sc.preset.prior.plugin}): trained in {f.get('seconds', float('nan')):.1f} s "
                       f"[key {sc.keys['prior']}]")
        else:
            _echo_classifier(preset_name, part, getattr(sc.preset, part).arch, f, len(sc.split.private_test[0]),
                             sc.keys[part])
    click.echo(f"done in {time.perf_counter() - t0:.1f} s (cache: models are re-used on the next run)")


def _echo_classifier(preset: str, part: str, arch: str, facts: dict, n_test: int, key: str) -> None:
    click.echo(f"{preset} {part} ({arch}): test accuracy {facts['test_acc']:.4f} on {n_test} held-out private images, "
               f"trained in {facts['train_seconds']:.1f} s [key {key}]")


@cli.command("export-onnx")
@click.argument("target")
@click.argument("path", type=click.Path())
@click.option("--registry", "registry_path", type=click.Path())
def export_onnx_cmd(target: str, path: str, registry_path: str | None) -> None:
    """Export a torch TARGET's network to an ONNX file at PATH (usable by the onnx backend)."""
    from invertkit.core.bench.runner import load_target
    from invertkit.core.errors import UsageError
    from invertkit.plugins.targets.onnx_backend import export_onnx

    plugins = _plugins()
    catalog = _catalog(registry_path)
    spec = catalog.target(target)
    if spec.backend != "torch":
        raise UsageError(f"target '{target}' uses backend '{spec.backend}'; only torch targets can be exported")
    t, scenario = load_target(catalog, plugins, target)
    from invertkit.core.interfaces.target import TorchTarget

    assert isinstance(t, TorchTarget)
    export_onnx(t._net, path, scenario.image_shape)
    click.echo(f"wrote {path}")


def _add_plugin_commands() -> None:
    """Plugins' own commands. Only the modules that define the hook are imported (the plugin index says which),
    so ``--help`` stays fast."""
    from invertkit.core.plugins import get_plugins

    try:
        plugins = get_plugins(lazy=True)
        plugins.load_implementers("invertkit_register_commands")
        plugins.pm.hook.invertkit_register_commands(cli=cli)
    except Exception as exc:  # noqa: BLE001 - a broken plugin command must not break the CLI
        click.echo(f"warning: a plugin failed to add commands: {exc}", err=True)


def main(argv: list[str] | None = None) -> None:
    _add_plugin_commands()
    cli.main(args=argv, prog_name="invertkit")


if __name__ == "__main__":
    main(sys.argv[1:])
