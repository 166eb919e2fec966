#!/usr/bin/env bash
# Installs the Debian packages that the tests need and pip cannot provide, if any is missing:
# headless Chromium (the run report's rendering test) and the documentation packages that the
# bundled sample is rebuilt from (tests/test_sample.py) and that the extraction-fidelity and PII
# precision measurements read. Called by `make test`; needs root or sudo when something is missing.
set -euo pipefail
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
