# Operations cases with real tools: promtool, a real Prometheus server,
# systemd-analyze, the Grafana dashboard against live metrics, the install
# script.

ops_setup() {
  OPS_PORT=$(free_port)
  OPS_ADMIN=$(free_port)
  OPS_PEER=$(free_port)
  turnutils_peer -L 127.0.0.1 -p "$OPS_PEER" >"$WORK/ops-peer.log" 2>&1 &
  PIDS+=("$!")
  start_tern ops "$(loopback_config "$OPS_PORT" ops-secret "$OPS_ADMIN" "[allocations]
legacy-channel-numbers = true
[peers]
allow = [\"127.0.0.1/32\"]")"
}

# Traffic for N packets per client in the background; sets TRAFFIC_PID.
ops_traffic() {
  turnutils_uclient -n "$1" -m 2 -l 170 -e 127.0.0.1 -r "$OPS_PEER" -p "$OPS_PORT" \
    -W ops-secret 127.0.0.1 >"$WORK/ops-traffic.log" 2>&1 &
  TRAFFIC_PID=$!
  PIDS+=("$TRAFFIC_PID")
}

case_ops_promtool_metrics() {
  ops_traffic 20
  wait "$TRAFFIC_PID" 2>/dev/null
  local page out deadline=$((SECONDS + 5))
  # Workers publish their counters once a second: poll until the traffic
  # shows (or 5 s pass).
  while :; do
    page=$(curl -fsS "http://127.0.0.1:$OPS_ADMIN/metrics") || { REASON="no /metrics"; return 1; }
    grep -q '^tern_relayed_packets_total{direction="peer_to_client",path="userspace",transport="udp"} [1-9]' <<<"$page" && break
    if [ $SECONDS -ge $deadline ]; then
      REASON="no relayed packets counted; uclient: $(tail -2 "$WORK/ops-traffic.log" | tr '\n' ' ')"; return 1
    fi
    sleep 0.2
  done
  if ! out=$(promtool check metrics <<<"$page" 2>&1); then
    REASON="promtool: $(head -3 <<<"$out" | tr '\n' ' ')"; return 1
  fi
}

case_ops_promtool_rules() {
  local out
  out=$(promtool check rules "$ROOT/deploy/prometheus/tern-alerts.yml" 2>&1) \
    || { REASON="rules: $(tail -2 <<<"$out" | tr '\n' ' ')"; return 1; }
  out=$(cd "$ROOT/deploy/prometheus" && promtool check config prometheus.yml 2>&1) \
    || { REASON="config: $(tail -2 <<<"$out" | tr '\n' ' ')"; return 1; }
}

# prom_query EXPR: the first result's value, or empty.
prom_query() {
  curl -fsS --get "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null
}

case_ops_prometheus_scrape() {
  PROM_PORT=$(free_port)
  mkdir -p "$WORK/prom"
  cat >"$WORK/prom/prometheus.yml" <<YML
global:
  scrape_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/tern-alerts.yml
scrape_configs:
  - job_name: tern
    static_configs:
      - targets: ["127.0.0.1:$OPS_ADMIN"]
YML
  prometheus --config.file="$WORK/prom/prometheus.yml" --storage.tsdb.path="$WORK/prom/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prom.log" 2>&1 &
  local prom=$!
  PIDS+=("$prom")
  ops_traffic 400
  local deadline=$((SECONDS + 40)) live="" first="" later=""
  while [ $SECONDS -lt $deadline ]; do
    live=$(prom_query 'sum(tern_allocations)')
    [ -n "$live" ] && [ "${live%%.*}" -gt 0 ] && break
    sleep 0.5
  done
  if [ -z "$live" ] || [ "${live%%.*}" -le 0 ]; then
    REASON="Prometheus never saw tern_allocations > 0 (last: '$live')"
  else
    first=$(prom_query 'sum(tern_relayed_bytes_total)')
    while [ $SECONDS -lt $deadline ]; do
      later=$(prom_query 'sum(tern_relayed_bytes_total)')
      python3 -c "import sys; sys.exit(0 if float('${later:-0}') > float('${first:-0}') else 1)" && break
      sleep 0.5
    done
    python3 -c "import sys; sys.exit(0 if float('${later:-0}') > float('${first:-0}') else 1)" \
      || REASON="tern_relayed_bytes_total did not grow in Prometheus ($first -> $later)"
  fi
  kill "$TRAFFIC_PID" "$prom" 2>/dev/null; wait "$TRAFFIC_PID" "$prom" 2>/dev/null
  [ -z "$REASON" ]
}

case_ops_systemd_verify() {
  local unit="$WORK/tern.service" out
  sed "s|/usr/local/bin/tern|$TERN_BIN|g" "$ROOT/systemd/tern.service" >"$unit"
  out=$(systemd-analyze verify "$unit" 2>&1)
  if [ -n "$out" ]; then REASON="systemd-analyze: $(head -3 <<<"$out" | tr '\n' ' ')"; return 1; fi
  grep -q '^Type=notify' "$unit" && grep -q '^ExecReload=/bin/kill -HUP' "$unit" \
    || { REASON="unit lacks Type=notify or a SIGHUP reload"; return 1; }
}

case_ops_grafana_dashboard() {
  local page
  page=$(curl -fsS "http://127.0.0.1:$OPS_ADMIN/metrics") || { REASON="no /metrics"; return 1; }
  REASON=$(python3 - "$ROOT/deploy/grafana/tern-dashboard.json" <<PY
import json, re, sys
dash = json.load(open(sys.argv[1]))
names = set(re.findall(r"^(\w+?)(?:_bucket|_sum|_count)?[{ ]", """$page""", re.M))
missing = []
for p in dash["panels"]:
    for t in p["targets"]:
        for m in re.findall(r"\b((?:tern|process)_\w+)", t["expr"]):
            if m not in names:
                missing.append(m)
print(("dashboard uses unknown metrics: " + ", ".join(sorted(set(missing)))) if missing else "")
PY
)
  [ -z "$REASON" ]
}

case_ops_install_script() {
  local out
  out=$(ROOT="$WORK/root" "$ROOT/deploy/install.sh" "$TERN_BIN" 2>&1) \
    || { REASON="install.sh: $(tail -2 <<<"$out" | tr '\n' ' ')"; return 1; }
  for f in usr/local/bin/tern etc/systemd/system/tern.service etc/tern/tern.toml etc/sysctl.d/90-tern.conf; do
    [ -e "$WORK/root/$f" ] || { REASON="install.sh did not write /$f"; return 1; }
  done
  ! grep -q 'change-me' "$WORK/root/etc/tern/tern.toml" || { REASON="installed config keeps the example secret"; return 1; }
}

ops_cases() {
  selected ops || return 0
  ops_setup || { FAILED=$((FAILED + 1)); echo "FAIL ops: tern did not start"; return; }
  local c
  for c in promtool_metrics promtool_rules prometheus_scrape systemd_verify grafana_dashboard install_script; do
    selected "ops-${c//_/-}" && run_case "ops-${c//_/-}" "case_ops_$c"
  done
  stop_tern
}
