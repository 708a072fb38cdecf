# SPDX-License-Identifier: Apache-2.0
"""BuildSpec: everything that determines a bundle, so a build can be named, hashed and repeated."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .errors import ExporterError

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
QUANTIZED = ("int8", "fp8")  # 8-bit graphs, calibrated on images (--calib)
CALIB_SAMPLES = 256


MAX_IMG_SIZE = 4096  # pixels a side: 65536 tokens at patch 16, whose attention alone needs tens of GB per image


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes an artifact accepts: fixed (min == max) or a dynamic axis with an optimum."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str | int) -> "BatchRange":
        parts = str(text).split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
            raise ExporterError(
                f"--batch '{text}' is not a batch size or a min:opt:max range with 1 <= min <= opt <= max.",
                "Use e.g. --batch 8 (fixed) or --batch 1:8:32 (dynamic batch axis).",
            )
        return cls(*values)

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min, self.opt, self.max)

    def __str__(self) -> str:
        return str(self.min) if not self.dynamic else f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class BuildSpec:
    """What to build. `method_params` holds the method's parameters with defaults filled in."""

    model: str = "deit_small_patch16_224"
    weights: str = "pretrained"
    seed: int = 0
    method: str = "none"
    method_params: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    io_fp16: bool = False
    batch: BatchRange = BatchRange(1, 8, 32)
    img_size: Optional[int] = None
    opset: int = 18
    # also write the plugin graphs (token ops as TensorRT plugin nodes) and library; the model must call at
    # least one token op (a method's, or LITv2's HiLo window attention): the build checks, as only the model knows
    plugins: bool = False
    # the plugin library's GPU architectures (compute capability x10); None: the library's default set
    archs: Optional[tuple[int, ...]] = None
    # int8/fp8: the ImageNet-layout folder calibrated on, and how many of its images (seeded by `seed`)
    calib: Optional[str] = None
    calib_samples: int = CALIB_SAMPLES

    def __post_init__(self):
        if self.archs is not None and not self.plugins:
            raise ExporterError("--archs names the plugin library's GPU architectures, and this build has no plugins.",
                                "Add --plugins, or drop --archs.")
        if self.precision not in PRECISIONS:
            raise ExporterError(f"Unknown precision '{self.precision}'.", f"Use one of: {', '.join(PRECISIONS)}.")
        if self.precision in QUANTIZED and self.calib is None:
            raise ExporterError(f"--precision {self.precision} calibrates the 8-bit graph on images, and no --calib was given.",
                                "Pass --calib DIR, a folder with one sub-folder of images per class (the layout of "
                                "`verify --data`), e.g. `python -m exporter.fixtures.digits export-split DIR --split train`.")
        if self.calib is not None and self.precision not in QUANTIZED:
            raise ExporterError(f"--calib calibrates an int8 or fp8 graph, and this build is {self.precision}.",
                                "Add --precision int8 (or fp8), or drop --calib.")
        if self.precision == "fp8" and self.opset < 19:
            raise ExporterError(f"FP8 Q/DQ nodes (float8e4m3fn) need ONNX opset 19 or later, and this build is opset {self.opset}.",
                                "Add --opset 19 (TensorRT 10.3 and later parse it).")
        if self.calib_samples < 1:
            raise ExporterError(f"--calib-samples {self.calib_samples} is not a positive number of images.",
                                f"Pass --calib-samples 1 or more (default {CALIB_SAMPLES}).")
        if self.io_fp16 and self.precision != "fp16":
            raise ExporterError("--io-fp16 only applies to fp16 builds.", "Add --precision fp16 or drop --io-fp16.")
        if not 0 <= self.seed < 2**64:
            raise ExporterError(f"--seed {self.seed} is outside 0..2^64-1, the seeds torch's generator takes.",
                                "Pass --seed a whole number from 0 to 18446744073709551615.")
        if self.img_size is not None and not 1 <= self.img_size <= MAX_IMG_SIZE:
            raise ExporterError(f"--img-size {self.img_size} is outside 1..{MAX_IMG_SIZE}.",
                                f"Pass an --img-size up to {MAX_IMG_SIZE} (a multiple of the model's patch size), "
                                "or omit it for the model's own.")
        if not 17 <= self.opset <= 20:
            raise ExporterError(
                f"Opset {self.opset} is outside the supported 17..20.",
                "TensorRT 10.3 (JetPack 6) parses up to opset 20; use the default 18 unless you need another.",
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch"] = str(self.batch)
        if self.archs is None:  # absent, so specs from before --archs keep their hash and run name
            del d["archs"]
        else:
            d["archs"] = list(self.archs)
        if self.precision not in QUANTIZED:  # absent, so specs from before int8/fp8 keep their hash and run name
            del d["calib"], d["calib_samples"]
        d["method_params"] = json.loads(json.dumps(self.method_params, sort_keys=True))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildSpec":
        d = dict(d)
        d["batch"] = BatchRange.parse(d["batch"])
        if d.get("archs") is not None:
            d["archs"] = tuple(d["archs"])
        return cls(**d)

    @property
    def short_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    @property
    def run_name(self) -> str:
        """Readable and unique: model, method, precision, and a hash of the whole spec."""
        return f"{self.model}-{self.method}-{self.precision}-{self.short_hash}"
