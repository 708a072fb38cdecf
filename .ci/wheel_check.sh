#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The package as a user gets it: build a wheel, install it into a fresh virtualenv, and run the README's
# quickstart from a folder outside the checkout, so nothing can come from the source tree.
#
#   bash .ci/wheel_check.sh [WORKDIR]      (default: a temporary folder, removed afterwards)
#
# Runs after the test suite in CI: the plugin library's cubins are then in ~/.cache/exporter already
# (keyed by the kernel sources' content, which the wheel carries unchanged).
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t exporter-wheel-XXXX)}"
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
cd "$work"

step() { printf '\n== %s\n' "$*"; }

step "wheel"
python3 -m pip wheel --quiet --no-deps "$checkout" -w dist
wheel="$(ls dist/exporter-*.whl)"
python3 - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["exporter/plugins/CMakeLists.txt", "exporter/plugins/common/kernels.h", "exporter/plugins/tome_merge/contract.json",
        "exporter/ops/kernels/launchers.cpp.in", "exporter/fixtures/data/digits_vit.safetensors"]
missing = [n for n in need if n not in names]
assert not missing, f"the wheel lacks {missing}"
assert not any(n.startswith(("tests/", "benchmarks/")) for n in names), "the wheel carries the test tree"
print(f"{sys.argv[1]}: {len(names)} files")
EOF

step "fresh virtualenv"
python3 -m venv venv
. venv/bin/activate
python -m pip install --quiet --upgrade pip
pip install --quiet "${wheel}[rtx]"
test "$(python -c 'import exporter, pathlib; print(pathlib.Path(exporter.__file__).parent.parent)')" = "$work/venv/lib/python$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages"

export HF_HUB_OFFLINE=1
# TensorRT's headers for the plugin library: a user points at their TensorRT's include/ (TRT_INCLUDE_DIR);
# CI has the project's header collection beside the checkout.
export EXPORTER_TRT_HEADERS="${EXPORTER_TRT_HEADERS:-$checkout/../shared/third_party/tensorrt}"
step "--version, methods"
exporter --version
python -m exporter methods --model vit_digits > methods.txt
grep -q "tome" methods.txt

step "dense build, inspect, verify"
python -m exporter build --model vit_digits --precision fp16 --out artifacts
dense="$(ls -d artifacts/vit_digits-none-fp16-*)"
python -m exporter inspect "$dense" > /dev/null
python -m exporter verify "$dense"

step "ToMe with plugins, held-out accuracy"
python -m exporter build --model vit_digits --method tome --r 4 --precision fp16 --plugins --out artifacts
tome="$(ls -d artifacts/vit_digits-tome-fp16-*)"
test -f "$tome/plugins/libexporter_plugins.so"
python -m exporter.fixtures.digits export-split digits
python -m exporter verify "$tome" --data digits

step "sign, then verify and build the plugin engine trusting the signer's key (the library loads only then)"
python - <<'KEYS'  # a P-256 key pair, as `openssl ecparam -name prime256v1 -genkey` makes (docs/signing.md)
from pathlib import Path
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP256R1())
Path("key.pem").write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
Path("key.pub").write_bytes(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
KEYS
python -m exporter sign "$tome" --key key.pem
python -m exporter verify "$tome" --trusted-key key.pub --require-signature
python -m exporter engine "$tome" --runtime tensorrt-rtx --target sm86 --graph plugins-fp16 --trusted-key key.pub
echo "wheel check passed"
