#!/usr/bin/env bash
# Creates target/kube-emulator-venv, the Python environment of the Kubernetes API emulator that
# the end-to-end tests start (crates/tessera-kube-emulator), unless it exists and has kmock.
# Needs python3 with the venv module (Debian: python3 python3-venv) and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/kube-emulator-venv
requirements=crates/tessera-kube-emulator/emulator/requirements.txt

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import kmock' 2>/dev/null \
  && cmp -s "$requirements" "$venv/requirements.txt"; then
  exit 0
fi

rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
# Remembers what was installed, so a changed requirements file rebuilds the environment.
cp "$requirements" "$venv/requirements.txt"
echo "kube emulator environment ready: $venv"
