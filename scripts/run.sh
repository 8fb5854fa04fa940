#!/usr/bin/env bash
# Runs the gateway from a fresh clone: `cargo run --release -- ARGS`, by default
# `cargo run --release -- run -c gateway.yaml` (the embedded defaults, port 8080).
#
# First it installs what the build needs and a bare Rust toolchain lacks (scripts/build-deps.sh):
# cmake, the C compiler (gcc, for `cc`), g++ and make, which Pingora's zlib-ng (crate
# libz-ng-sys) is built with. It uses apt-get (through sudo when not root), says what it
# installs and why, and installs nothing when they are all there. Without apt-get it names
# what is missing and stops.
#
#   scripts/run.sh                                # run -c gateway.yaml
#   scripts/run.sh check -c gateway.yaml          # any other gatehouse subcommand
#   GATEHOUSE_SETUP_DRY_RUN=1 scripts/run.sh      # print the apt-get and cargo commands only
#
# Builds go wherever cargo puts them ($CARGO_TARGET_DIR if set, else ./target).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "gatehouse: cargo not found: install a Rust toolchain (https://rustup.rs), then run this again" >&2
  exit 1
fi

# shellcheck source=scripts/build-deps.sh
source scripts/build-deps.sh
# No extra packages: run.sh's own arguments are for cargo, not for it.
# shellcheck disable=SC2119
ensure_build_tools

if (($# == 0)); then set -- run -c gateway.yaml; fi
if [ "${GATEHOUSE_SETUP_DRY_RUN:-0}" = 1 ]; then
  echo "gatehouse: dry run (GATEHOUSE_SETUP_DRY_RUN=1), would run: cargo run --release -- $*" >&2
  exit 0
fi
exec cargo run --release -- "$@"
