# SPDX-License-Identifier: Apache-2.0
"""A `Report` with only the parts a test sets: the rest empty, a passed dense fp32 build by default."""
from exporter.spec import BatchRange, BuildSpec
from exporter.verify.report import Flops, Report


def report(spec: dict = (), **parts) -> Report:
    fields = dict(run_name="r", spec=BuildSpec(**{"weights": "pretrained", "batch": BatchRange(2, 2, 2), **dict(spec)}),
                  schedule=None, method_params={}, flops=Flops(1.0, 1.0, 1.0), thresholds="t", comparisons=[], lint={},
                  tensorrt_rtx={})
    return Report(**{**fields, **parts})
