# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter sign BUNDLE --key KEY`: signature.sig over the manifest and every file it hashes
(`exporter.bundle.signature`), so a receiver can check who built the bundle with `verify --trusted-key PUB`."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..bundle import SIGNATURE, read_intact
from ..bundle.signature import UNSIGNED_PATHS, load_private_key, sign as sign_bundle


def sign(bundle: Path, key: Path, console: Console) -> str:
    """Sign `bundle` with the private `key`; the key's fingerprint. Only a bundle whose files match its manifest
    is signed: a signature vouches for what the build wrote, not for a changed copy."""
    load_private_key(key)  # the key's problem first: it is the argument the user typed last
    manifest, _ = read_intact(bundle)
    fingerprint = sign_bundle(bundle, key)
    console.print(f"signed with key {fingerprint}: {SIGNATURE} covers manifest.json and the {len(manifest['files'])} "
                  f"files it hashes; not {', '.join(p + '/' for p in UNSIGNED_PATHS if p != SIGNATURE)} (written on "
                  "the target later)", markup=False)
    return fingerprint
