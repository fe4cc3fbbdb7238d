# Interop cases for the distribution packages (scripts/package): lintian
# and rpmlint on them, and each one's life cycle (install, upgrade, remove)
# with dpkg and with rpm in a scratch root: a copy-on-write overlay of this
# machine's own root file system in a private mount namespace, so nothing
# reaches the host and everything vanishes when the case ends. Needs root.

PK_DEB=""
PK_DEB2=""
PK_RPM=""
PK_RPM2=""

package_setup() {
  local out
  # cargo deb clears target/debian, so each package is copied out as made.
  out=$(cd "$ROOT" && scripts/package 2>&1) || { echo "$out" | tail -20; return 1; }
  cp "$ROOT"/target/debian/tern_0.1.0-1_*.deb "$WORK/v1.deb" && PK_DEB="$WORK/v1.deb" || return 1
  cp "$ROOT"/target/generate-rpm/tern-0.1.0-1.*.rpm "$WORK/v1.rpm" && PK_RPM="$WORK/v1.rpm" || return 1
  out=$(cd "$ROOT" && PACKAGE_VERSION=0.1.1 scripts/package 2>&1) || { echo "$out" | tail -20; return 1; }
  cp "$ROOT"/target/debian/tern_0.1.1-1_*.deb "$WORK/v2.deb" && PK_DEB2="$WORK/v2.deb" || return 1
  cp "$ROOT"/target/generate-rpm/tern-0.1.1-1.*.rpm "$WORK/v2.rpm" && PK_RPM2="$WORK/v2.rpm"
}

case_package_deb_lintian() {
  local out
  # lintian leaves a database of its ELF index in TMPDIR on every run
  # (mldbm-elf-*): keep it in the run's work directory, removed at the end.
  out=$(TMPDIR="$WORK" lintian --fail-on error --tag-display-limit 0 "$PK_DEB" 2>&1) || { REASON="lintian: $out"; return 1; }
}

case_package_rpm_rpmlint() {
  local out
  out=$(rpmlint -r "$ROOT/deploy/rpm/tern.rpmlintrc" "$PK_RPM" 2>&1) || { REASON="rpmlint: $(tail -15 <<<"$out")"; return 1; }
}

# The steps run inside the scratch root (see pk_chroot); any failing check
# prints why and exits non-zero. PK_INSTALLED: what either package must
# have installed; then each one's life cycle.
PK_INSTALLED='
fail() { echo "$*"; exit 1; }
[ -x /usr/bin/tern ] || fail "no /usr/bin/tern"
getent passwd tern >/dev/null || fail "no tern user"
conf=/etc/tern/tern.toml
[ "$(stat -c %U:%G:%a $conf)" = root:tern:640 ] || fail "config is $(stat -c %U:%G:%a $conf)"
grep -q change-me $conf && fail "the placeholder secret was not replaced"
grep -qE "^secrets = \[\"[A-Za-z0-9]{30,}\"\]" $conf || fail "no generated secret: $(grep ^secrets $conf)"
grep -q "^allow = \[\]" $conf || fail "the example loopback allowance was installed"
grep -qE "^name = \"alice\"" $conf && fail "the example user was installed"
su -s /bin/sh tern -c "/usr/bin/tern check-config $conf" >/pkg/check.log 2>&1 || fail "check-config as tern: $(cat /pkg/check.log)"
[ -f /usr/lib/sysctl.d/90-tern.conf ] || fail "no sysctl snippet"
'

PK_DEB_LIFECYCLE='
set -eu
dpkg -i /pkg/v1.deb </dev/null >/pkg/dpkg.log 2>&1 || { echo "install: $(tail -5 /pkg/dpkg.log)"; exit 1; }
'"$PK_INSTALLED"'
unit=$(dpkg -L tern | grep "/tern.service$") || fail "no unit"
grep -q "^ExecStart=/usr/bin/tern --config /etc/tern/tern.toml$" "$unit" || fail "unit: $(grep ^ExecStart "$unit")"
out=$(systemd-analyze verify "$unit" 2>&1) && [ -z "$out" ] || fail "systemd-analyze verify: $out"
secret=$(grep "^secrets = " $conf)
echo "# an operator edit" >>$conf
dpkg -i /pkg/v2.deb </dev/null >/pkg/dpkg.log 2>&1 || fail "upgrade: $(tail -5 /pkg/dpkg.log)"
[ "$(dpkg-query -W -f "\${Version}" tern)" = 0.1.1-1 ] || fail "not upgraded"
[ "$(grep "^secrets = " $conf)" = "$secret" ] || fail "the upgrade changed the secret"
grep -q "^# an operator edit$" $conf || fail "the upgrade dropped the operator edit"
[ "$(stat -c %G $conf)" = tern ] || fail "the upgrade changed the config group"
dpkg --purge tern </dev/null >/pkg/dpkg.log 2>&1 || fail "purge: $(tail -5 /pkg/dpkg.log)"
[ -e /usr/bin/tern ] && fail "/usr/bin/tern left after purge"
[ -e /etc/tern ] && fail "/etc/tern left after purge: $(ls -la /etc/tern)"
[ -e "$unit" ] && fail "$unit left after purge"
dpkg-query -W tern >/dev/null 2>&1 && fail "still known to dpkg"
echo lifecycle-ok
'

