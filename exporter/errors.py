# SPDX-License-Identifier: Apache-2.0
"""One exception type for every user mistake, so the CLI can print it as a sentence, not a traceback."""


class ExporterError(Exception):
    """A problem the user can fix: `problem` says what is wrong, `fix` says what to do about it."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")
        self.problem = problem
        self.fix = fix


# How allocation failures read: torch's CPU allocator, onnxruntime's arena and std::bad_alloc, CUDA.
_NO_MEMORY = ("can't allocate memory", "failed to allocate memory", "bad allocation", "bad_alloc", "out of memory")


def out_of_memory(e: BaseException) -> "ExporterError | None":
    """The sentence for a run that ran out of memory (a batch too large for this machine), else None: the
    runtimes raise RuntimeError (or their own types) with the allocator's words, not MemoryError."""
    said = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    if not isinstance(e, MemoryError) and not any(w in str(e).lower() for w in _NO_MEMORY):
        return None
    return ExporterError(f"ran out of memory ({said[:200]}).",
                         "Use a smaller --batch (a dynamic range is traced at its opt and checked at min, opt and max), "
                         "or a machine with more memory.")


def mismatched_torchvision(e: BaseException) -> "ExporterError | None":
    """The sentence for torch and torchvision from different builds (e.g. torch from the CPU index, torchvision
    from PyPI): importing torchvision, which timm does, raises RuntimeError naming a missing operator."""
    if not (isinstance(e, RuntimeError) and "torchvision::" in str(e) and "does not exist" in str(e)):
        return None
    import torch

    return ExporterError(f"torch and torchvision do not match: torch {torch.__version__} cannot load torchvision's "
                         f"operators ({str(e).strip().splitlines()[0][:120]}).",
                         "Reinstall both from one place: pip install --force-reinstall torch torchvision "
                         "(or both from the same --index-url).")


class BuildFailed(Exception):
    """Verification or a graph check failed (exit 1, not a usage error); the message is the summary to print,
    `where` the directory holding the report."""

    def __init__(self, summary: str, where):
        super().__init__(summary)
        self.where = where
