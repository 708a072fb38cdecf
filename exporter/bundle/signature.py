# SPDX-License-Identifier: Apache-2.0
"""A bundle's signature (signature.sig): who vouches for its files, which the manifest's hashes alone cannot say.

The manifest's sha256 list catches accidents (a truncated copy, a flipped bit); anyone who changes a file can
rewrite its hash too. A signature made with a private key binds the files to the holder of that key: `sign`
signs the digest of every file of the bundle but engines/, bench/ and the signature itself (the manifest and
every file it hashes, so also a file added after the build), and `verify --trusted-key PUB` recomputes them
and checks the signature with the public key.

The signing is OpenSSF's `model-signing` (elliptic-curve keys, P-256/384/521, PEM): a Sigstore bundle holding
a DSSE envelope over an in-toto statement that lists each file's sha256 and the paths left out. Not covered:
engines/ and bench/, written on the target after the bundle was signed (each engine has its own
engine.json with the plan's sha256, keyed by the graph's hash, which the signature does cover).
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ExporterError
from .files import read_json
from .layout import SIGNATURE, UNHASHED_SUBTREES

UNSIGNED_PATHS = (*UNHASHED_SUBTREES, SIGNATURE)  # what the signature leaves out, relative to the bundle
KEY_FIX = ("Make a key pair with e.g. `openssl ecparam -name prime256v1 -genkey -noout -out key.pem` and "
           "`openssl ec -in key.pem -pubout -out key.pub` (elliptic curve P-256, P-384 or P-521, PEM, no passphrase).")


@dataclass(frozen=True)
class Signature:
    """What `check` found. `status`: "verified" (a trusted key verified it), "unsigned", "unchecked" (signed, no
    trusted key given) or "bad" (it does not verify with any trusted key); `said`: the sentence to print."""

    status: str
    said: str

    @property
    def verified(self) -> bool:
        return self.status == "verified"


def sign(bundle: Path, private_key: Path) -> str:
    """Write `bundle`/signature.sig signed with `private_key` (PEM, elliptic curve); the key's fingerprint."""
    public = _fingerprint(load_private_key(private_key).public_key())
    ms = _model_signing()
    hashing = ms.hashing.Config().set_ignored_paths(paths=list(UNSIGNED_PATHS), ignore_git_paths=False)
    try:
        ms.signing.Config().set_hashing_config(hashing).use_elliptic_key_signer(private_key=private_key).sign(
            bundle, bundle / SIGNATURE)
    except (OSError, ValueError) as e:  # model-signing refuses symlinks and unreadable files with these
        raise ExporterError(f"Cannot sign {bundle}: {e}.", "Sign the bundle as `build` wrote it (regular files only).") from None
    return public


def check(bundle: Path, trusted_keys: Sequence[Path] = ()) -> Signature:
    """The bundle's signature against each of `trusted_keys` (public keys, PEM); without keys, only whether it is
    signed and by which key (unchecked: anyone can sign)."""
    path = bundle / SIGNATURE
    keys = {k: _fingerprint(load_public_key(k)) for k in trusted_keys}  # a bad key file is the user's mistake first
    if not path.is_file() or path.is_symlink():
        return Signature("unsigned", f"unsigned (no {SIGNATURE})")
    hint = signer_hint(path)
    if not keys:
        return Signature("unchecked", f"signed by key {hint or '(no key hint)'}, not checked: pass --trusted-key PUB "
                                      "(the signer's public key) to check it")
    ms = _model_signing()
    why = []
    for key, fingerprint in keys.items():
        try:
            ms.verifying.Config().use_elliptic_key_verifier(public_key=key).verify(bundle, path)
        except Exception as e:  # model-signing raises ValueError for a mismatch, others for a damaged signature file
            why.append(f"{key}: {_reason(e)}")
            continue
        return Signature("verified", f"signed by key {fingerprint} (trusted key {key})")
    return Signature("bad", f"signed by key {hint or '(no key hint)'}, and the signature does not verify with the "
                            f"trusted key{'s' if len(keys) > 1 else ''} ({'; '.join(why)})")


