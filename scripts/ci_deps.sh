#!/usr/bin/env bash
# The Debian packages the test suite needs beyond Python's, installed only when missing:
#   chromium, chromium-driver  the dashboards' real-browser test (Selenium drives them)
#   fonts-dejavu-core          a font for that browser's pages and screenshots
#   kubectl                    `kubectl kustomize` renders the Kubernetes manifests; Debian's
#                              kubernetes-client provides it where no kubectl is installed
# PostgreSQL is not here: scripts/with_postgres.sh starts a throw-away server when initdb is
# installed and otherwise runs the suite without it (those tests skip).
#
# Idempotent and quiet: when everything is present it only looks (well under a second) and
# prints nothing. As root it runs `apt-get install`, and `apt-get update` first only when the
# package lists lack a package (or an install from stale lists fails). Not root, or not on
# Debian, it prints what is missing and how to install it, and exits 0: the build goes on,
# and the tests that need a missing program say so.
set -uo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  missing+=(fonts-dejavu-core)
fi
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)

[ "${#missing[@]}" -eq 0 ] && exit 0

say() { echo "ci_deps: $*" >&2; }

if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  say "missing Debian packages: ${missing[*]}"
  say "install them with: sudo apt-get install -y ${missing[*]}"
  say "(not root or no apt-get: going on without them; the tests that need them will say so)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_quiet() { apt-get -qq -o=Dpkg::Use-Pty=0 "$@" >/tmp/ci_deps.$$.log 2>&1; }
known() {  # every missing package has an install candidate in the current package lists
  local pkg
  for pkg in "${missing[@]}"; do
    apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]' || return 1
  done
}
install() { apt_quiet install -y --no-install-recommends "${missing[@]}"; }

say "installing ${missing[*]}"
if ! known; then
  apt_quiet update || { say "apt-get update failed:"; cat /tmp/ci_deps.$$.log >&2; }
fi
if ! install; then  # stale package lists name files the mirror no longer has
  apt_quiet update && install || {
    say "could not install ${missing[*]}:"
    tail -n 20 /tmp/ci_deps.$$.log >&2
    rm -f /tmp/ci_deps.$$.log
    exit 1
  }
fi
rm -f /tmp/ci_deps.$$.log
