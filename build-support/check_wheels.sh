#!/usr/bin/env bash
# Installs each wheel in dist/ into its own clean venv (its diffpol dependencies from dist/,
# the rest from the package index) and imports its package. Run after
# `./pants package --filter-target-type=python_distribution ::`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3.11}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for wheel in dist/diffpol_*.whl; do
  name="$(basename "$wheel" | cut -d- -f1)"          # diffpol_rollout
  module="diffpol.${name#diffpol_}"                    # diffpol.rollout
  [[ "$module" == diffpol.contracts ]] && module="diffpol.contracts, diffpol.v1.sampler_pb2_grpc"
  venv="$work/$name"
  "$python" -m venv "$venv"
  start=$SECONDS
  "$venv/bin/pip" install -q --disable-pip-version-check --find-links dist "$wheel"
  "$venv/bin/python" -c "import $module; print('$name: import $module ok')"
  echo "$name: installed in $((SECONDS - start)) s"
  rm -rf "$venv"
done
