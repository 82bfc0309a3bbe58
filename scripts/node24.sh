#!/bin/sh
# Makes sure a Node.js 24 runtime is available and prints the folder holding its `node`.
# Uses the machine's node when it is already 24 or newer; otherwise installs the npm
# registry's `node` package (which carries the official binary) into .tools/node24.
# It must not touch anything outside the project folder.
set -eu
NODE_VERSION=24.21.0
root=$(cd "$(dirname "$0")/.." && pwd)
if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$major" -ge 24 ]; then
        dirname "$(command -v node)"
        exit 0
    fi
fi
dir="$root/.tools/node24"
bin="$dir/node_modules/node/bin"
if [ ! -x "$bin/node" ] || [ "$("$bin/node" -p process.versions.node 2>/dev/null)" != "$NODE_VERSION" ]; then
    mkdir -p "$dir"
    # A package.json of its own keeps npm from taking the project (and its engine-strict
    # .npmrc, which the old Node fails) as the place to install into.
    [ -f "$dir/package.json" ] || echo '{ "private": true }' >"$dir/package.json"
    echo "installing Node.js $NODE_VERSION into .tools/node24 (npm registry package 'node')" >&2
    (cd "$dir" && npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund --loglevel=error "node@$NODE_VERSION" >&2)
fi
echo "$bin"
