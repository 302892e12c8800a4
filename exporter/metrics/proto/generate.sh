#!/usr/bin/env bash
# Generates metrics_pb2.py (and its type stub) from Prometheus' own exposition schema, the
# io.prometheus.client messages of github.com/prometheus/client_model, at the pinned version,
# fetched through the Go module proxy. The generated files are build output, not sources:
# `make` runs this before anything imports them.
#
#   generate.sh [OUT_DIR]   (default: this directory)
#   PINGMESH_CACHE          cache root for the Go module download (default /var/cache/pingmesh-exporter)
#   PYTHON                  the interpreter whose grpcio-tools runs protoc (default python3)
set -euo pipefail

CLIENT_MODEL_VERSION=v0.6.3

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
cache=${PINGMESH_CACHE:-/var/cache/pingmesh-exporter}
python=${PYTHON:-python3}
fail() { printf 'proto: FAILED: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || fail "no Go toolchain on PATH (it fetches the schema from the Go module proxy)"
dir=$(cd /tmp && GOMODCACHE=$cache/go/mod GOFLAGS=-mod=mod GOTOOLCHAIN=local \
  go mod download -json "github.com/prometheus/client_model@$CLIENT_MODEL_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
schema=$dir/io/prometheus/client/metrics.proto
[[ -f $schema ]] || fail "cannot download github.com/prometheus/client_model@$CLIENT_MODEL_VERSION"

# The schema sits at the root of its own include directory so that the module is
# metrics_pb2, not io.prometheus.client (whose first part would shadow the standard io).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$schema" "$work/metrics.proto"
includes=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
  || fail "grpcio-tools is not installed for $python"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I"$work" -I"$includes" --python_out="$out" --pyi_out="$out" \
  metrics.proto || fail "protoc"
echo "$CLIENT_MODEL_VERSION" > "$out/metrics_pb2.version"
