#!/usr/bin/env bash
# System packages some tests use: a PostgreSQL server (distributed-search tests) and
# Chromium with its driver (the dashboard's browser test). Installed with apt when
# missing and when we may; the tests skip with a clear reason when they are absent.
set -u
need=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if ! command -v initdb >/dev/null 2>&1 && [ -z "$pg_bin" ]; then need+=(postgresql); fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then need+=(chromium); fi
if ! command -v chromedriver >/dev/null 2>&1; then need+=(chromium-driver); fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: no apt-get; tests needing ${need[*]} will be skipped" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install-test-deps: not root; tests needing ${need[*]} will be skipped" >&2; exit 0
  fi
fi
echo "install-test-deps: installing ${need[*]} with apt"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "install-test-deps: apt-get install ${need[*]} failed; those tests will be skipped" >&2
exit 0
