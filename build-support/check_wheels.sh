#!/usr/bin/env bash
# Installs each wheel in dist/ into its own clean venv (its diffpol dependencies from dist/,
# the rest from the package index) and imports its package. Run after
# `./pants package --filter-target-type=python_distribution ::` (with PANTS_CA_CERTS_PATH
# set as ./pants sets it, where the index is reached through a proxy with its own CA).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3.11}"
# Like the build, the check reads no pip configuration: dependencies come from dist/, the
# project's find_links (pants.toml: where the CPU torch wheel is) and the package index.
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^PIP_' || true)
export PIP_CONFIG_FILE=/dev/null
find_links=()
while IFS= read -r link; do find_links+=(--find-links "$link"); done < <(
  "$python" -c 'import tomllib; print(*tomllib.load(open("pants.toml", "rb"))["python-repos"]["find_links"], sep="\n")')
cert_args=()
[[ -n "${PANTS_CA_CERTS_PATH:-}" ]] && cert_args=(--cert "$PANTS_CA_CERTS_PATH")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for wheel in dist/diffpol_*.whl; do
  name="$(basename "$wheel" | cut -d- -f1)"          # diffpol_rollout
  module="diffpol.${name#diffpol_}"                    # diffpol.rollout
  [[ "$module" == diffpol.contracts ]] && module="diffpol.contracts, diffpol.v1.sampler_pb2_grpc"
  venv="$work/$name"
  "$python" -m venv "$venv"
  start=$SECONDS
  "$venv/bin/pip" install -q --disable-pip-version-check "${cert_args[@]}" \
    --find-links dist "${find_links[@]}" "$wheel"
  "$venv/bin/python" -c "import $module; print('$name: import $module ok')"
  echo "$name: installed in $((SECONDS - start)) s"
  rm -rf "$venv"
done
