#!/usr/bin/env bash
# Build the documentation site and render its main pages with headless Chromium, to look at
# them as a reader does (broken layout, missing images, unrendered Markdown).
#
#   bash docs/screenshots.sh [OUTDIR]      # PNGs in OUTDIR (default docs/screenshots/, not committed)
#
# Needs the dev extra (mkdocs) and Chromium (Debian: apt-get install -y chromium). Nothing
# is fetched from the network: the site uses no web fonts, and Chromium's background
# networking is off.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/screenshots}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
CHROMIUM="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$CHROMIUM" ]; then
    echo "Chromium not found: apt-get install -y chromium" >&2
    exit 1
fi

NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --site-dir site --quiet
mkdir -p "$OUT"

PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PY" -m http.server "$PORT" --bind 127.0.0.1 --directory site > /dev/null 2>&1 &
SERVER=$!
PROFILE="$(mktemp -d)"
trap 'kill "$SERVER" 2> /dev/null || true; rm -rf "$PROFILE"' EXIT
for _ in $(seq 50); do  # wait for the server (at most ~5 s)
    "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" 2> /dev/null && break
    sleep 0.1
done

# page path in the site -> PNG name
PAGES=(
    "|home"
    "getting-started/|getting-started"
    "concepts/|concepts"
    "how-to/cluster/|how-to-cluster"
    "how-to/training/|how-to-training"
    "how-to/choosing/|how-to-choosing"
    "reference/cli/|reference-cli"
    "reference/store-format/|reference-store-format"
    "reference/api/teachers/|reference-api-teachers"
    "reference/api/dataset/|reference-api-dataset"
    "results/|results"
    "design/|design"
)
for entry in "${PAGES[@]}"; do
    path="${entry%%|*}"
    name="${entry##*|}"
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --hide-scrollbars --user-data-dir="$PROFILE" --window-size=1280,1600 \
        --screenshot="$OUT/$name.png" "http://127.0.0.1:$PORT/$path" > /dev/null 2>&1
    echo "$OUT/$name.png  <-  /$path"
done
