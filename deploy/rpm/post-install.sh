# tern's rpm post-install: on the first install ($1 = 1) a fresh REST secret
# replaces the shipped placeholder in /etc/tern/tern.toml (a %config
# (noreplace) file, which upgrades keep).
if [ "$1" = 1 ] && grep -q '^secrets = \["change-me"\]' /etc/tern/tern.toml; then
  secret=$(head -c 30 /dev/urandom | base64 | tr -d '/+=\n')
  sed -i "s/^secrets = \[\"change-me\"\].*/secrets = [\"$secret\"]/" /etc/tern/tern.toml
fi
chgrp tern /etc/tern/tern.toml
chmod 0640 /etc/tern/tern.toml
# The sysctl snippet at once on a running system (as %sysctl_apply does).
if [ -d /run/systemd/system ]; then
  /usr/lib/systemd/systemd-sysctl 90-tern.conf >/dev/null 2>&1 || :
fi
exit 0
