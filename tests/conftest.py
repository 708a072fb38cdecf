# SPDX-License-Identifier: Apache-2.0
"""Tests never touch the network: timm's hub is offline and models are built with random weights.

Shared fixtures live here; small test models and inputs in `vits.py`."""
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny models: one torch thread is faster, and far faster when other processes share the
    cores. Restored afterwards. Use with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Modules that build bundles, engines or the plugin library, or compile every kernel variant: `-m "not slow"`
# leaves them out (the fast subset of the README). The rest hold the ops, methods, graphs and checks themselves.
SLOW = {"test_accuracy", "test_bench", "test_build", "test_bundle", "test_cubin_targets", "test_engine", "test_errors",
        "test_hilo_op", "test_hostile", "test_inspect", "test_interrupt", "test_kernel_cache", "test_kernels",
        "test_kernels_aot", "test_quantize", "test_quantize_plugins", "test_search_bundle",
        "test_litv2", "test_method_builds", "test_perf", "test_plugins", "test_signing"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW:
            item.add_marker(pytest.mark.slow)


_SUMMARY = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def terminal_summary(request) -> list:
    """Lines a test wants shown after the run, without -s or -rP (e.g. the digits accuracy table)."""
    return request.config.stash.setdefault(_SUMMARY, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("exported accuracy")
        for line in lines:
            terminalreporter.write_line(line)
