# Shared helpers for the interop suite: free ports, starting and stopping a
# tern, and PASS/FAIL bookkeeping. Sourced by tests/interop/run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TERN_BIN=${TERN_BIN:-$ROOT/target/release/tern}
WORK=$(mktemp -d /tmp/tern-interop.XXXXXX)
PIDS=()
PASSED=0
FAILED=0
REASON=""
RAN=()
SKIPPED=()

# Commands a group adds to run at exit however the suite ends (e.g.
# removing the network namespaces it made).
CLEANUP_HOOKS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for h in "${CLEANUP_HOOKS[@]}"; do $h; done
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# A port free for both UDP and TCP on 127.0.0.1 and ::1.
free_port() {
  python3 - <<'PY'
import socket
for _ in range(200):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        for fam, typ, host in [(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                               (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
                               (socket.AF_INET6, socket.SOCK_STREAM, "::1")]:
            t = socket.socket(fam, typ); t.bind((host, port)); t.close()
    except OSError:
        s.close(); continue
    s.close(); print(port); break
PY
}

# start_tern NAME CONFIG_TEXT: start tern, wait until it serves. Sets TERN_PID.
# TERN_WRAP, if set, is a command to start it under (e.g. ip netns exec NS).
start_tern() {
  local name=$1 text=$2
  printf '%s\n' "$text" > "$WORK/$name.toml"
  ${TERN_WRAP:-} "$TERN_BIN" --config "$WORK/$name.toml" --log-format text >"$WORK/$name.log" 2>&1 &
  TERN_PID=$!
  PIDS+=("$TERN_PID")
  local deadline=$((SECONDS + 15))
  until grep -q "tern serving" "$WORK/$name.log" 2>/dev/null; do
    if ! kill -0 "$TERN_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "tern did not start:"; cat "$WORK/$name.log"; return 1
    fi
    sleep 0.1
  done
}

# loopback_config PORT SECRET ADMIN_PORT [EXTRA]: a tern config serving UDP
# and TCP on 127.0.0.1:PORT with relays on 127.0.0.1, the REST secret
# SECRET, admin HTTP on ADMIN_PORT (0: any), then the TOML in EXTRA.
loopback_config() {
  printf '[listen]\nudp = ["127.0.0.1:%s"]\ntcp = ["127.0.0.1:%s"]\n' "$1" "$1"
  printf '[relay]\naddress-ipv4 = "127.0.0.1"\naddress-ipv6 = "none"\n'
  printf '[auth]\nsecrets = ["%s"]\n[admin]\nlisten = "127.0.0.1:%s"\n%s\n' "$2" "$3" "${4:-}"
}

# mint_credential NAME USER: a REST credential from `tern credentials` for
# the running tern NAME; sets CRED_USER and CRED_PASS.
mint_credential() {
  local json
  json=$("$TERN_BIN" credentials --config "$WORK/$1.toml" --user "$2" --ttl 600 --json)
  CRED_USER=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["username"])' <<<"$json")
  CRED_PASS=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])' <<<"$json")
}

stop_tern() {
  kill -INT "$TERN_PID" 2>/dev/null || true  # stop now; SIGTERM would drain
  wait "$TERN_PID" 2>/dev/null || true
}

# run_case NAME FUNCTION: run one case, print PASS/FAIL with the reason.
run_case() {
  local name=$1 fn=$2 started=$SECONDS
  REASON=""
  RAN+=("$name")
  if "$fn"; then
    PASSED=$((PASSED + 1)); echo "PASS $name ($((SECONDS - started))s)"
  else
    FAILED=$((FAILED + 1)); echo "FAIL $name: ${REASON:-failed} ($((SECONDS - started))s)"
  fi
}

# skip GROUP WHY: a group that cannot run here (e.g. not as root); its
# cases are then not expected.
skip_group() {
  SKIPPED+=("$1"); echo "SKIP $1: $2"
}

# The cases README's interop table names ({a,b} expanded) against those
# this run ran: a case added, renamed or dropped without README is a failure.
case_readme_lists_every_case() {
  REASON=$(printf '%s\n' "${RAN[@]}" | python3 -c '
import itertools, re, sys
table = open(sys.argv[1]).read().split("### The interop suite")[1].split("| Cases |")[1]
listed = set()
for row in table.splitlines()[2:]:
    if not row.startswith("|"):
        break
    for name in row.split("|")[1].split("`")[1::2]:
        parts = [p[1:-1].split(",") if p.startswith("{") else [p] for p in re.split(r"(\{[^}]*\})", name)]
        listed.update("".join(c) for c in itertools.product(*parts))
ran = set(sys.stdin.read().split()) - {"readme-lists-every-case"}
groups = {n[:-1] for n in listed if n.endswith("*")}
covered = lambda n: n in listed or any(n.startswith(g) for g in groups)
out = []
unlisted = sorted(n for n in ran if not covered(n))
if unlisted: out.append("not in README: " + ", ".join(unlisted))
skipped = sys.argv[2:]
expected = lambda n: not n.endswith("*") and not any(n.startswith(g) for g in skipped)
gone = sorted(n for n in listed if expected(n) and n not in ran)
if gone: out.append("README lists cases that did not run: " + ", ".join(gone))
print("; ".join(out))
' "$ROOT/README.md" "${SKIPPED[@]}")
  [ -z "$REASON" ]
}

# selected NAME: whether the command line asked for this case or group (all
# if none): a selector matches names it is a prefix of, and groups that are a
# prefix of it.
selected() {
  [ ${#SELECTED[@]} -eq 0 ] && return 0
  local s
  for s in "${SELECTED[@]}"; do [[ $1 == "$s"* || $s == "$1"* ]] && return 0; done
  return 1
}
