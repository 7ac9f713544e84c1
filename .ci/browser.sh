#!/usr/bin/env bash
# Debian's Chromium for the wizard's browser test. Playwright drives it; it never downloads its own.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "chromium missing and apt-get unavailable (not root?): the browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "installed $(/usr/bin/chromium --version)"
