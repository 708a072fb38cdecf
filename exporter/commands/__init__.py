# SPDX-License-Identifier: Apache-2.0
"""The commands, one module each: `build`, `verify`, `engine`, `bench`, `inspect`, `sign`, `methods`. Siblings: none
imports another; what they share lies below them (`exporter.stages`, `exporter.export`, `exporter.verify`,
`exporter.bundle`, ...). `exporter.cli` parses the arguments and hands them to one."""
