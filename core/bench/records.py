"""What a bench's records read as: the fixed columns and the headline metrics, values formatted for a table,
the attack x defense matrix of one target, the label of each defense configuration, and the environment a
report was written in. Shared by the text reports (:mod:`~invertkit.core.bench.report`) and the HTML report
(:mod:`~invertkit.core.bench.html`); nothing here writes a file or any markup."""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from invertkit.core.bench.runner import METRIC_KEYS

RECORD_KEYS = ("attack", "defense", "target", "mode", "status", "reason")
COLUMNS = (*RECORD_KEYS, *METRIC_KEYS)
#: the headline matrices: one opinion (the evaluation model), the independent judge, and where they disagree
HEADLINES = (("acc@1", "attack acc@1 (evaluation model)"),
             ("judge_acc", "judge's acc@1 (ensemble of other evaluation models)"),
             ("adversarial_rate", "adversarial rate (accepted by the evaluation model, rejected by the judge)"),
             ("nn_pixel_acc", "nearest private training image (pixel space) is the attacked identity"),
             ("attr_acc", "sensitive-attribute accuracy (attribute inference on records)"),
             ("attr_f1", "sensitive-attribute macro F1 (attribute inference on records)"),
             ("sar1@1e-3", "success attack rate at FMR 1e-3, type I (template inversion)"),
             ("transfer_sar1@1e-3", "transfer SAR at FMR 1e-3 on the second recogniser (template inversion)"))


def fmt(v: Any, key: str = "") -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if key == "queries":
        return f"{int(v):,}"
    if key == "seconds":
        return f"{v:.1f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def columns(records: list[dict[str, Any]]) -> tuple[str, ...]:
    """The fixed columns, then any further metric keys the cells report, in first-seen order."""
    extra = [k for r in records for k in r.get("metrics", {}) if k not in COLUMNS]
    return COLUMNS + tuple(dict.fromkeys(extra))


def flat(record: dict[str, Any], cols: tuple[str, ...] = COLUMNS) -> dict[str, Any]:
    row = {k: record.get(k, "deployed" if k == "mode" else "") for k in RECORD_KEYS}
    for k in cols[len(RECORD_KEYS):]:
        row[k] = record.get("metrics", {}).get(k, "")
    return row


def headlines(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The headline metrics some cell reports, in :data:`HEADLINES` order."""
    seen = {k for r in records for k in r.get("metrics", {})}
    return [(k, label) for k, label in HEADLINES if k in seen] or [HEADLINES[0]]


def skips(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["status"] in ("skipped", "failed")]


def matrix(records: list[dict[str, Any]], key: str = "acc@1") -> tuple[list[str], list[str], dict]:
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    defenses = list(dict.fromkeys(r["defense"] for r in records))
    cell = {}
    for r in records:
        cell[(r["target"], r["attack"], r["defense"])] = r
    return attacks, defenses, cell


def cell_text(r: dict[str, Any] | None, key: str) -> str:
    if r is None:
        return ""
    if r["status"] == "skipped":
        return "skipped"
    if r["status"] == "failed":
        return "FAILED"
    return fmt(r["metrics"].get(key), key)


def ok_value(r: dict[str, Any], key: str) -> float | None:
    """Metric ``key`` of an ok cell as a finite float; ``None`` for a skipped or failed cell, or no finite value."""
    v = r.get("metrics", {}).get(key) if r.get("status") == "ok" else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def natural_acc(records: list[dict[str, Any]], t: str, d: str) -> float | None:
    """The natural accuracy of target ``t`` under defense ``d``: the first ok cell's finite value, else ``None``."""
    vals = [v for r in records
            if r["target"] == t and r["defense"] == d and (v := ok_value(r, "natural_acc")) is not None]
    return vals[0] if vals else None


def defense_labels(records: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(defense, its config as JSON) -> the label of that point: the defense's name, with the options that differ
    between its configurations where the same defense appears at more than one strength."""
    configs: dict[str, dict[str, dict]] = {}
    for r in records:
        if r.get("status") != "ok":  # a skipped or failed cell has no configuration to tell apart
            continue
        cfg = r.get("defense_config") or {}
        configs.setdefault(r["defense"], {})[json.dumps(cfg, sort_keys=True, default=str)] = cfg
    out = {}
    for d, by_json in configs.items():
        for js, cfg in by_json.items():
            if len(by_json) == 1:
                out[d, js] = d
                continue
            differ = [k for k in cfg if len({json.dumps(c.get(k), sort_keys=True, default=str)
                                             for c in by_json.values()}) > 1]
            out[d, js] = f"{d} (" + ", ".join(f"{k}={fmt(cfg.get(k))}" for k in differ) + ")"
    return out


def environment(records: list[dict[str, Any]], command: str | None = None) -> dict[str, str]:
    """What the report shows as its environment: versions, the report host's device, the cells' seeds, the time
    written and (given) the command line."""
    import datetime
    import platform

    import invertkit

    try:
        import torchvision
        tv = torchvision.__version__
    except Exception:  # noqa: BLE001 - a version line is not worth failing a report
        tv = "–"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        device = "cpu"
    seeds = sorted({r["seed"] for r in records if r.get("seed") is not None}, key=str)
    computed = sorted({str(r["invertkit"]) for r in records if r.get("invertkit")})
    env = {
        "invertkit": invertkit.__version__ + (f" (cells computed by {', '.join(computed)})"
                                              if computed and computed != [invertkit.__version__] else ""),
        "torch": torch.__version__,
        "torchvision": tv,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "device (report host)": device,
        "seeds": ", ".join(map(str, seeds)) or "–",
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if command:
        env["command"] = command
    return env
