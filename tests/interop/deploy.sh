# Interop cases for the deployment files: the container's Dockerfile
# (hadolint, and its build stage's own commands run natively) and the
# Kubernetes manifests (kubernetes-validate --strict, offline), and the
# DaemonSet's init step run as it would on a node (with a stand-in kubectl
# that answers for a node), producing a config tern serves.

DP_K8S="$ROOT/deploy/kubernetes"

case_deploy_dockerfile_lint() {
  local out
  out=$("$ROOT/.venv/bin/hadolint" "$ROOT/deploy/container/Dockerfile" 2>&1) ||
    { REASON="hadolint: $out"; return 1; }
  # Every file the build stage copies exists and is in the build context
  # Dockerfile.dockerignore leaves.
  out=$("$ROOT/.venv/bin/python" - "$ROOT" <<'PY'
import os, sys
root = sys.argv[1]
d = os.path.join(root, "deploy", "container")
kept = {l[1:].strip() for l in open(os.path.join(d, "Dockerfile.dockerignore")) if l.startswith("!")}
for line in open(os.path.join(d, "Dockerfile")):
    words = line.split()
    if words[:1] == ["COPY"] and not words[1].startswith("--from"):
        for src in words[1:-1]:
            if src not in kept or not os.path.exists(os.path.join(root, src)):
                print(f"COPY {src}: missing or left out of the context")
PY
)
  [ -z "$out" ] || { REASON="$out"; return 1; }
}

# The build stage's RUN that builds tern, run here as written (with its
# /out under $WORK) in a copy of just the files the Dockerfile copies (the
# compiled dependencies shared with target/): the image holds what this
# machine built and tested, and its build context is enough to build it.
case_deploy_dockerfile_build_steps() {
  local run out
  run=$("$ROOT/.venv/bin/python" - "$ROOT/deploy/container/Dockerfile" <<'PY'
import sys
lines = open(sys.argv[1]).read().replace("\\\n", " ").splitlines()
print(next(l[4:] for l in lines if l.startswith("RUN cargo build")))
PY
) || { REASON="no RUN cargo build in the Dockerfile"; return 1; }
  [[ $run == *"cargo build --release --locked"* ]] ||
    { REASON="the image builds otherwise than CI: $run"; return 1; }
  local ctx="$WORK/context" src
  mkdir -p "$ctx"
  for src in $(sed -n 's/^!//p' "$ROOT/deploy/container/Dockerfile.dockerignore"); do
    cp -r "$ROOT/$src" "$ctx/"
  done
  ln -s "$ROOT/target" "$ctx/target"
  out=$(cd "$ctx" && bash -euc "${run//\/out/$WORK/image}" 2>&1) ||
    { REASON="build steps: $(tail -5 <<<"$out")"; return 1; }
  getcap "$WORK/image/usr/bin/tern" | grep -q cap_net_bind_service ||
    { REASON="the binary carries no NET_BIND_SERVICE file capability"; return 1; }
}

case_deploy_kubernetes_validate() {
  local f files=() out
  for f in "$DP_K8S"/*.yaml; do [ "${f##*/}" = kustomization.yaml ] || files+=("$f"); done
  out=$("$ROOT/.venv/bin/kubernetes-validate" --strict --quiet "${files[@]}" 2>&1) ||
    { REASON="kubernetes-validate: $out"; return 1; }
  # Every manifest but the example Secret is in the kustomization, and
  # every resource it names exists.
  out=$("$ROOT/.venv/bin/python" - "$DP_K8S" <<'PY'
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
listed = set(k["resources"])
have = {f for f in os.listdir(d) if f.endswith(".yaml")} - {"kustomization.yaml", "secret.example.yaml"}
if listed != have:
    print("kustomization resources", sorted(listed), "files", sorted(have))
PY
)
  [ -z "$out" ] || { REASON="$out"; return 1; }
}

