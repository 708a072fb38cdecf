# SPDX-License-Identifier: Apache-2.0
"""The schedule file `search` writes and `build --method diffrate --schedule FILE` reads (JSON).

Fields (README, "DiffRate search"): format, model (timm name), img_size, tokens, depth, weights (as given) and
weights_sha256 (of the model's state dict: names, dtypes, shapes and bytes, so hub weights, a checkpoint and seeded
random weights are all identified), budget ({unit: GMACs, target}), prune_kept and merge_kept (class token
included, one per block), tokens_after (leaving each block), gmacs and dense_gmacs (counted), accuracy ({data,
images, top1, dense_top1} on the search images) and held_out (the same on --eval-data), settings, seed, comparison
(the baselines' rows) and command. A schedule is refused for any model but the one it was searched on, with other weights included.

`--schedule FILE` parses to the file's record (`pin`): a build's spec holds the schedule's content, not its path, so
its hash follows the content and the bundle needs the file no more (it keeps a copy, `bundle.layout.SCHEDULE`). A
spec of an older bundle holds the path; `counts_for` reads either.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExporterError

FORMAT = "exporter-diffrate-schedule/1"
REQUIRED = ("format", "model", "tokens", "depth", "weights_sha256", "budget", "prune_kept", "merge_kept")


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the state dict: every tensor's name, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_name(model: nn.Module) -> str:
    return str((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__)


def write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, **record}, indent=2) + "\n")


FIX = "Pass a file written by `python -m exporter search --method diffrate ... --out FILE`."
MAX_BYTES = 16 << 20  # a schedule file is a few kB; a larger one is no schedule


def read(path: Path | str) -> dict[str, Any]:
    """The schedule file at `path`, its required fields checked."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            text = f.read(MAX_BYTES + 1)
        if len(text) > MAX_BYTES:
            raise ExporterError(f"--schedule {path} is over {MAX_BYTES >> 20} MiB: no schedule file.", FIX)
        record = json.loads(text)
    except FileNotFoundError:
        raise ExporterError(f"--schedule {path} does not exist.", FIX) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExporterError(f"--schedule {path} is not a schedule file ({type(e).__name__}).", FIX) from None
    return checked(record, f"--schedule {path}")


def checked(record: Any, where: str) -> dict[str, Any]:
    """`record` (a parsed schedule file, or a bundle's copy) with its required fields checked; `where` names it."""
    missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
    if missing or record.get("format") != FORMAT:
        raise ExporterError(f"{where} is not a schedule file of format {FORMAT} (missing {', '.join(missing) or 'its format'}).", FIX)
    return record


def pin(text: str) -> dict[str, Any]:
    """The --schedule parameter: the file's record, what a build's spec holds (the model is checked on apply)."""
    return read(text)


def counts_for(schedule: str | dict[str, Any], model: nn.Module) -> tuple[list[int], list[int]]:
    """(prune_kept, merge_kept) of a schedule (its record, or the path of its file), refused unless it was searched
    on this model and these weights."""
    record = read(schedule) if isinstance(schedule, (str, Path)) else checked(schedule, "the schedule")
    where = f"--schedule {schedule}" if isinstance(schedule, (str, Path)) else "The schedule (--schedule)"
    name, depth = model_name(model), len(model.blocks)
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    searched = (record["model"], record["depth"], record["tokens"])
    if searched != (name, depth, tokens):
        raise ExporterError(
            f"{where} was searched on {record['model']} ({record['depth']} blocks, {record['tokens']} "
            f"tokens), not on {name} ({depth} blocks, {tokens} tokens).",
            f"Search a schedule for this model: python -m exporter search --method diffrate --model {name} ...",
        )
    if record["weights_sha256"] != weights_sha256(model):
        raise ExporterError(
            f"{where} was searched on other weights of {name} (weights {record.get('weights')!r}, "
            f"sha256 {record['weights_sha256'][:12]}...).",
            "Build with the weights it was searched on, search again for these, or pass its counts as "
            "--prune-kept/--merge-kept to use them anyway.",
        )
    return [int(v) for v in record["prune_kept"]], [int(v) for v in record["merge_kept"]]


def digest(record: dict[str, Any]) -> str:
    """sha256 of the record's content (canonical JSON: sorted keys, no spaces), whatever the file's layout."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def describe(record: dict[str, Any]) -> str:
    """One line for a schedule a model was reduced with (the reduced model's parameters, the reports)."""
    budget = record["budget"]
    return f"searched for {budget['target']:g} {budget['unit']} (sha256 {digest(record)[:12]}...)"


def summary(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) rows for `methods --schedule FILE`."""
    budget = record["budget"]
    rows = [
        ("model", f"{record['model']} (weights {record.get('weights')}, sha256 {record['weights_sha256'][:12]}...)"),
        ("budget", f"{budget['target']} {budget['unit']}"),
        ("prune_kept", ",".join(map(str, record["prune_kept"]))),
        ("merge_kept", ",".join(map(str, record["merge_kept"]))),
    ]
    if "tokens_after" in record:
        rows.append(("tokens leaving each block", " ".join(map(str, record["tokens_after"]))))
    if "gmacs" in record:
        rows.append(("GMACs", f"{record['gmacs']:.4f} (dense {record['dense_gmacs']:.4f})"))
    for key in ("accuracy", "held_out"):
        if record.get(key):
            a = record[key]
            rows.append((key.replace("_", "-") + " top-1", f"{a['top1']:.2f}% (dense {a['dense_top1']:.2f}%) on {a['images']} "
                         f"images of {a['data']}"))
    if "seed" in record:
        rows.append(("seed", str(record["seed"])))
    return rows