def signer_hint(path: Path) -> Optional[str]:
    """The fingerprint of the key signature.sig names (unverified: what the signer wrote), or None."""
    try:
        hint = read_json(path)["verificationMaterial"]["publicKey"]["hint"]
    except (OSError, ValueError, KeyError, TypeError, ExporterError):  # ExporterError: refused (oversized, not a file)
        return None
    return f"sha256:{hint[:16]}" if isinstance(hint, str) and hint else None


def load_private_key(path: Path):
    """An elliptic-curve private key from a PEM file, or an ExporterError saying what it is instead."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key(path, "--sign/--key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        raise ExporterError(f"The private key {path} is protected by a passphrase, which signing cannot prompt for.",
                            f"Write an unencrypted copy (openssl ec -in {path} -out plain.pem) and keep it private.") from None
    except ValueError as e:
        raise ExporterError(f"{path} is not a PEM private key ({e}).", KEY_FIX) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _CURVES:
        raise ExporterError(f"{path} is not an elliptic-curve key on P-256, P-384 or P-521 (model-signing's keys).", KEY_FIX)
    return key


def load_public_key(path: Path):
    """An elliptic-curve public key from a PEM file, or an ExporterError saying what it is instead."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key(path, "--trusted-key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise ExporterError(f"--trusted-key {path} is not a PEM public key ({e}).",
                            "Pass the signer's public key (key.pub), not the private key. " + KEY_FIX) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise ExporterError(f"--trusted-key {path} is not an elliptic-curve key on P-256, P-384 or P-521.", KEY_FIX)
    return key


_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _read_key(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ExporterError(f"Cannot read the key {flag} {path}: {e.strerror or e}.", "Pass the path of a PEM key file.") from None


def _fingerprint(public_key) -> str:
    """What model-signing writes as the signature's key hint (sha256 of the PEM public key), shortened."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"sha256:{hashlib.sha256(pem).hexdigest()[:16]}"


QUOTED_END = "': "  # ends the model's quoted name in model-signing's sentences on added and removed files


def _reason(e: Exception) -> str:
    """model-signing's error in one line: the key that does not match, or the files that differ. Its message for
    those is "Signature mismatch: " and the repr of a list of sentences holding the digests' reprs, whose quoting
    depends on the digests' bytes, so the list is read back as Python literals rather than matched as text."""
    text = str(e)
    if text.startswith("Key mismatch"):
        return "signed by another key"
    prefix = "Signature mismatch: "
    try:
        diffs = ast.literal_eval(text[len(prefix):]) if text.startswith(prefix) else None
    except (ValueError, SyntaxError):
        diffs = None
    if not isinstance(diffs, list) or not all(isinstance(d, str) for d in diffs):
        return " ".join(text.split())[:400] or type(e).__name__
    changed = [d[len("Hash mismatch for '"):d.index("': Expected")] for d in diffs
               if d.startswith("Hash mismatch for '") and "': Expected" in d]
    parts = [f"changed since signing: {', '.join(changed)}"] if changed else []
    for kind, said in (("added", "Extra files found in model "), ("removed", "Missing files in model ")):
        parts += [f"{kind} since signing: {d.split(QUOTED_END, 1)[1]}" for d in diffs if d.startswith(said) and QUOTED_END in d]
    return "; ".join(parts)[:400] or " ".join(text.split())[:400]


def _model_signing():
    """OpenSSF's model-signing, imported when a signature is made or checked (it brings sigstore)."""
    try:
        import model_signing
    except ImportError as e:
        raise ExporterError(f"Signing needs OpenSSF's model-signing, which does not import here ({e}).",
                            "pip install 'model-signing>=1.1' pyopenssl") from None
    return model_signing
