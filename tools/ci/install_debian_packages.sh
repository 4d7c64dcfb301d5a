#!/usr/bin/env bash
# Installs the Debian packages listed in tools/ci/debian-packages.txt that are not
# installed yet (as root, or through sudo). Does nothing when all are there.
set -euo pipefail
cd "$(dirname "$0")/../.."

mapfile -t packages < <(grep -v '^\s*\(#\|$\)' tools/ci/debian-packages.txt)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "debian packages ready: ${packages[*]}"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi
echo "installing debian packages: ${missing[*]}"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
