# Everything a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO  := exporter/metrics/proto/metrics_pb2.py
APT_PACKAGES := fping dnsmasq-base iptables iproute2 prometheus prometheus-smokeping-prober \
		nftables conntrack openssl curl util-linux containerd runc containernetworking-plugins \
		buildah debootstrap gcc libc6-dev chromium

.PHONY: run test lint bench system-deps cluster-components clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,build]'
	touch $(STAMP)

## the protobuf exposition's messages, generated from Prometheus' pinned schema
$(PROTO): exporter/metrics/proto/generate.sh $(STAMP)
	PYTHON=$(PY) bash exporter/metrics/proto/generate.sh

## run: the exporter on its embedded default (probes this machine's loopback), Ctrl-C stops it
run: $(STAMP) $(PROTO)
	$(PY) -m exporter --web.listen-address 127.0.0.1:9871

## system-deps: Debian packages the tests and benchmarks use (fping, Prometheus, ...)
system-deps:
	@missing=""; \
	for bin in fping dnsmasq iptables ip prometheus promtool prometheus-smokeping-prober \
	    nft conntrack openssl curl setpriv containerd runc /usr/lib/cni/ptp buildah debootstrap \
	    gcc /usr/lib/x86_64-linux-gnu/libc.a chromium; do \
	  [ -e $$bin ] || command -v $$bin >/dev/null 2>&1 || missing="$$missing $$bin"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

## cluster-components: the pinned Kubernetes binaries the cluster tests run (and helm for
## the chart's), built from the Go module proxy, and the images (pause, Python base, this Dockerfile) built offline, into
## $(PINGMESH_CACHE) (about 15 min the first time, seconds after)
PINGMESH_CACHE ?= /var/cache/pingmesh-exporter
export PINGMESH_CACHE
cluster-components: system-deps
	bash tests/support/cluster/build-components.sh
	bash tests/support/cluster/build-images.sh

## test: the whole suite (unit, real-network, real cluster, lint and types); root runs the
## network and cluster tests
test: $(STAMP) $(PROTO) system-deps cluster-components
	$(PY) -m pytest -q

lint: $(STAMP) $(PROTO)
	$(PY) -m ruff check exporter tests bench deploy grafana
	$(PY) -m ruff format --check exporter tests bench deploy grafana
	$(PY) -m mypy exporter tests bench deploy grafana

## bench: probe 1,000 and 5,000 routed targets against fping and smokeping_prober
bench: $(STAMP) system-deps
	$(PY) -m bench.probe_bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
