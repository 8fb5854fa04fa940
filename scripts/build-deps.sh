# shellcheck shell=bash
# The system tools the build needs, for scripts/run.sh and scripts/test.sh. Meant to be
# sourced (`source scripts/build-deps.sh`), not run: it only defines ensure_build_tools.
#
# Pingora depends on flate2 with zlib-ng (crate libz-ng-sys), whose build script runs `cmake`,
# which drives `make` and the C compiler `cc`; other native dependencies (ring, aws-lc-sys,
# zstd-sys, libsqlite3-sys, libmimalloc-sys) compile C with `cc` too. Without them
# `cargo build` fails after a couple of minutes with "is cmake not installed?".
#
# ensure_build_tools [PACKAGE...]
#   Checks for cmake, cc, g++ and make (`command -v`). For each one missing it prints what it
#   installs and why, then installs the Debian packages (cmake, gcc, g++, make) with apt-get:
#   `apt-get update -qq`, then `apt-get install -y -qq --no-install-recommends`, through sudo
#   when not root. Extra PACKAGEs (Debian package names the caller already knows are missing;
#   scripts/test.sh passes its Redis, PostgreSQL, ...) go into the same apt-get run.
#   Without apt-get (or, when not root, without sudo) it prints what is missing and how to
#   install it, and returns 1.
#   GATEHOUSE_SETUP_DRY_RUN=1: prints the same "installing" lines and the exact apt-get
#   commands it would run, without running them.

ensure_build_tools() {
  local -a tools=(cmake cc g++ make)
  local -A package=([cmake]=cmake [cc]=gcc [g++]=g++ [make]=make)
  local -A reason=(
    [cmake]="needed to build Pingora's zlib-ng, crate libz-ng-sys"
    [cc]="the C compiler cc, needed to build zlib-ng and the other C code in the dependencies"
    [g++]="the C++ compiler, for the native dependencies' cmake/cc builds"
    [make]="runs the build that cmake generates for zlib-ng"
  )
  local -a missing=() packages=()
  local tool
  for tool in "${tools[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      missing+=("$tool")
      packages+=("${package[$tool]}")
    fi
  done
  packages+=("$@")
  if ((${#packages[@]} == 0)); then return 0; fi

  if ! command -v apt-get >/dev/null 2>&1; then
    if ((${#missing[@]} > 0)); then
      echo "gatehouse: missing ${missing[*]}, needed to build gatehouse (Pingora's zlib-ng is built with cmake, make and a C compiler)." >&2
    fi
    echo "gatehouse: apt-get is not available here, so nothing was installed. Install ${packages[*]} with your system's package manager" >&2
    echo "  (e.g. Fedora: sudo dnf install cmake gcc gcc-c++ make; Arch: sudo pacman -S cmake gcc make; macOS: xcode-select --install && brew install cmake)," >&2
    echo "  then run this again." >&2
    return 1
  fi

  local -a sudo=()
  if ((EUID != 0)); then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "gatehouse: ${packages[*]} must be installed, but this is not root and sudo is not available." >&2
      echo "  As root, run: apt-get update && apt-get install -y --no-install-recommends ${packages[*]}" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  local -a update=("${sudo[@]}" apt-get update -qq)
  local -a install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${packages[@]}")

  for tool in "${missing[@]}"; do
    echo "gatehouse: installing ${package[$tool]} (${reason[$tool]}) with apt-get" >&2
  done
  if (($# > 0)); then
    echo "gatehouse: installing $* (requested by ${0##*/}) with apt-get" >&2
  fi

  if [ "${GATEHOUSE_SETUP_DRY_RUN:-0}" = 1 ]; then
    echo "gatehouse: dry run (GATEHOUSE_SETUP_DRY_RUN=1), would run:" >&2
    echo "  ${update[*]}" >&2
    echo "  ${install[*]}" >&2
    return 0
  fi
  "${update[@]}"
  "${install[@]}"
  for tool in "${missing[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "gatehouse: $tool is still not on PATH after installing ${package[$tool]}" >&2
      return 1
    fi
  done
}
