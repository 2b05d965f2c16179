#!/usr/bin/env bash
# The kind path: EdgeFill installed the way an ISP installs it, in a real
# cluster with a container runtime, then the e2e suite against it.
#
#   .github/scripts/kind-e2e.sh          create (or reuse) the cluster, build,
#                                        install, apply examples/, wait, test
#   .github/scripts/kind-e2e.sh down     delete the kind cluster
#
# Needs docker, kind, kubectl, helm and python3 with `pip install -e .[dev]`
# done (the workflow .github/workflows/e2e-kind.yaml sets these up). Steps:
#  1. kind cluster "edgefill" from kind-config.yaml (one core node, two ISP
#     sites of two tainted nodes each);
#  2. the operator, cache-node and test-origin images from the Dockerfile,
#     loaded into the kind nodes (no registry involved);
#  3. the S3 test origin (moto server) as a Deployment + Service on the core
#     node, seeded with a synthetic catalogue through a port-forward;
#  4. `helm install` of charts/edgefill with the operator pinned to the core node;
#  5. examples/ applied, with the origin endpoint pointed at the in-cluster
#     S3 Service and pre-positioning allowed outside the fill window (so the
#     run does not depend on the clock);
#  6. wait for every EdgeSite Ready and every ContentSet Filled;
#  7. `pytest -m e2e` with EDGEFILL_KUBECONFIG naming this cluster.
# Environment: CLUSTER (edgefill), NAMESPACE (edgefill-system), VERSION
# (0.1.0, the image tag the examples use), WAIT (600s), PYTEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-edgefill}"
NAMESPACE="${NAMESPACE:-edgefill-system}"
VERSION="${VERSION:-0.1.0}"
WAIT="${WAIT:-600s}"
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
KUBECONFIG_FILE="$WORK/kubeconfig"
S3_LOCAL_PORT="${S3_LOCAL_PORT:-19000}"
S3_IN_CLUSTER="http://edgefill-test-origin.$NAMESPACE.svc.cluster.local:9000"

log() { printf '[kind-e2e] %s\n' "$*" >&2; }

if [ "${1:-}" = "down" ]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

for tool in docker kind kubectl helm "$PYTHON"; do
  command -v "$tool" >/dev/null || { log "missing tool: $tool"; exit 1; }
done

log "1/7 kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 180s
fi
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"
kubectl wait node --all --for=condition=Ready --timeout=180s

log "2/7 images"
for target in operator cache-node test-origin; do
  docker build --target "$target" --tag "edgefill/$target:$VERSION" .
  kind load docker-image --name "$CLUSTER" "edgefill/$target:$VERSION"
done

log "3/7 S3 test origin"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NAMESPACE" apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: edgefill-test-origin
  labels: {app.kubernetes.io/name: edgefill-test-origin, app.kubernetes.io/part-of: edgefill}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: edgefill-test-origin}
  template:
    metadata:
      labels: {app.kubernetes.io/name: edgefill-test-origin}
    spec:
      nodeSelector: {edgefill.io/role: core}
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: s3
          image: edgefill/test-origin:$VERSION
          imagePullPolicy: Never
          ports: [{name: s3, containerPort: 9000}]
          readinessProbe:
            tcpSocket: {port: s3}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata:
  name: edgefill-test-origin
spec:
  selector: {app.kubernetes.io/name: edgefill-test-origin}
  ports: [{name: s3, port: 9000, targetPort: s3}]
YAML
kubectl -n "$NAMESPACE" rollout status deployment/edgefill-test-origin --timeout="$WAIT"
kubectl -n "$NAMESPACE" port-forward service/edgefill-test-origin "$S3_LOCAL_PORT:9000" \
  > "$WORK/port-forward.log" 2>&1 &
forward_pid=$!
trap 'kill "$forward_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  "$PYTHON" - "$S3_LOCAL_PORT" <<'PY' && break
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
  sleep 1
done
"$PYTHON" -m edgefill_devenv.catalogue --endpoint-url "http://127.0.0.1:$S3_LOCAL_PORT" \
  --objects 40 --manifest-key manifests/popular.jsonl

log "4/7 helm install"
helm upgrade --install edgefill charts/edgefill --namespace "$NAMESPACE" \
  --set image.tag="$VERSION" --set image.pullPolicy=Never \
  --set-string 'nodeSelector.edgefill\.io/role=core' \
  --wait --timeout "$WAIT"

log "5/7 examples/"
"$PYTHON" .github/scripts/kind_examples.py "$S3_IN_CLUSTER" "$WORK/examples.yaml" examples/*.yaml
kubectl apply -f "$WORK/examples.yaml"

log "6/7 wait for Ready and Filled"
kubectl wait edgesites --all --for=condition=Ready --timeout="$WAIT"
kubectl wait contentsets --all --for=condition=Filled --timeout="$WAIT"
kubectl get edgesites,contentsets

log "7/7 e2e suite"
EDGEFILL_KUBECONFIG="$KUBECONFIG_FILE" "$PYTHON" -m pytest -m e2e ${PYTEST_ARGS:-}
