#!/usr/bin/env bash
# Render results/report.html in headless Chromium: writes a full-page screenshot and checks that every
# embedded figure decodes (naturalWidth > 0). Needs Debian's chromium: `apt-get install -y chromium`.
# Usage: bash scripts/check-report-render.sh [report.html] [screenshot.png]
set -euo pipefail
report=$(realpath "${1:-results/report.html}")
shot=$(realpath -m "${2:-results/report-screenshot.png}")
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "check-report-render: no chromium found (apt-get install -y chromium)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$tmp/profile" --virtual-time-budget=10000)
# a copy of the report that writes the decoded width of each <img> into the page title
sed 's#</body>#<script>window.addEventListener("load",()=>{document.title="widths:"+[...document.images].map(i=>i.naturalWidth).join(",")})</script></body>#' \
  "$report" > "$tmp/probe.html"
title=$("$browser" "${flags[@]}" --dump-dom "file://$tmp/probe.html" 2>/dev/null | grep -o '<title>widths:[^<]*' | sed 's/<title>widths://')
"$browser" "${flags[@]}" --window-size=1200,4000 --screenshot="$shot" "file://$report" 2>/dev/null
echo "figures decoded, widths in px: ${title:-none}"
echo "screenshot: $shot"
[ -n "$title" ] && ! echo "$title" | tr ',' '\n' | grep -qx 0
