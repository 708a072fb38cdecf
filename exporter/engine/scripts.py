# SPDX-License-Identifier: Apache-2.0
"""reproduce.sh and build_engine.sh: every bundle says how to rebuild it, and its engines without our package.

- `reproduce.sh`: the exact exporter command that built the bundle (and the engine commands, commented).
- `build_engine.sh [fp16|fp32|plugins] [build|time]`: trtexec command lines for TensorRT 10 (JetPack 6:
  10.3, JetPack 7: 10.13) and TensorRT 11. Their flags differ: 10.x needs `--stronglyTyped` (an fp16
  graph is then built as fp16, no `--fp16`); 11.x is strongly typed by default, marks `--stronglyTyped`
  deprecated and has no `--fp16`; 11.x uses CUDA graphs, no data transfers and spin-wait by default,
  10.x needs `--useCudaGraph --noDataTransfers --useSpinWait` for the same timing. Both take the
  batch profile as `--minShapes/--optShapes/--maxShapes=input:BxCxHxW` and the plugin library as
  `--dynamicPlugins` (it exports getCreators).

The command lines are data (`trtexec_commands`) rendered one per `case` arm, so tests parse the
script back with shlex and hold every flag to the table of flags each trtexec version accepts
(data/trtexec_flags.json, read from NVIDIA/TensorRT's samples/common/sampleOptions.cpp at v10.3.0,
v10.13.3 and v11.1).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from .. import __version__
from ..bundle import BUILD_ENGINE, GRAPHS, PLUGIN_LIBRARY, REPRODUCE, TRTEXEC_DIR, choice_of, has_plugins, recorded_input, write_text
from ..spec import BuildSpec

TRTEXEC_FLAGS = Path(__file__).with_name("data") / "trtexec_flags.json"
MAJORS = ("10", "11")
# Which trtexec versions of the table each script arm must satisfy.
TABLE_VERSIONS = {"10": ("10.3", "10.13"), "11": ("11.1",)}
_ARM = re.compile(r"^\s*(\d+):([\w-]+):(\w+)\)\s*(.*?)\s*;;\s*$")


def trtexec_flags() -> dict:
    return json.loads(TRTEXEC_FLAGS.read_text())


def trtexec_commands(graph: str, input_name: str, input_shape: tuple[int, ...], batch: tuple[int, int, int],
                     plugins: bool) -> dict[tuple[str, str], list[str]]:
    """{(TensorRT major, 'build'|'time'): argv} for one graph file of the bundle."""
    engine = f"{TRTEXEC_DIR}/{graph.removesuffix('.onnx')}.trt$TRT_MAJOR.engine"
    dims = ["x".join(str(d) for d in (b, *input_shape)) for b in batch]
    profile = [] if batch[0] == batch[2] else [
        f"--minShapes={input_name}:{dims[0]}", f"--optShapes={input_name}:{dims[1]}", f"--maxShapes={input_name}:{dims[2]}"]
    shapes = [] if batch[0] == batch[2] else [f"--shapes={input_name}:{dims[1]}"]
    plugin = [f"--dynamicPlugins={PLUGIN_LIBRARY}"] if plugins else []
    build = [f"--onnx={graph}", *profile, *plugin, f"--timingCacheFile={TRTEXEC_DIR}/timing.cache",
             f"--saveEngine={engine}", "--skipInference"]
    time = [f"--loadEngine={engine}", *shapes, *plugin, "--warmUp=200", "--duration=3", "--percentile=50,90,95,99"]
    return {
        ("10", "build"): ["$TRTEXEC", build[0], "--stronglyTyped", *build[1:]],
        ("11", "build"): ["$TRTEXEC", *build],
        ("10", "time"): ["$TRTEXEC", *time, "--useCudaGraph", "--noDataTransfers", "--useSpinWait"],
        ("11", "time"): ["$TRTEXEC", *time],
    }


def flag_problems(argv: list[str], major: str) -> list[str]:
    """What in a trtexec command line the trtexec versions of `major` would not accept as meant: a flag
    missing from their parser, one they mark deprecated (a no-op), or an argument that is not --flag[=value]."""
    table = trtexec_flags()
    problems = []
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0]
        if not re.fullmatch(r"--[A-Za-z0-9]+", flag):
            problems.append(f"{arg}: not a --flag[=value] argument")
            continue
        for version in TABLE_VERSIONS[major]:
            if flag not in table[version]["flags"]:
                problems.append(f"{flag}: trtexec {version} has no such flag")
            elif flag in table[version]["deprecated"]:
                problems.append(f"{flag}: deprecated (a no-op) in trtexec {version}")
    return problems


def _sh(argv: list[str]) -> str:
    """shlex.join, but "$TRTEXEC" and $TRT_MAJOR stay expandable (double quotes)."""
    out = []
    for a in argv:
        if "$" in a:
            out.append('"' + a + '"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def build_engine_script(spec: BuildSpec, io: dict) -> str:
    """build_engine.sh for the graphs `io` (the manifest's inputs/outputs per graph file) describes."""
    graphs = list(io)
    arms = []
    for name in graphs:
        choice = choice_of(name)
        input_name, shape = recorded_input(io, name)
        commands = trtexec_commands(name, input_name, shape, spec.batch.as_tuple(), has_plugins(name))
        arms += [f"  {major}:{choice}:{action}) {_sh(argv)} ;;" for (major, action), argv in commands.items()]
    default = "fp16" if GRAPHS["fp16"] in graphs else "fp32"
    return "\n".join([
        "#!/usr/bin/env bash",
        "# Build (and time) a TensorRT engine from this bundle with trtexec alone, no exporter needed.",
        f"# Usage: ./{BUILD_ENGINE} [{'|'.join(c for c, f in GRAPHS.items() if f in graphs)}] [build|time]   (default: {default} build)",
        "# trtexec: TRTEXEC=/path/to/trtexec (JetPack: /usr/src/tensorrt/bin/trtexec); the TensorRT major version",
        "# is read from its banner ('TensorRT v100300' -> 10), or set TRT_MAJOR=10|11.",
        "# TensorRT 10 (JetPack 6: 10.3, JetPack 7: 10.13): strongly typed on request (--stronglyTyped), so the fp16",
        "# graph builds as fp16 without --fp16. TensorRT 11: strongly typed always; --fp16 no longer exists.",
        f"# Batch profile {spec.batch}. Engines go to {TRTEXEC_DIR}/ (outside the bundle's file hashes).",
        "# The exporter's own build (content-cached, recorded in engines/<target>-<runtime>/engine.json):",
        "#   python -m exporter engine . --runtime tensorrt",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        f'GRAPH="${{1:-{default}}}"',
        'ACTION="${2:-build}"',
        'if [ -z "${TRT_MAJOR:-}" ]; then',
        '  TRT_MAJOR="$( ("$TRTEXEC" --help 2>&1 || true) | sed -n \'s/.*TensorRT v\\([0-9]*\\)[0-9]\\{4\\}.*/\\1/p\' | head -n 1)"',
        "fi",
        f"mkdir -p {TRTEXEC_DIR}",
        'case "$TRT_MAJOR:$GRAPH:$ACTION" in',
        *arms,
        '  *) echo "build_engine.sh: no command for TensorRT ${TRT_MAJOR:-unknown} / graph $GRAPH / $ACTION;'
        ' pass [graph] [build|time] and set TRT_MAJOR=10 or 11" >&2; exit 2 ;;',
        "esac",
        "",
    ])


def parse_build_engine(text: str) -> dict[tuple[str, str, str], list[str]]:
    """{(major, graph, action): argv} read back from a build_engine.sh (the tests' view of it)."""
    found = {}
    for line in text.splitlines():
        m = _ARM.match(line)
        if m:
            found[m.group(1), m.group(2), m.group(3)] = shlex.split(m.group(4))
    return found


def reproduce_script(spec: BuildSpec, command: str, commit: str) -> str:
    return "\n".join([
        "#!/usr/bin/env sh",
        f"# Rebuild this bundle: exporter {__version__}, git {commit}. Building the same spec gives byte-identical ONNX.",
        f"# Spec hash {spec.short_hash} (the bundle's name ends with it).",
        "set -eu",
        command,
        "# Engines (see build_engine.sh for trtexec without the exporter):",
        "#   python -m exporter engine artifacts/<run> --runtime tensorrt                    # on the target GPU",
        "#   python -m exporter engine artifacts/<run> --runtime tensorrt-rtx --target sm86  # RTX, on any x86-64 machine",
        "",
    ])


def write(bundle: Path, spec: BuildSpec, command: str, io: dict, commit: str) -> None:
    """reproduce.sh and build_engine.sh into `bundle`, for the graphs `io` describes."""
    for name, text in ((REPRODUCE, reproduce_script(spec, command, commit)), (BUILD_ENGINE, build_engine_script(spec, io))):
        write_text(bundle / name, text)
        (bundle / name).chmod(0o755)  # executable; bundle.publish_modes applies the umask
