#!/usr/bin/env bash
# Debian's Chromium for the page tests (tests/serve/test_page.py drives it with Playwright; no Playwright
# browser download is needed). Silent and quick when chromium is already there; otherwise
# `apt-get update && apt-get install chromium`, as root or through `sudo -n` (never a password prompt).
# Exit 0 when chromium is there afterwards, 1 when it could not be installed (the page tests then skip).
set -u

have_chromium() { [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; }

have_chromium && exit 0

say() { echo "install-browser: $*" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
    say "chromium is missing and there is no apt-get here: install Chromium yourself (the page tests skip without it)"
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo -n "$@"; }
else
    say "chromium is missing; not root and no sudo: run \`apt-get install chromium\` as root (the page tests skip without it)"
    exit 1
fi

say "installing Debian's chromium for the page tests (apt-get install chromium)"
if as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
        && have_chromium; then
    exit 0
fi
say "could not install chromium (apt-get failed, or sudo needs a password): the page tests will skip"
exit 1
