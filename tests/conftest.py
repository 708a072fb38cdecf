"""Tests never touch the network: timm's hub is offline and models are built with random weights."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402

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
