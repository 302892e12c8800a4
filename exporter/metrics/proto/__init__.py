"""Prometheus' exposition messages (io.prometheus.client), generated from the upstream schema
by generate.sh at build time."""
