# SPDX-License-Identifier: Apache-2.0
"""No global side effects, results on stdout, and version bounds that say what the code needs."""
import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import timm
import torch
from rich.console import Console

from exporter.cli import main

try:  # Python 3.11+; the `test` extra brings tomli on 3.10
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_create_model_leaves_the_callers_rng_alone():
    from exporter.models import create_model

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = create_model("test_vit", "random", seed=0)
    assert torch.equal(torch.rand(3), expected)
    b = create_model("test_vit", "random", seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # still seeded


def test_export_shows_the_models_own_prints_and_warnings(tmp_path, capsys):
    """Only the exporter's own chatter is hidden: what the model's code prints or warns comes through."""
    from exporter.export.onnx_export import export_onnx

    class Talks(torch.nn.Module):
        def forward(self, x):
            print("the model speaks")
            warnings.warn("the model warns", UserWarning)
            return x * 2

    with pytest.warns(UserWarning, match="the model warns"):
        export_onnx(Talks(), tmp_path / "talks.onnx", 8, (1, 1, 1))
    assert "the model speaks" in capsys.readouterr().out


def _repo(path: Path) -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    return git("rev-parse", "HEAD")


def test_git_commit_only_of_the_packages_own_checkout(tmp_path):
    """A copy of the package installed inside some other repository (a venv in it) records no commit;
    a checkout whose root holds exporter/ records its own."""
    from exporter.stages.facts import git_commit as _git_commit

    other = tmp_path / "other"
    (other / ".venv/lib/site-packages/exporter").mkdir(parents=True)
    _repo(other)
    assert _git_commit(other / ".venv/lib/site-packages/exporter") == "unknown"
    ours = tmp_path / "ours"
    (ours / "exporter").mkdir(parents=True)
    commit = _repo(ours)
    assert _git_commit(ours / "exporter") == commit
    assert _git_commit(tmp_path / "nowhere" / "exporter") == "unknown"


def test_verify_batches_reach_both_ends_of_the_range():
    from exporter.spec import BatchRange
    from exporter.checks.compare import verify_batches

    assert verify_batches(BatchRange.parse("1:8:32")) == [1, 8, 32]
    assert verify_batches(BatchRange.parse("8:8:16")) == [8, 16]
    assert verify_batches(BatchRange.parse("4")) == [4]


def test_methods_table_is_on_stdout_and_debug_goes_anywhere(capsys):
    assert main(["methods", "--debug"]) == 0
    captured = capsys.readouterr()
    assert "tome" in captured.out and "evit" in captured.out and captured.err == ""
    assert main(["--debug", "methods", "--method", "tome"]) == 0
    assert "tome" in capsys.readouterr().out


def test_version(capsys):
    from exporter import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"exporter {__version__}\n"


def test_version_imports_no_torch():
    """`--version` answers before the command parsers, which import torch, onnx and timm, are built."""
    code = "import sys; from exporter.cli import main; main(['--version']); print(sorted({'torch', 'onnx', 'timm'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


def test_python_m_exporter_exits_with_the_commands_status():
    """`python -m exporter` ends through `interrupt.leave` (its objects frozen out of the last garbage collection):
    the command's exit status and everything it printed still come out."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=ROOT)

    version, unknown = run("--version"), run("methods", "--model", "no_such_model")
    assert (version.returncode, version.stdout) == (0, f"exporter {__import__('exporter').__version__}\n")
    assert unknown.returncode == 2 and "Unknown model 'no_such_model'" in unknown.stderr + unknown.stdout


def test_methods_table_gives_each_method_the_parameters_it_has(capsys, monkeypatch):
    """Without --method, every method takes the given parameters it has (none is dropped for another's), and a bad
    value shows in its own row."""
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    assert main(["methods", "--model", "test_vit", "--r", "5", "--keep-rate", "0.5", "--locations", "1,3"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "r=[5, 5, 5, 5, 5, 5], prop_attn=True │ 96 91 86 81 76 71" in out
    assert "keep_rate=0.5, locations=(1, 3), fuse=True │ 101 52 52 28 28 28" in out
    assert main(["methods", "--model", "test_vit", "--r", "5", "--keep-rate", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "r=[5, 5, 5, 5, 5, 5]" in out and "keep_rate must be in (0, 1], got 2.0" in out


def test_stage_names_print_when_they_start_outside_a_terminal():
    from exporter.stages.progress import Stages

    log = io.StringIO()
    stage = Stages(Console(file=log, force_terminal=False))
    with stage("export fp32 ONNX"):
        assert log.getvalue().strip() == "export fp32 ONNX ..."
    assert "✓ export fp32 ONNX" in log.getvalue()


def test_readme_states_the_declared_lower_bounds():
    """The README's lowest versions are pyproject's lower bounds, and timm's bound is no older than the
    release whose Attention takes what `attend()` passes it (attn_dim from 1.0.23, gate from 1.0.28).
    These are declarations: CI installs what pip resolves, not the lowest versions."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = dict(re.match(r"([\w-]+)>=([\d.]+)", d).groups() for d in deps)
    assert tuple(map(int, bounds["timm"].split("."))) >= (1, 0, 28)
    readme = (ROOT / "README.md").read_text()
    for name in ("torch", "timm", "onnx", "onnxruntime", "onnxscript"):
        assert f"{name} {bounds[name]}" in readme, name


def test_installed_timm_has_what_attend_passes():
    attn = timm.layers.Attention(64, num_heads=4)
    assert attn.attn_dim == 64 and attn.gate is None


def test_readme_lists_every_method_parameter():
    from exporter.methods import get_method, list_methods

    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("## Command line"):readme.index("## Python API")]
    for name in list_methods():
        for param in get_method(name).params:
            assert f"`{param.flag}`" in listed, (name, param.flag)


def test_piped_tables_are_not_wrapped(capsys):
    """Piped (not a terminal), a table row stays on one line, so grep finds a method with its summary."""
    from exporter.methods import get_method, list_methods

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in list_methods():
        summary = get_method(name).summary
        assert any(f" {name} " in line and summary in line for line in lines), name


def test_every_source_file_names_its_license():
    """An SPDX line at the top of every source file (the LICENSE file is Apache-2.0, as pyproject declares)."""
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    sources = [f for f in files if f.endswith((".py", ".cpp", ".h", ".c", ".in", ".sh")) or f.endswith("CMakeLists.txt")
               or f == ".ci/run"]
    missing = [f for f in sources if "SPDX-License-Identifier: Apache-2.0" not in "".join((ROOT / f).read_text().splitlines(True)[:3])]
    assert sources and missing == []
    assert "Apache License" in (ROOT / "LICENSE").read_text()
