#!/usr/bin/env bash
# The browser the Space's tests drive: Debian's chromium (Playwright's own browser download cannot work offline).
# Installed here, at setup, so that `make test-all` never fails halfway through the suite for want of it.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium for the Space's browser tests (apt-get, once)." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium for the Space's browser tests (sudo apt-get, once)." >&2
  sudo apt-get update -qq >/dev/null
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -x /usr/bin/chromium ] || {
  echo "setup: the tests need chromium at /usr/bin/chromium; install it with \`sudo apt-get install -y chromium\`, then run \`make test-all\` again." >&2
  exit 1
}
