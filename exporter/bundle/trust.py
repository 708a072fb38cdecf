# SPDX-License-Identifier: Apache-2.0
"""Whether this run may load a bundle's plugin library: native code, which runs as soon as it is loaded.

A bundle received from elsewhere is data until someone vouches for it: its graphs, hashes, references and
reports are checked without running anything of it, but plugins/libexporter_plugins.so would run inside the
process that loads it (its constructors run at dlopen, before any check). So every place that loads it asks
`library` here, which refuses unless the command trusted that bundle first (`allow`): `build` for the library
it compiled itself, `verify`/`engine`/`bench` when the bundle's signature verified with a key the user passed
(--trusted-key) or the user said so (--trust-plugins). Kept per process: a loader that forgets to ask is refused
by default rather than trusted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..errors import ExporterError
from .layout import PLUGIN_LIBRARY
from .signature import Signature, check

_TRUSTED: dict[Path, str] = {}  # bundle (resolved) -> why its plugin library may be loaded
ENABLE = ("Pass --trusted-key PUB (the public key of whoever signed the bundle with `python -m exporter sign`), "
          "or --trust-plugins if you trust where the bundle came from.")


def allow(bundle: Path, why: str) -> None:
    """Let this process load `bundle`'s plugin library (`why`: e.g. "built by this run")."""
    _TRUSTED[bundle.resolve()] = why


def decide(bundle: Path, signature: Signature, trust_plugins: bool) -> Optional[str]:
    """Allow `bundle`'s plugin library when `signature` verified or the user passed --trust-plugins; the reason
    it stays unloaded otherwise (None when allowed). Decided anew by each command: an earlier one in the same
    process (a test, a notebook) leaves nothing behind."""
    _TRUSTED.pop(bundle.resolve(), None)
    if signature.verified:
        allow(bundle, f"the signature verified ({signature.said})")
    elif trust_plugins:
        allow(bundle, "--trust-plugins")
    return untrusted(bundle)


def untrusted(bundle: Path) -> Optional[str]:
    """Why `bundle`'s plugin library may not be loaded in this process, or None when it may."""
    if bundle.resolve() in _TRUSTED:
        return None
    return (f"{PLUGIN_LIBRARY} was not loaded: a plugin library is native code that runs as soon as it is loaded, "
            "and nothing vouches for this bundle (no signature verified with a trusted key, no --trust-plugins)")


def library(bundle: Path) -> Path:
    """The path of `bundle`'s plugin library, to load; an ExporterError when this run has not trusted it."""
    reason = untrusted(bundle)
    if reason is not None:
        raise ExporterError(reason[0].upper() + reason[1:] + ".", ENABLE)
    return bundle / PLUGIN_LIBRARY


def vouch(bundle: Path, trusted_keys: Sequence[Path], trust_plugins: bool) -> Signature:
    """For `engine` and `bench`: the signature checked with `trusted_keys` and the plugin library allowed or not
    (`decide`); a signature the keys do not verify is refused (the bundle changed, or another key signed it)."""
    found = check(bundle, trusted_keys)
    if found.status == "bad":
        raise ExporterError(f"{bundle} is {found.said}.",
                            "Copy the bundle again from its signer (or ask which key signed it), and check it with "
                            "`python -m exporter verify BUNDLE --trusted-key PUB`.")
    decide(bundle, found, trust_plugins)
    return found
