#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this script).
#
# Installs missing system packages (apt-get), then: cargo fmt --check, cargo clippy with
# -D warnings, `gatehouse check gateway.yaml`, and cargo test. Exits non-zero on any failure.
# Builds go to $CARGO_TARGET_DIR (default ~/.cache/gatehouse/target, outside the clone, so
# fresh clones on the same machine reuse the compiled dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

install_packages() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v kill >/dev/null 2>&1 || missing+=(procps)
  if ((${#missing[@]} == 0)); then return; fi
  step "installing ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_packages
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    step "rustup component add $component"
    rustup component add "$component"
  fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "gatehouse check -c gateway.yaml"
cargo build --quiet --bin gatehouse
"$CARGO_TARGET_DIR/debug/gatehouse" check -c gateway.yaml

step "cargo test"
cargo test 2>&1 | tee "${TMPDIR:-/tmp}/gatehouse-test.log"
