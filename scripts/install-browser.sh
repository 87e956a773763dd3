#!/usr/bin/env bash
# Idempotent installer of what the real-browser tests of the chat page and the widget
# (tests/api/browser.rs, through tests/browser/chat.mjs) need:
#   /usr/bin/chromium            Debian's chromium, via apt-get when missing (root or sudo)
#   fonts-wqy-microhei           a small CJK font for the Chinese page (apt-get, when missing)
#   tests/browser/node_modules   npm ci from tests/browser/package-lock.json: playwright-core
#                                and axe-core, pinned. playwright-core never downloads a
#                                browser: the tests drive Debian's /usr/bin/chromium.
# node_modules is gitignored. A stamp file holds a hash of the lock file, node's version and
# chromium's version: when nothing changed, a rerun only checks and prints.
# Needs node and npm on PATH.
set -euo pipefail

log() { printf '%s\n' "$*"; }
die() { printf 'install-browser: %s\n' "$*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
browser="$root/tests/browser"
stamp="$browser/node_modules/.install-browser-stamp"
chromium=/usr/bin/chromium

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done

# ---------------------------------------------------------------- chromium and a CJK font (apt)
# The font is for the Chinese page (screenshots, layout): Debian's chromium brings Latin
# fonts only. Any CJK font already there will do (fontconfig comes with chromium).
have_cjk_font() { command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=zh family 2>/dev/null)" ]; }
missing_pkgs=()
if [ -x "$chromium" ]; then
    log "present:   chromium ($chromium)"
else
    missing_pkgs+=(chromium)
fi
if have_cjk_font; then
    log "present:   a CJK font ($(fc-list :lang=zh family | head -n1))"
else
    missing_pkgs+=(fonts-wqy-microhei)
fi
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        die "${missing_pkgs[*]} missing and installing needs root (or sudo), which this user has not"
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing_pkgs[*]} by hand"
    log "apt:       apt-get update (missing: ${missing_pkgs[*]})"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=600
    log "apt:       apt-get install ${missing_pkgs[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing_pkgs[@]}" >/dev/null
    [ -x "$chromium" ] || die "$chromium still missing after apt-get install ${missing_pkgs[*]}"
    have_cjk_font || die "no CJK font after apt-get install ${missing_pkgs[*]}"
    log "installed: ${missing_pkgs[*]}"
fi
chromium_version="$("$chromium" --version 2>/dev/null || true)"

# ---------------------------------------------------------------- node modules (npm ci)
want="$(cat "$browser/package-lock.json" <(node --version) <(printf '%s\n' "$chromium_version") \
    | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -f "$browser/node_modules/playwright-core/package.json" ] \
    && [ -f "$browser/node_modules/axe-core/axe.min.js" ]; then
    log "present:   browser test modules (stamp unchanged)"
else
    log "node:      npm ci (tests/browser/node_modules)"
    # playwright-core has no install script that fetches a browser; this keeps it so if a
    # later version grew one.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
        npm ci --prefix "$browser" --no-audit --no-fund --loglevel=error >/dev/null
    printf '%s\n' "$want" >"$stamp"
fi

ver() { node -p 'require(process.argv[1]).version' "$browser/node_modules/$1/package.json"; }
log "installed: playwright-core@$(ver playwright-core) axe-core@$(ver axe-core) (node $(node --version)); ${chromium_version:-chromium (version unknown)}"
