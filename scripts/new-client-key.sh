#!/usr/bin/env bash
# Makes a new API key for a client of resilient-qa and prints the [[clients]] entry of
# clients.file for it. The key is printed once, here: give it to the client; the file
# holds only its SHA-256.
#
#   scripts/new-client-key.sh NAME        e.g. scripts/new-client-key.sh acme-web
#
# To hash a key you already have: printf %s "$KEY" | sha256sum   (no newline after it)
set -euo pipefail

name="${1:?usage: scripts/new-client-key.sh NAME}"
case "$name" in
    *'"'* | *'\'*) echo "new-client-key: the name may not hold \" or \\" >&2; exit 2 ;;
esac
# 32 random bytes, as 64 hex digits, behind a prefix that says what the key is for.
key="qa-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
hash="$(printf %s "$key" | sha256sum | cut -d' ' -f1)"

echo "key (give it to the client; it is not stored anywhere):" >&2
echo "  $key" >&2
echo >&2
cat <<TOML
[[clients]]
name = "$name"
key_sha256 = "$hash"
# rps = 5.0
# burst = 20
# model_calls_per_day = 5000
TOML
