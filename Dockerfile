# Two stages: wheels are built with the toolchain of the full Python image, then installed
# into the slim image, which carries no compiler. The process runs as nobody (65534); ICMP
# needs no capability because the DaemonSet sets net.ipv4.ping_group_range.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pingmesh-exporter" \
      org.opencontainers.image.description="Prometheus exporter for a Kubernetes cluster's pod, node and Service networks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65534:65534
EXPOSE 9871
ENTRYPOINT ["pingmesh-exporter"]