# Debian's rpm, with a database of its own in the scratch root: --nodeps,
# since that database knows none of the Debian packages underneath. An
# erase keeps an edited config as tern.toml.rpmsave, as rpm does.
PK_RPM_LIFECYCLE='
set -eu
rpm -i --nodeps /pkg/v1.rpm >/pkg/rpm.log 2>&1 || { echo "install: $(tail -5 /pkg/rpm.log)"; exit 1; }
'"$PK_INSTALLED"'
unit=/usr/lib/systemd/system/tern.service
grep -q "^ExecStart=/usr/bin/tern --config /etc/tern/tern.toml$" "$unit" || fail "unit: $(grep ^ExecStart "$unit")"
secret=$(grep "^secrets = " $conf)
echo "# an operator edit" >>$conf
rpm -U --nodeps /pkg/v2.rpm >/pkg/rpm.log 2>&1 || fail "upgrade: $(tail -5 /pkg/rpm.log)"
[ "$(rpm -q --qf "%{VERSION}" tern)" = 0.1.1 ] || fail "not upgraded"
[ "$(grep "^secrets = " $conf)" = "$secret" ] || fail "the upgrade changed the secret"
grep -q "^# an operator edit$" $conf || fail "the upgrade dropped the operator edit"
[ "$(stat -c %U:%G:%a $conf)" = root:tern:640 ] || fail "after the upgrade the config is $(stat -c %U:%G:%a $conf)"
rpm -e tern >/pkg/rpm.log 2>&1 || fail "erase: $(tail -5 /pkg/rpm.log)"
[ -e /usr/bin/tern ] && fail "/usr/bin/tern left after erase"
[ -e "$unit" ] && fail "$unit left after erase"
[ -e $conf ] && fail "$conf left after erase"
rpm -q tern >/dev/null 2>&1 && fail "still known to rpm"
echo lifecycle-ok
'

# pk_chroot SCRIPT: run SCRIPT with sh in a scratch root, with the
# packages as /pkg/v1.deb, /pkg/v2.deb, /pkg/v1.rpm and /pkg/v2.rpm.
pk_chroot() {
  local t="$WORK/scratch"
  mkdir -p "$t"
  unshare -m --propagation private sh -euc '
    t=$1
    mount -t tmpfs tmpfs "$t"
    mkdir "$t/upper" "$t/work" "$t/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$t/upper,workdir=$t/work" "$t/root"
    mount -t proc proc "$t/root/proc"
    mount --rbind /dev "$t/root/dev"
    mount -t tmpfs tmpfs "$t/root/run"
    mount -t tmpfs tmpfs "$t/root/tmp"
    mkdir "$t/root/pkg"
    cp "$2" "$t/root/pkg/v1.deb"; cp "$3" "$t/root/pkg/v2.deb"
    cp "$4" "$t/root/pkg/v1.rpm"; cp "$5" "$t/root/pkg/v2.rpm"
    chroot "$t/root" sh -c "$6"
  ' pk "$t" "$PK_DEB" "$PK_DEB2" "$PK_RPM" "$PK_RPM2" "$1"
}

# pk_lifecycle SCRIPT: SCRIPT ends with lifecycle-ok in a scratch root,
# and nothing of it reached the host.
pk_lifecycle() {
  local out
  out=$(pk_chroot "$1" 2>&1)
  [ "$(tail -1 <<<"$out")" = lifecycle-ok ] || { REASON="$(tail -3 <<<"$out" | tr '\n' ' ')"; return 1; }
  [ -e /usr/bin/tern ] && { REASON="the scratch root leaked onto the host"; return 1; }
  return 0
}

case_package_deb_lifecycle() { pk_lifecycle "$PK_DEB_LIFECYCLE"; }
case_package_rpm_lifecycle() { pk_lifecycle "$PK_RPM_LIFECYCLE"; }

package_cases() {
  selected package || return 0
  if [ "$(id -u)" != 0 ]; then
    skip_group package "needs root (a scratch root with dpkg and rpm)"; return 0
  fi
  local tool
  for tool in lintian rpmlint rpm; do
    command -v "$tool" >/dev/null ||
      { FAILED=$((FAILED + 1)); echo "FAIL package: $tool not installed (run scripts/setup)"; return; }
  done
  package_setup || { FAILED=$((FAILED + 1)); echo "FAIL package: scripts/package failed"; return; }
  local c
  for c in package_deb_lintian package_deb_lifecycle package_rpm_rpmlint package_rpm_lifecycle; do
    selected "${c//_/-}" && run_case "${c//_/-}" "case_$c"
  done
}
