"""A real Kubernetes cluster inside the test bed's network namespaces (see cluster.py)."""
