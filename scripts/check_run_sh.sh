#!/usr/bin/env bash
# Checks scripts/run.sh's fresh-machine path without installing or building anything (called
# by scripts/test.sh; runs in about a second).
#
# 1. cmake hidden: PATH is only a temporary directory of symlinks to every executable on the
#    real PATH except cmake (and with cargo replaced by a stub that records any call).
#    Under GATEHOUSE_SETUP_DRY_RUN=1 run.sh must say it installs cmake and print the apt-get
#    install command, print the cargo command it would exec, exit 0, and not call cargo.
# 2. The real PATH (cmake, cc, g++, make present; cargo still stubbed, so that a broken dry
#    run cannot start a release build): no "installing" line; arguments are passed to cargo.
# 3. cmake and apt-get both hidden: run.sh names cmake, says apt-get is not available, and
#    exits non-zero.
# Exits non-zero with a message on the first failure. The temporary directory is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

fail() {
  echo "check_run_sh: FAIL: $*" >&2
  exit 1
}

for tool in cmake cc g++ make apt-get; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "$tool is not on PATH; this check expects a Debian machine with the build tools (scripts/test.sh installs them)"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-check-run-sh.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# A stub cargo: records that it was called, exits 97.
mkdir "$TMP/stub"
cat >"$TMP/stub/cargo" <<EOF
#!/bin/sh
echo "\$*" >"$TMP/cargo-called"
exit 97
EOF
chmod +x "$TMP/stub/cargo"

# fake_path DIR HIDDEN...: DIR gets a symlink to the first executable of each name on the real
# PATH, except the HIDDEN names; cargo is the stub.
fake_path() {
  local dir=$1 entry file name
  shift
  local -A seen=([cargo]=1)
  for name in "$@"; do seen[$name]=1; done
  local -a targets=()
  local -a entries
  IFS=: read -r -a entries <<<"$PATH"
  for entry in "${entries[@]}"; do
    if [ -z "$entry" ] || [ ! -d "$entry" ]; then continue; fi
    for file in "$entry"/*; do
      name=${file##*/}
      if [ -n "${seen[$name]:-}" ] || [ ! -f "$file" ] || [ ! -x "$file" ]; then continue; fi
      seen[$name]=1
      targets+=("$file")
    done
  done
  mkdir "$dir"
  ln -s "$TMP/stub/cargo" "$dir/cargo"
  ln -s -t "$dir" "${targets[@]}"
}

# run_sh OUTFILE PATH [ARGS...]: scripts/run.sh in dry-run mode; prints its exit status.
run_sh() {
  local out=$1 path=$2 status=0
  shift 2
  rm -f "$TMP/cargo-called"
  PATH=$path GATEHOUSE_SETUP_DRY_RUN=1 "$REPO/scripts/run.sh" "$@" >"$out" 2>&1 || status=$?
  echo "$status"
}

show() {
  sed 's/^/  | /' "$1" >&2
}

# 1. cmake hidden.
fake_path "$TMP/no-cmake" cmake
PATH="$TMP/no-cmake" command -v cmake >/dev/null 2>&1 && fail "cmake is still reachable in $TMP/no-cmake"
status=$(run_sh "$TMP/out1" "$TMP/no-cmake")
[ "$status" = 0 ] || { show "$TMP/out1"; fail "cmake hidden: run.sh exited $status (expected 0)"; }
grep -q "^gatehouse: installing cmake (.*) with apt-get$" "$TMP/out1" ||
  { show "$TMP/out1"; fail "cmake hidden: no 'gatehouse: installing cmake (...) with apt-get' line"; }
grep -q "apt-get update -qq$" "$TMP/out1" ||
  { show "$TMP/out1"; fail "cmake hidden: the apt-get update command is not printed"; }
grep -q "apt-get install -y -qq --no-install-recommends cmake$" "$TMP/out1" ||
  { show "$TMP/out1"; fail "cmake hidden: the apt-get install command for cmake is not printed"; }
[ "$(grep -c "installing" "$TMP/out1")" = 1 ] ||
  { show "$TMP/out1"; fail "cmake hidden: expected exactly one 'installing' line (only cmake is missing)"; }
grep -q "would run: cargo run --release -- run -c gateway.yaml$" "$TMP/out1" ||
  { show "$TMP/out1"; fail "cmake hidden: the cargo command (default arguments run -c gateway.yaml) is not printed"; }
[ ! -e "$TMP/cargo-called" ] || { show "$TMP/out1"; fail "cmake hidden: run.sh called cargo in dry-run mode"; }
echo "cmake hidden: run.sh prints:"
sed 's/^/  /' "$TMP/out1"

# 2. The real PATH.
status=$(run_sh "$TMP/out2" "$TMP/stub:$PATH" check -c gateway.yaml)
[ "$status" = 0 ] || { show "$TMP/out2"; fail "real PATH: run.sh exited $status (expected 0)"; }
! grep -q "installing" "$TMP/out2" ||
  { show "$TMP/out2"; fail "real PATH: run.sh wants to install something although cmake, cc, g++ and make are there"; }
! grep -q "apt-get" "$TMP/out2" || { show "$TMP/out2"; fail "real PATH: run.sh mentions apt-get"; }
grep -q "would run: cargo run --release -- check -c gateway.yaml$" "$TMP/out2" ||
  { show "$TMP/out2"; fail "real PATH: the arguments were not passed on to cargo"; }
[ ! -e "$TMP/cargo-called" ] || { show "$TMP/out2"; fail "real PATH: run.sh called cargo in dry-run mode"; }
echo "real PATH: no installing line; run.sh prints:"
sed 's/^/  /' "$TMP/out2"

# 3. cmake and apt-get hidden.
fake_path "$TMP/no-apt" cmake apt-get
status=$(run_sh "$TMP/out3" "$TMP/no-apt")
[ "$status" != 0 ] || { show "$TMP/out3"; fail "no apt-get: run.sh exited 0 (expected non-zero)"; }
grep -q "missing cmake" "$TMP/out3" || { show "$TMP/out3"; fail "no apt-get: the message does not name cmake"; }
grep -q "apt-get is not available" "$TMP/out3" ||
  { show "$TMP/out3"; fail "no apt-get: the message does not say apt-get is missing"; }
[ ! -e "$TMP/cargo-called" ] || { show "$TMP/out3"; fail "no apt-get: run.sh called cargo"; }
echo "cmake and apt-get hidden: run.sh exits $status with:"
sed 's/^/  /' "$TMP/out3"

echo "check_run_sh: OK"
