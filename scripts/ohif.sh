#!/usr/bin/env bash
# Install, once and cached, what the OHIF viewer test (tests/ohif.rs) needs: the prebuilt
# dist/ of npm's @ohif/app (the package's tarball only: its dependencies are build-time ones)
# and playwright-core to drive Debian's /usr/bin/chromium. Prints the directory.
#   scripts/ohif.sh            # -> /var/cache/pacsd-ci/ohif-3.13.2
set -euo pipefail
OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1.65.1
DIR=${PACSD_OHIF_DIR:-${PACSD_CI_CACHE:-/var/cache/pacsd-ci}/ohif-$OHIF_VERSION}
if [ ! -f "$DIR/package/dist/index.html" ] || [ ! -d "$DIR/node_modules/playwright-core" ]; then
    mkdir -p "$DIR"
    cd "$DIR"
    npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null
    tar xzf "ohif-app-$OHIF_VERSION.tgz"
    rm -f "ohif-app-$OHIF_VERSION.tgz"
    echo '{"name":"pacsd-ohif-test","private":true}' > package.json
    npm install --silent --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi
echo "$DIR"
