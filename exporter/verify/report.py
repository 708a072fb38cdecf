"""report.md: the verification tables a reviewer reads, rendered from report.json's content."""
from __future__ import annotations


def render(report: dict) -> str:
    spec = report["spec"]
    lines = [
        f"# {report['run_name']}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}** — {spec['model']}, method `{spec['method']}` "
        f"{_params(report.get('method_params', spec['method_params']))}, {spec['precision']}, batch {spec['batch']}, opset {spec['opset']}",
        "",
        f"Token schedule (tokens leaving each block): {report.get('schedule') or 'dense'}  ",
        f"GMACs/image: {report['flops']['gmacs']:.3f} (dense {report['flops']['dense_gmacs']:.3f}, "
        f"ratio {report['flops']['ratio']:.2f}x)",
        "",
        "## Parity against PyTorch fp32 (held-out photos + seeded random images)",
        "",
        "| graph | batch | samples | max abs | max rel | min cosine | top-1 agree | decisive (top-1 agree) | token flips | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["comparisons"]:
        flips = "—" if c["token_flips"] is None else str(c["token_flips"])
        if c.get("replayed_flips"):
            flips += f" ({c['replayed_flips']} replayed)"
        result = "pass" if c["passed"] else "FAIL: " + "; ".join(c["failures"])
        decisive = f"{c['decisive_top1_agreement']:.1%}" if c["decisive"] else "—"
        lines.append(
            f"| {c['graph']} | {c['batch']} | {c['samples']} | {c['max_abs']:.3g} | {c['max_rel']:.3g} | "
            f"{c['min_cosine']:.6f} | {c['top1_agreement']:.1%} | {c['decisive']} ({decisive}) | {flips} | {result} |"
        )
    lines += ["", "Thresholds: " + report["thresholds"], ""]
    if warnings(report):
        lines += [f"**Warning:** {w}  " for w in warnings(report)] + [""]
    lint = report.get("lint", {})
    lines += ["## Graph checks", ""]
    for graph, problems in lint.items():
        lines.append(f"- {graph}: " + ("clean (static shapes except batch; TensorRT 10.3 compatible)" if not problems else f"{len(problems)} problem(s)"))
        lines += [f"  - {p}" for p in problems]
    lines += ["", "## TensorRT-RTX parse + build (CPU; CI's stand-in for TensorRT)", ""]
    for graph, r in report.get("tensorrt_rtx", {}).items():
        if r["status"] == "skipped":
            lines.append(f"- {graph}: skipped — {r['reason']}")
        else:
            lines.append(
                f"- {graph}: {r['status']} — {r.get('num_layers')} layers, built in {r.get('build_seconds', 0):.1f}s"
                + (f"; {r['reason']}" if r.get("reason") else "")
            )
            lines += [f"  - {e}" for e in r.get("parse_errors") or []]
    if report.get("accuracy"):  # added by `verify --data`
        from .accuracy import table

        lines += ["", "## Accuracy on labelled images", "", table(report["accuracy"])]
    return "\n".join(lines) + "\n"


def warnings(report: dict) -> list[str]:
    """Checks that passed without proving much, one line each (graph, batch: why)."""
    return [f"{c['graph']} at batch {c['batch']}: {w}" for c in report["comparisons"] for w in c.get("warnings", [])]


def _params(params: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
