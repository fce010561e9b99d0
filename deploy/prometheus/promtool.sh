#!/usr/bin/env bash
# Print the path of a promtool binary, taken from Debian's prometheus package into .cache/tools on
# first use (no installation; nothing outside the repository's cache folder changes).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir="$repo/.cache/tools/prometheus"
tool="$dir/usr/bin/promtool"
if [ ! -x "$tool" ]; then
  mkdir -p "$dir"
  (
    cd "$dir"
    apt-get download prometheus >&2 2>/dev/null || { apt-get update -qq >&2 && apt-get download prometheus >&2; }
    dpkg -x prometheus_*.deb "$dir"
    rm -f prometheus_*.deb
  )
fi
echo "$tool"
