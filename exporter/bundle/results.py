# SPDX-License-Identifier: Apache-2.0
"""What commands leave in a bundle besides its graphs: the build's report (report.json, report.md) and the
timings of `bench` (bench/bench.json, bench.md, bench.png), each file written whole."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import ExporterError
from .files import inside, read_json, write_bytes, write_json, write_text
from .layout import BENCH_DIR, BENCH_JSON, BENCH_MD, BENCH_PNG, REPORT_JSON, REPORT_MD


def write_reports(bundle: Path, record: dict[str, Any], markdown: str) -> None:
    """The build's report as report.json (`record`) and report.md (`markdown`)."""
    write_json(bundle / REPORT_JSON, record, bundle)
    write_text(bundle / REPORT_MD, markdown, bundle)


def bench_folder(bundle: Path) -> Path:
    return bundle / BENCH_DIR


def write_bench(bundle: Path, record: dict[str, Any], markdown: str, png: bytes) -> None:
    """bench/bench.json, bench.md and bench.png."""
    folder = inside(bundle, (BENCH_DIR,), create=True)  # a real folder of the bundle, never a link elsewhere
    write_json(folder / BENCH_JSON, record, bundle)
    write_text(folder / BENCH_MD, markdown, bundle)
    write_bytes(folder / BENCH_PNG, png, bundle)


def read_bench(bundle: Path) -> Optional[dict]:
    """What `bench` last measured with `bundle` (its bench/bench.json), or None when it has not been timed or
    that file is unreadable (bench/ is outside the file hashes: a report quotes it, it does not rely on it)."""
    try:
        data = read_json(bench_folder(bundle) / BENCH_JSON, bundle)
    except (OSError, ValueError, ExporterError):
        return None
    return data if isinstance(data, dict) and {"machine", "rows"} <= set(data) else None
