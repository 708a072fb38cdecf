# SPDX-License-Identifier: Apache-2.0
"""The call shape every runtime is wrapped in (see the package docstring)."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    def __call__(self, x: np.ndarray) -> list[np.ndarray]: ...
