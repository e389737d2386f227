#!/usr/bin/env bash
# Builds one image FROM scratch out of a minimal context: the static binary
# and the few files the Dockerfile copies (no repository, no Go cache in the
# context). Usage: build.sh candlekeep|nats IMAGE:TAG BINARY [VERSION]
set -euo pipefail
kind=$1 image=$2 bin=$3 version=${4:-dev}
here=$(cd "$(dirname "$0")" && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
case $kind in
candlekeep) cp "$bin" "$ctx/candlekeep"
	ca=/etc/ssl/certs/ca-certificates.crt
	if [ -r "$ca" ]; then cp "$ca" "$ctx/ca-certificates.crt"; else
		echo "build.sh: $ca not found: the image cannot reach https://api.binance.com" >&2
		: >"$ctx/ca-certificates.crt"; fi ;;
nats) cp "$bin" "$ctx/nats-server" ;;
*) echo "build.sh: unknown image kind $kind (want candlekeep or nats)" >&2; exit 2 ;;
esac
mkdir -m 0700 "$ctx/data"
mkdir -m 1777 "$ctx/tmp"
chmod 1777 "$ctx/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\ncandlekeep:x:65532:65532:candlekeep:/data:/sbin/nologin\n' >"$ctx/passwd"
printf 'root:x:0:\ncandlekeep:x:65532:\n' >"$ctx/group"
docker build -q -f "$here/$kind.Dockerfile" --build-arg VERSION="$version" -t "$image" "$ctx"
