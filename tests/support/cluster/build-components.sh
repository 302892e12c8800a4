#!/usr/bin/env bash
# Builds the real Kubernetes components the cluster tests run, pinned, from the Go module
# proxy, into a cache outside the work tree. Idempotent: a component whose stamp matches its
# pinned version is not rebuilt. Prints the bin directory on its last line.
#
#   PINGMESH_CACHE  cache root (default /var/cache/pingmesh-exporter)
set -euo pipefail

# ---- the versions, in one place --------------------------------------------------------
KUBERNETES_VERSION=v1.34.4   # kube-apiserver, controller-manager, scheduler, proxy, kubelet, kubectl
STAGING_VERSION=v0.34.4      # k8s.io staging modules released with it
ETCD_VERSION=v3.6.4          # the version kubernetes v1.34.4 pins
COREDNS_VERSION=v1.12.4      # cluster DNS with its kubernetes plugin
PROMETHEUS_VERSION=v0.316.0  # Prometheus 3.16.0 and its promtool (Debian's 2.42 lacks Kubernetes discovery)
HELM_VERSION=v3.22.0         # helm lint / template / install of deploy/helm/pingmesh-exporter
PROMETHEUS_OPERATOR_VERSION=v0.85.0  # its CRDs: the chart's PodMonitor, ServiceMonitor, PrometheusRule

CACHE=${PINGMESH_CACHE:-/var/cache/pingmesh-exporter}
BIN=$CACHE/bin
export GOPATH=$CACHE/go GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 GOPROXY=${GOPROXY:-https://proxy.golang.org}
mkdir -p "$BIN" "$CACHE/src"

step() { printf 'build-components: %s\n' "$*" >&2; }
fail() { printf 'build-components: FAILED: %s\n' "$*" >&2; exit 1; }
command -v go >/dev/null || fail "no Go toolchain on PATH (the tests build Kubernetes with it)"

fresh() {  # fresh NAME VERSION: the built binary is there and its stamp matches
  [[ -x $BIN/$1 && -f $BIN/.$1.version && $(cat "$BIN/.$1.version") == "$2" ]]
}
stamp() { echo "$2" > "$BIN/.$1.version"; }

# A module of our own that requires MODULE@VERSION, so `go build` can build its commands
# (a module whose go.mod has replace directives cannot be `go install`ed at a version).
module_dir() {  # module_dir NAME MODULE VERSION -> prints the directory
  local dir=$CACHE/src/$1-$3
  mkdir -p "$dir"
  if [[ ! -f $dir/go.mod ]]; then
    (cd "$dir" && go mod init "pingmesh.test/build/$1" >/dev/null 2>&1 \
      && go mod edit -require="$2@$3") || fail "go mod init for $1"
  fi
  echo "$dir"
}

build_kubernetes() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl)
  local all=1 c
  for c in "${cmds[@]}"; do fresh "$c" "$KUBERNETES_VERSION" || all=0; done
  ((all)) && { step "kubernetes $KUBERNETES_VERSION: cached"; return; }
  step "kubernetes $KUBERNETES_VERSION: building ${cmds[*]} (about 6 min cold on 2 cores)"
  local dir gomod
  dir=$(module_dir kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION")
  gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -f $gomod ]] || fail "cannot download k8s.io/kubernetes@$KUBERNETES_VERSION"
  # kubernetes' go.mod points its staging modules at ./staging, which the module zip lacks:
  # replace each with its released version.
  local mod
  for mod in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod"); do
    case $mod in k8s.io/sample-*) continue ;; esac
    (cd "$dir" && go mod edit -replace="$mod=$mod@$STAGING_VERSION")
  done
  local pkgs=() v=${KUBERNETES_VERSION#v}
  for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=${v%%.*}"
    ld+=" -X $p.gitMinor=$(cut -d. -f2 <<<"$v") -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$dir" && go build -trimpath -ldflags="$ld" -o "$BIN/" "${pkgs[@]}") \
    || fail "go build of kubernetes $KUBERNETES_VERSION (see above)"
  for c in "${cmds[@]}"; do stamp "$c" "$KUBERNETES_VERSION"; done
}

build_one() {  # build_one BINARY MODULE VERSION PACKAGE [LDFLAGS]
  fresh "$1" "$3" && { step "$1 $3: cached"; return; }
  step "$1 $3: building"
  local dir
  dir=$(module_dir "$1" "$2" "$3")
  (cd "$dir" && go build -trimpath -ldflags="-s -w ${5:-}" -o "$BIN/$1" "$4") \
    || fail "go build of $1 $3 (see above)"
  stamp "$1" "$3"
}

build_kubernetes
build_one etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
build_one coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns
prom_version=3.${PROMETHEUS_VERSION#v0.3}  # v0.316.0 is Prometheus 3.16.0
build_one prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION" \
  github.com/prometheus/prometheus/cmd/prometheus \
  "-X github.com/prometheus/common/version.Version=$prom_version"
# promtool of the same release: `promtool test rules` over the shipped rules, native-histogram
# input notation included (Debian's 2.42 promtool lacks it).
build_one promtool github.com/prometheus/prometheus "$PROMETHEUS_VERSION" \
  github.com/prometheus/prometheus/cmd/promtool \
  "-X github.com/prometheus/common/version.Version=$prom_version"
# helm: the chart under deploy/helm is linted, rendered against the kustomize base and
# installed on the test cluster with the real client.
build_one helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
# The Prometheus Operator's CRDs (from its Go module; nothing is built), so that the real API
# server judges the chart's monitors and rules by their schemas.
fetch_operator_crds() {
  local out=$CACHE/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION kind dir
  [[ -f $out/.complete ]] && { step "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION: cached"; return; }
  step "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION: fetching"
  dir=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $dir ]] || fail "cannot download prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
  mkdir -p "$out"
  for kind in podmonitors servicemonitors prometheusrules; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/" \
      || fail "prometheus-operator $PROMETHEUS_OPERATOR_VERSION has no $kind CRD"
  done
  chmod 644 "$out"/*.yaml
  touch "$out/.complete"
}
fetch_operator_crds
echo "$BIN"
