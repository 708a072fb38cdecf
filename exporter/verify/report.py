"""report.md: the answer to "can I ship this?", top to bottom, rendered from report.json's content.

Verdict, what was built, parity per runtime (onnxruntime against PyTorch; every runtime against the
PyTorch references stored in the bundle, engines included), engine status per target, throughput,
and what was skipped and why.
"""
from __future__ import annotations

ROW_HEAD = [
    "| graph | batch | samples | max abs | max rel | min cosine | top-1 agree | decisive (top-1 agree) | token flips | result |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def render(report: dict) -> str:
    spec = report["spec"]
    engines = report.get("engines", [])
    lines = [
        f"# {report['run_name']}",
        "",
        *_weights_note(spec),
        f"**{'PASSED' if report['passed'] else 'FAILED'}** — {spec['model']}, method `{spec['method']}` "
        f"{_params(report.get('method_params', spec['method_params']))}, {spec['precision']}, batch {spec['batch']}, opset {spec['opset']}",
        "",
        *_verdict(report),
        "",
        "## What was built",
        "",
        f"Token schedule (tokens leaving each block): {report.get('schedule') or 'dense'}  ",
        f"GMACs/image: {report['flops']['gmacs']:.3f} (dense {report['flops']['dense_gmacs']:.3f}, "
        f"ratio {report['flops']['ratio']:.2f}x)",
        "",
    ]
    lint = report.get("lint", {})
    lines += ["### Graph checks", ""]
    for graph, problems in lint.items():
        lines.append(f"- {graph}: " + ("clean (static shapes except batch; TensorRT 10.3 compatible)" if not problems else f"{len(problems)} problem(s)"))
        lines += [f"  - {p}" for p in problems]
    lines += ["", "### TensorRT-RTX parse + build (CPU; CI's stand-in for TensorRT)", ""]
    for graph, r in report.get("tensorrt_rtx", {}).items():
        if r["status"] == "skipped":
            lines.append(f"- {graph}: skipped — {r['reason']}")
        else:
            lines.append(
                f"- {graph}: {r['status']} — {r.get('num_layers')} layers, built in {r.get('build_seconds', 0):.1f}s"
                + (f"; {r['reason']}" if r.get("reason") else "")
            )
            lines += [f"  - {e}" for e in r.get("parse_errors") or []]
    lines += [
        "",
        "## Parity against PyTorch, per runtime",
        "",
        "### onnxruntime (CPU), held-out photos + seeded random images, token choices compared",
        "",
        *ROW_HEAD,
    ]
    lines += [_row(c) for c in report["comparisons"]]
    lines += ["", "Thresholds: " + report["thresholds"], ""]
    stored = report.get("references", [])
    lines += ["### Every runtime on the PyTorch references stored in the bundle (references.npz)", ""]
    if stored or any(e.get("comparisons") for e in engines):
        lines += [
            "The same thresholds; a deployment graph has no kept-index outputs, so in fp16 the samples on which "
            "a token choice's fp32 score margin is within 2x its fp16 error are left out (counted under 'left out').",
            "",
            "| runtime | " + ROW_HEAD[0][2:].replace("| result |", "| left out | result |"),
            "|---|" + ROW_HEAD[1][1:] + "---|",
        ]
        rows = list(stored) + [c for e in engines for c in e.get("comparisons", [])]
        lines += [f"| {c['runtime']} " + _row(c, left_out=True) for c in rows]
    else:
        lines.append("- none: the bundle has no references.npz")
    lines += ["", "## Engines per target", ""]
    if engines:
        lines += ["| engine | runtime | target | built on | build | size | status |", "|---|---|---|---|---|---|---|"]
        for e in engines:
            status = e["status"] + (f": {e['reason']}" if e.get("reason") else "")
            lines.append(
                f"| engines/{e['folder']}/{e['engine']} | {_label(e['runtime'])} {e['runtime_version']} | {e['target']} | "
                f"{e['gpu']} | {e['build_seconds']:.1f}s | {e['bytes'] / 1e6:.1f} MB | {status} |"
            )
    else:
        lines.append("- none built: `python -m exporter engine <bundle> --runtime tensorrt` on the target GPU, or "
                     "`--runtime tensorrt-rtx --target sm86` for an RTX GPU from any x86-64 machine; "
                     "`./build_engine.sh` does the same with trtexec alone.")
    if report.get("accuracy"):  # added by `verify --data`
        from .accuracy import table

        lines += ["", "## Accuracy on labelled images", "", table(report["accuracy"])]
    lines += [
        "",
        "## Throughput",
        "",
        "- Not measured by build/verify. onnxruntime on the CPU: `python -m exporter bench`; an engine on its GPU: "
        "`./build_engine.sh fp16 time` (trtexec; its qps are batches/s, multiply by the batch for images/s).",
        "",
        "## Skipped, and why",
        "",
    ]
    skipped = _skipped(report)
    lines += [f"- {s}" for s in skipped] or ["- nothing"]
    return "\n".join(lines) + "\n"


def _weights_note(spec: dict) -> list[str]:
    """Random weights pass parity as well as trained ones: say so before the result."""
    if spec["weights"] != "random":
        return []
    return [
        f"> **Random weights** (seed {spec['seed']}): this bundle checks the export, not a trained model; "
        "its logits mean nothing. Build with --weights pretrained or --weights PATH to deploy.",
        "",
    ]


def _verdict(report: dict) -> list[str]:
    """Two or three sentences: ship or not, and what was not shown."""
    comparisons = report["comparisons"]
    graphs = sorted({c["graph"] for c in comparisons})
    failed = [c for c in comparisons + report.get("references", []) if not c["passed"]]
    engines = report.get("engines", [])
    ran = [e for e in engines if e["status"] in ("passed", "failed")]
    out = []
    stored = " and on the PyTorch references stored in the bundle" if report.get("references") else ""
    if report["passed"]:
        out.append(f"Ship the ONNX: {', '.join(graphs)} match PyTorch on onnxruntime (CPU){stored}, within the thresholds below.")
    else:
        out.append(f"Do not ship: {len(failed)} parity check(s) or graph/engine checks failed (details below).")
    if ran:
        out.append("Engines checked on their GPU: " + ", ".join(f"{e['folder']}/{e['engine']} {e['status']}" for e in ran) + ".")
    not_run = [e for e in engines if e["status"] not in ("passed", "failed")]
    if not engines:
        out.append("No engine has been built yet (see Engines per target).")
    elif not_run:
        out.append("Not run on their GPU here: " + ", ".join(f"{e['folder']}/{e['engine']}" for e in not_run)
                   + "; run `python -m exporter verify <bundle> --engine <target>` on the target.")
    return [" ".join(out)]


def _skipped(report: dict) -> list[str]:
    items = [f"TensorRT-RTX check of {g}: {r['reason']}" for g, r in report.get("tensorrt_rtx", {}).items() if r["status"] == "skipped"]
    items += [f"engine {e['folder']}/{e['engine']}: {e['reason']}" for e in report.get("engines", [])
              if e["status"] in ("skipped", "built")]
    items += [f"**Warning:** {w}" for w in warnings(report)]
    items += [f"**Note:** {n}" for n in report.get("notes", [])]
    return items


def _row(c: dict, left_out: bool = False) -> str:
    flips = "—" if c["token_flips"] is None else str(c["token_flips"])
    if c.get("replayed_flips"):
        flips += f" ({c['replayed_flips']} replayed)"
    result = "pass" if c["passed"] else "FAIL: " + "; ".join(c["failures"])
    decisive = f"{c['decisive_top1_agreement']:.1%}" if c["decisive"] else "—"
    extra = f" {c.get('left_out', 0)} |" if left_out else ""
    return (
        f"| {c['graph']} | {c['batch']} | {c['samples']} | {c['max_abs']:.3g} | {c['max_rel']:.3g} | "
        f"{c['min_cosine']:.6f} | {c['top1_agreement']:.1%} | {c['decisive']} ({decisive}) | {flips} |{extra} {result} |"
    )


def _label(runtime: str) -> str:
    return {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}.get(runtime, runtime)


def warnings(report: dict) -> list[str]:
    """Checks that passed without proving much, one line each (graph, batch: why)."""
    rows = report["comparisons"] + report.get("references", [])
    rows += [c for e in report.get("engines", []) for c in e.get("comparisons", [])]
    return [f"{c['graph']} at batch {c['batch']}" + (f" ({c['runtime']})" if c.get("runtime") else "") + f": {w}"
            for c in rows for w in c.get("warnings", [])]


def _params(params: dict) -> str:
    return " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
