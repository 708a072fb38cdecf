# SPDX-License-Identifier: Apache-2.0
"""What several commands share, below all of them: the model a spec describes (`model`), the progress of a
command's stages (`progress`), the plugin library's build (`library`) and the facts a manifest records about the
code that ran (`facts`). Exporting graphs is `exporter.export`; evaluating them, `exporter.verify.evaluate`."""
