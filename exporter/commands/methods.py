# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter methods`: the token-reduction methods and their parameters; with a model, each method's
token schedule and GMACs."""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from ..errors import ExporterError
from ..methods import apply_method, get_method, list_methods
from ..methods import schedule as schedule_file
from ..methods.flops import count_gmacs
from ..models import create_model, input_size
from ..options import parsed_params


def methods(out: Console, model_name: Optional[str], method: Optional[str], img_size: Optional[int],
            given: dict[str, str]) -> None:
    """The table on `out`: without `model_name`, every method (or `method`) with its parameters; with it, the
    model built with random weights and each method applied with the `given` parameters (unparsed text)."""
    names = [method] if method else list_methods()
    chosen = [get_method(n) for n in names]
    if model_name is None and "schedule" in given:  # a searched schedule file, as it was searched
        table = Table("field", "value", title=given["schedule"])
        for field, value in schedule_file.summary(schedule_file.read(given["schedule"])):
            table.add_row(field, value)
        out.print(table)
        return
    if model_name is None:
        table = Table("method", "parameters (default)", "what it does")
        for m in chosen:
            table.add_row(m.name, "\n".join(f"{p.flag} ({p.default}): {p.help}" for p in m.params) or "—", m.summary)
        out.print(table)
        return
    dense = create_model(model_name, "random", 0, img_size)
    size = input_size(dense)
    dense_gmacs = count_gmacs(dense, size)
    table = Table("method", "parameters", "tokens leaving each block", "GMACs", "vs dense")
    for m in chosen:
        params = parsed_params(m, given)
        if method is None:  # each method takes the parameters it has; the others are another method's
            params = {k: v for k, v in params.items() if k in {p.name for p in m.params}}
        try:
            model = apply_method(dense, m.name, **params)
        except ExporterError as e:
            if method is not None:
                raise
            table.add_row(m.name, "—", f"[yellow]{e.problem}[/yellow]", "—", "—")
            continue
        gmacs = count_gmacs(model, size)
        schedule = model.schedule or ["dense"]
        resolved = model.params
        table.add_row(
            m.name,
            ", ".join(f"{k}={v}" for k, v in resolved.items()) or "—",
            " ".join(map(str, schedule)),
            f"{gmacs:.3f}",
            f"{dense_gmacs / gmacs:.2f}x",
        )
    out.print(f"{model_name} at {size[0]}x{size[1]}: dense {dense_gmacs:.3f} GMACs", markup=False)
    out.print(table)
