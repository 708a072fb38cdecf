# SPDX-License-Identifier: Apache-2.0
"""Verification, for `build` and `verify` alike: `evaluate` runs every check on a bundle's graphs into a `report.Report`
(`report_md` renders it), `references` stores PyTorch's answers and holds runtimes to them, `engines` is the engine
stage, `accuracy` the top-1/top-5 on labelled images (`verify --data`)."""
