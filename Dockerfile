# The build stages install the dependencies, then the exporter, into a virtual environment
# (/opt/pingmesh), with the toolchain of the full Python image; the runtime stage copies that
# environment into the slim image, which carries no compiler and no pip. The process runs as
# nobody (65534); ICMP needs no capability because the DaemonSet sets net.ipv4.ping_group_range.
#
# Build arguments:
#   PYTHON_VERSION  the official python images' version (default 3.12)
#   BUILD_BASE      the build stage's image (default python:${PYTHON_VERSION})
#   RUNTIME_BASE    the runtime image (default python:${PYTHON_VERSION}-slim)
#   VERSION         the image's version label
# BUILD_BASE and RUNTIME_BASE must carry the same Python at the same path (the virtual
# environment links to it), and BUILD_BASE must have the venv module (Debian: python3-venv).
# tests/support/cluster/build-images.sh builds this file over a Debian bookworm base of its own. The
# protobuf exposition's messages (exporter/metrics/proto/metrics_pb2.py) are generated before
# the build (`make`); the build fails without them.
#
# Bytecode is compiled at build time: the pod's root file system is read-only, and without
# it every start would compile each module in memory (135 MiB against 75 MiB measured with the
# official kubernetes client, which the exporter no longer uses).
ARG PYTHON_VERSION=3.12
ARG BUILD_BASE=python:${PYTHON_VERSION}
ARG RUNTIME_BASE=python:${PYTHON_VERSION}-slim

FROM ${BUILD_BASE} AS deps
WORKDIR /src
# The dependencies first, in a layer of their own that a change of the sources alone reuses.
# Pip's cache and any index or CA settings stay in these stages, which the image does not keep.
COPY pyproject.toml ./
RUN python3 -m venv /opt/pingmesh \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(p["project"]["dependencies"]))' >requirements.txt \
 && /opt/pingmesh/bin/python -m pip install --disable-pip-version-check -r requirements.txt

FROM deps AS build
COPY README.md ./
COPY exporter ./exporter
RUN /opt/pingmesh/bin/python -m pip install --disable-pip-version-check --no-deps . \
 && /opt/pingmesh/bin/python -c 'import exporter.metrics.protobuf' \
 && /opt/pingmesh/bin/python -m pip uninstall --disable-pip-version-check -q -y pip setuptools

FROM ${RUNTIME_BASE}
ARG VERSION=0.1.0
ARG RUNTIME_BASE
LABEL org.opencontainers.image.title="pingmesh-exporter" \
      org.opencontainers.image.description="Prometheus exporter for a Kubernetes cluster's pod, node and Service networks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_BASE}"
COPY --from=build /opt/pingmesh /opt/pingmesh
ENV PATH=/opt/pingmesh/bin:${PATH} PYTHONUNBUFFERED=1
USER 65534:65534
EXPOSE 9871
ENTRYPOINT ["pingmesh-exporter"]
