"""pingmesh-exporter: ICMP and Service mesh monitoring for Kubernetes, exposed for Prometheus."""

__version__ = "0.1.0"
