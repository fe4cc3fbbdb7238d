#!/usr/bin/env bash
# Install tern as a systemd service on a Debian host.
#   sudo deploy/install.sh [BINARY]        (default: target/release/tern)
# ROOT=/some/dir installs into that tree instead of / (no user, no systemctl),
# which is how the test suite checks this script.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/tern}
ROOT=${ROOT:-/}
[ -x "$BIN" ] || { echo "install: $BIN not found; run cargo build --release" >&2; exit 1; }

install -D -m 0755 "$BIN" "$ROOT/usr/local/bin/tern"
install -D -m 0644 systemd/tern.service "$ROOT/etc/systemd/system/tern.service"
install -D -m 0644 deploy/sysctl/90-tern.conf "$ROOT/etc/sysctl.d/90-tern.conf"
install -d -m 0750 "$ROOT/etc/tern"

if [ "$ROOT" = / ] && ! id tern >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tern
fi

conf="$ROOT/etc/tern/tern.toml"
if [ ! -f "$conf" ]; then
  # The example config with a fresh random REST secret and no example user.
  secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
  deploy/example-config | sed -e "s/^secrets = \[\"change-me\"\].*/secrets = [\"$secret\"]/" > "$conf"
  chmod 0640 "$conf"
  echo "install: wrote $conf with a new REST secret; set realm and relay addresses there"
fi
"$ROOT/usr/local/bin/tern" check-config "$conf"

if [ "$ROOT" = / ]; then
  chgrp tern /etc/tern "$conf"
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    sysctl --system >/dev/null || true
    systemctl daemon-reload
    echo "install: start with: systemctl enable --now tern"
  fi
fi
