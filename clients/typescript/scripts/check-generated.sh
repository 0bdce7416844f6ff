#!/bin/sh
# Fails when src/gen differs from what the protos generate now: regenerates into a temp dir
# with the same template and plugin, then compares. Fix with `npm run generate`.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx --no-install buf generate -o "$tmp"
if ! diff -r "$tmp/src/gen" src/gen; then
  echo "clients/typescript/src/gen is out of date with proto/: run 'npm run generate' in clients/typescript" >&2
  exit 1
fi
echo "clients/typescript/src/gen matches proto/"
