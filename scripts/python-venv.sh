#!/usr/bin/env bash
# Makes the Python venv the tests use to run independent peers (dkimpy for
# DKIM verification, schemathesis for the HTTP API against its OpenAPI
# document) at target/pyvenv, installs the pinned packages into it
# and prints the venv's python path. Safe to run again and from several tests
# at once: a lock serialises installs, and a stamp file skips them when done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned so every machine verifies with the same peer. dkimpy verifies
# Ed25519 signatures through PyNaCl; it resolves DNS through dnspython, which
# the tests replace with their own dnsfunc.
packages=(dkimpy==1.1.8 pynacl==1.6.2 dnspython==2.8.0 schemathesis==4.32.5)

venv="$PWD/target/pyvenv"
python="$venv/bin/python"
stamp="$venv/.installed"
wanted="${packages[*]}"

mkdir -p target
exec 9>target/pyvenv.lock
flock 9
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  [ -x "$python" ] || python3 -m venv "$venv" >&2
  "$python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
  printf '%s' "$wanted" >"$stamp"
fi
echo "$python"