# dp_render NAME ANNOTATION EXTERNAL_IP: the init step's script from
# daemonset.yaml, run with NODE_IP=127.0.0.1 and a kubectl that answers
# ANNOTATION for the node's tern.dev/external-ipv4 annotation and
# EXTERNAL_IP for its ExternalIP; writes $WORK/NAME/tern.toml.
dp_render() {
  local dir="$WORK/$1"
  mkdir -p "$dir/bin" "$dir/template" "$dir/run"
  "$ROOT/.venv/bin/python" - "$DP_K8S" "$dir" <<'PY' || return 1
import os, sys, yaml
d, out = sys.argv[1], sys.argv[2]
cm = yaml.safe_load(open(os.path.join(d, "configmap.yaml")))
open(os.path.join(out, "template", "tern.toml"), "w").write(cm["data"]["tern.toml"])
ds = yaml.safe_load(open(os.path.join(d, "daemonset.yaml")))
init = next(c for c in ds["spec"]["template"]["spec"]["initContainers"] if c["name"] == "node-address")
script = init["command"][2].replace("/etc/tern/template", out + "/template").replace("/run/tern", out + "/run")
open(os.path.join(out, "init.sh"), "w").write(script)
PY
  cat >"$dir/bin/kubectl" <<KUBECTL
#!/bin/sh
case "\$*" in
  "get node node-1 -o jsonpath={.metadata.annotations.tern\\\\.dev/external-ipv4}") printf '%s' "$2" ;;
  *ExternalIP*) printf '%s' "$3" ;;
  *) echo "kubectl: unexpected \$*" >&2; exit 1 ;;
esac
KUBECTL
  chmod +x "$dir/bin/kubectl"
  PATH="$dir/bin:$PATH" NODE_NAME=node-1 NODE_IP=127.0.0.1 sh "$dir/init.sh" >"$dir/init.log" 2>&1 ||
    { REASON="init step: $(cat "$dir/init.log")"; return 1; }
  # The Secret's files, and the config reading them from here.
  mkdir -p "$dir/secrets"
  for f in rest-secret nonce-secret api-keys admin-tokens; do
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/secrets/$f"
  done
  sed "s|/etc/tern/secrets|$dir/secrets|g" "$dir/run/tern.toml" >"$dir/local.toml"
}

# The node's annotation wins over its ExternalIP; with neither, no
# external address; each rendered config passes check-config (with the
# Secret's files where the DaemonSet mounts them, here under $WORK).
case_deploy_kubernetes_node_config() {
  local name want got
  for name in annotated:203.0.113.7:198.51.100.7:203.0.113.7 external::198.51.100.7:198.51.100.7 none:::; do
    IFS=: read -r name annotation external want <<<"$name"
    dp_render "k8s-$name" "$annotation" "$external" || return 1
    got=$(sed -n 's/^external-ipv4 = "\(.*\)"$/\1/p' "$WORK/k8s-$name/run/tern.toml")
    [ "$got" = "$want" ] || { REASON="$name: external-ipv4 '$got', not '$want'"; return 1; }
    grep -q '^address-ipv4 = "127.0.0.1"$' "$WORK/k8s-$name/run/tern.toml" ||
      { REASON="$name: the node's address was not filled in"; return 1; }
    got=$("$TERN_BIN" check-config "$WORK/k8s-$name/local.toml" 2>&1) ||
      { REASON="$name: check-config: $got"; return 1; }
  done
}

# The rendered config serves, as the pod would: the probes' /readyz and
# /healthz answer 200 on loopback, the tern-api Service's endpoint mints
# iceServers with a key from the Secret, and the nonce and REST secrets
# come from the Secret's files.
case_deploy_kubernetes_serves() {
  local dir="$WORK/k8s-annotated" port admin api key code
  port=$(free_port); admin=$(free_port); api=$(free_port)
  key=$(cat "$dir/secrets/api-keys")
  start_tern k8s-node "$(sed -e "s|0.0.0.0:3478\"|127.0.0.1:$port\"|g" -e "s|127.0.0.1:9641|127.0.0.1:$admin|" \
      -e "s|127.0.0.1:8443|127.0.0.1:$api|" "$dir/local.toml")" || { REASON="tern did not start"; return 1; }
  for path in readyz healthz; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/$path")
    [ "$code" = 200 ] || { REASON="/$path answered $code"; stop_tern; return 1; }
  done
  code=$(curl -s -o "$dir/ice.json" -w '%{http_code}' -H "Authorization: Bearer $key" \
      -d '{"user": "alice"}' "http://127.0.0.1:$api/v1/ice-servers")
  stop_tern
  [ "$code" = 201 ] || { REASON="credential endpoint answered $code"; return 1; }
  grep -q '"iceServers"' "$dir/ice.json" || { REASON="no iceServers: $(cat "$dir/ice.json")"; return 1; }
}

deploy_cases() {
  selected deploy || return 0
  local c tool
  for tool in hadolint kubernetes-validate; do
    [ -x "$ROOT/.venv/bin/$tool" ] ||
      { FAILED=$((FAILED + 1)); echo "FAIL deploy: $tool not installed (run scripts/setup)"; return; }
  done
  for c in deploy_dockerfile_lint deploy_dockerfile_build_steps deploy_kubernetes_validate \
           deploy_kubernetes_node_config deploy_kubernetes_serves; do
    selected "${c//_/-}" && run_case "${c//_/-}" "case_$c"
  done
}
