#!/usr/bin/env bash
# Refresh Mission Control's vendored JavaScript from npm (needs node + npm; the app itself does not).
# Versions are pinned in ui-vendor/package.json and package-lock.json; bump them there, run this,
# check the UI tests, and commit the changed files under src/corral/ui/static/vendor/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$root/ui-vendor/package.json" "$root/ui-vendor/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund)
vendor="$root/src/corral/ui/static/vendor"
mods="$work/node_modules"
mkdir -p "$vendor/licenses"
cp "$mods/cytoscape/dist/cytoscape.esm.min.mjs" "$vendor/cytoscape.esm.min.js"  # .js: served as JavaScript
cp "$mods/drawflow/dist/drawflow.min.js" "$mods/drawflow/dist/drawflow.min.css" "$vendor/"
cp "$mods/js-yaml/dist/js-yaml.min.js" "$vendor/"
for pkg in cytoscape drawflow js-yaml; do
  cp "$mods/$pkg/LICENSE" "$vendor/licenses/$pkg.LICENSE"
done
echo "vendored into $vendor"
