# SPDX-License-Identifier: Apache-2.0
"""report.md: the answer to "can I ship this?", top to bottom, rendered from a `Report`.

Verdict, what was built, parity per runtime (onnxruntime against PyTorch; every runtime against the
PyTorch references stored in the bundle, engines included), engine status per target, throughput,
and what was skipped and why.
"""
from __future__ import annotations

from ..bench import machine, results
from ..checks.compare import TWIN
from ..checks.parity import NEAR_TIE, Comparison, StoredComparison
from ..spec import BuildSpec
from .accuracy import table

ROW_HEAD = [
    "| graph | batch | samples | max abs | max rel | min cosine | top-1 agree | decisive (top-1 agree) | token flips | result |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def render(report) -> str:  # a verify.report.Report (which imports this module to render itself)
    spec = report.spec
    lines = [
        f"# {report.run_name}",
        "",
        *_weights_note(spec),
        f"**{'PASSED' if report.passed else 'FAILED'}** — {spec.model}, method `{spec.method}` "
        f"{_params(report.method_params)}, {spec.precision}, batch {spec.batch}, opset {spec.opset}",
        "",
        _verdict(report),
        "",
        *([f"Signature: {report.signature}", ""] if report.signature else []),
        "## What was built",
        "",
        f"Token schedule (tokens leaving each block): {report.schedule or 'dense'}  ",
        f"GMACs/image: {report.flops.gmacs:.3f} (dense {report.flops.dense_gmacs:.3f}, ratio {report.flops.ratio:.2f}x)",
        "",
        "### Graph checks",
        "",
    ]
    for graph, problems in report.lint.items():
        lines.append(f"- {graph}: " + ("clean (static shapes except batch; TensorRT 10.3 compatible)" if not problems else f"{len(problems)} problem(s)"))
        lines += [f"  - {p}" for p in problems]
    lines += ["", "### TensorRT-RTX parse + build (CPU; CI's stand-in for TensorRT)", ""]
    for graph, r in report.tensorrt_rtx.items():
        if r.status == "skipped":
            lines.append(f"- {graph}: skipped — {r.reason}")
        else:
            lines.append(f"- {graph}: {r.status} — {r.num_layers} layers, built in {r.build_seconds:.1f}s"
                         + (f"; {r.reason}" if r.reason else ""))
            lines += [f"  - {e}" for e in r.parse_errors]
    lines += [
        "",
        "## Parity against PyTorch, per runtime",
        "",
        "### onnxruntime (CPU), held-out photos + seeded random images, token choices compared",
        "",
        *ROW_HEAD,
        *(_row(c) for c in report.comparisons),
        "",
        *([f"Rows marked ({TWIN}) ran the export this build cut the graph from: the same nodes, also outputting the "
           "kept-token indices (which these rows compare anyway); the graph itself ran at the range's opt batch.", ""]
          if any(c.ran == TWIN for c in report.comparisons) else []),
        "Thresholds: " + report.thresholds,
        "",
        "### Every runtime on the PyTorch references stored in the bundle (references.npz)",
        "",
    ]
    stored = [*report.references, *(c for e in report.engines for c in e.comparisons)]
    if stored:
        lines += [
            "The same thresholds; a deployment graph has no kept-index outputs, so in fp16 the samples on which "
            f"a token choice's fp32 score margin is within {NEAR_TIE:g}x its fp16 error are left out (counted under 'left out').",
            "",
            "| runtime | " + ROW_HEAD[0][2:].replace("| result |", "| left out | result |"),
            "|---|" + ROW_HEAD[1][1:] + "---|",
            *(f"| {c.runtime} " + _row(c) for c in stored),
        ]
    else:
        lines.append("- none: the bundle has no references.npz")
    lines += ["", "## Engines per target", ""]
    if report.engines:
        lines += ["| engine | runtime | target | built on | build | size | status |", "|---|---|---|---|---|---|---|"]
        for e in report.engines:
            status = e.status + (f": {e.reason}" if e.reason else "")
            lines.append(f"| engines/{e.folder}/{e.engine} | {_label(e.runtime)} {e.runtime_version} | {e.target} | "
                         f"{e.gpu} | {e.build_seconds:.1f}s | {e.bytes / 1e6:.1f} MB | {status} |")
    else:
        lines.append("- none built: `python -m exporter engine <bundle> --runtime tensorrt` on the target GPU, or "
                     "`--runtime tensorrt-rtx --target sm86` for an RTX GPU from any x86-64 machine; "
                     "`./build_engine.sh` does the same with trtexec alone.")
    if report.quantized:  # an int8/fp8 build
        lines += ["", "## 8-bit graph on held-out images", "", *_quantized(report.quantized)]
    if report.accuracy:  # added by `verify --data`
        lines += ["", "## Accuracy on labelled images", "", table(report.accuracy)]
    lines += ["", "## Throughput", "", *_throughput(report.throughput), "", "## Skipped, and why", ""]
    lines += [f"- {s}" for s in _skipped(report)] or ["- nothing"]
    return "\n".join(lines) + "\n"


def _quantized(judged: dict) -> list[str]:
    """The judgement of `verify.quantized.judge`: accuracy per runtime, token-choice agreement per reduction."""
    if not judged["judged"]:
        return [judged["reason"]]
    lines = [f"{judged['images']} images not calibrated on; threshold: {judged['threshold']}.", "",
             "| runtime | top1 | top5 | same top-1 as PyTorch |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['top1']:.2f} | {r['top5']:.2f} | {r['same_top1_as_pytorch']:.2f} |"
              for name, r in judged["accuracy"].items()]
    if judged["token_choice_agreement"]:
        shares = ", ".join(f"{100 * a:.1f}%" for a in judged["token_choice_agreement"])
        lines += ["", f"Tokens kept as PyTorch fp32 keeps them, per reduction: {shares}."]
    for name, agreement in judged.get("token_choice_agreement_of", {}).items():  # the plugin graph's
        if agreement:
            shares = ", ".join(f"{100 * a:.1f}%" for a in agreement)
            lines += ["", f"{name}: tokens kept as PyTorch fp32 keeps them, per reduction: {shares}."]
    return lines


def _throughput(bench: "dict | None") -> list[str]:
    """What `bench` measured with this bundle (bench/bench.json), or how to measure it."""
    if not bench:
        return ["- Not measured yet: `python -m exporter bench <this bundle> [<its dense bundle>]` times every runtime "
                "present (onnxruntime, PyTorch, the engines that run here) into bench/; an engine on its GPU without "
                "the exporter: `./build_engine.sh fp16 time` (trtexec; its qps are batches/s, multiply by the batch "
                "for images/s)."]
    return [f"Measured by `python -m exporter bench` on {machine.summary(bench['machine'])} "
            "(bench/bench.md has the settings, bench/bench.png the plot):", "", results.table(bench["rows"]), "",
            *(f"- {note}" for note in results.notes(bench))]


def _weights_note(spec: BuildSpec) -> list[str]:
    """Random weights pass parity as well as trained ones: say so before the result."""
    if spec.weights != "random":
        return []
    return [
        f"> **Random weights** (seed {spec.seed}): this bundle checks the export, not a trained model; "
        "its logits mean nothing. Build with --weights pretrained or --weights PATH to deploy.",
        "",
    ]


def _verdict(report) -> str:
    """Two or three sentences: ship or not, and what was not shown."""
    graphs = sorted({c.graph for c in report.comparisons})
    out = []
    stored = " and on the PyTorch references stored in the bundle" if report.references else ""
    if report.passed:
        out.append(f"Ship the ONNX: {', '.join(graphs)} match PyTorch on onnxruntime (CPU){stored}, within the thresholds below.")
    else:
        out.append(f"Do not ship: {len(report.failures())} check(s) failed (details below).")
    ran = [e for e in report.engines if e.status in ("passed", "failed")]
    if ran:
        out.append("Engines checked on their GPU: " + ", ".join(f"{e.folder}/{e.engine} {e.status}" for e in ran) + ".")
    not_run = [e for e in report.engines if e.status not in ("passed", "failed")]
    if not report.engines:
        out.append("No engine has been built yet (see Engines per target).")
    elif not_run:
        out.append("Not run on their GPU here: " + ", ".join(f"{e.folder}/{e.engine}" for e in not_run)
                   + "; run `python -m exporter verify <bundle> --engine <target>` on the target.")
    return " ".join(out)


def _skipped(report) -> list[str]:
    items = [f"TensorRT-RTX check of {g}: {r.reason}" for g, r in report.tensorrt_rtx.items() if r.status == "skipped"]
    items += [f"engine {e.folder}/{e.engine}: {e.reason}" for e in report.engines if e.status in ("skipped", "built")]
    items += [f"**Warning:** {w}" for w in report.warnings()]
    items += [f"**Note:** {n}" for n in report.notes]
    return items


def _row(c: Comparison) -> str:
    """A comparison's table cells; a stored-reference row has one more, the samples left out."""
    flips = "—" if c.token_flips is None else str(c.token_flips)
    if c.replayed_flips:
        flips += f" ({c.replayed_flips} replayed)"
    result = "pass" if c.passed else "FAIL: " + "; ".join(c.failures)
    decisive = f"{c.decisive_top1_agreement:.1%}" if c.decisive else "—"
    extra = f" {c.left_out} |" if isinstance(c, StoredComparison) else ""
    return (
        f"| {c.named} | {c.batch} | {c.samples} | {c.max_abs:.3g} | {c.max_rel:.3g} | "
        f"{c.min_cosine:.6f} | {c.top1_agreement:.1%} | {c.decisive} ({decisive}) | {flips} |{extra} {result} |"
    )


def _label(runtime: str) -> str:
    return {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}.get(runtime, runtime)


def _params(params: dict) -> str:
    return " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
