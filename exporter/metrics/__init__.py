"""The metrics layer: every family of /metrics is made here, from the plain counters and
state the components keep, by one collector per component (prometheus_client's Collector
protocol), registered in one place (exporter.app). Label names and their escaping live here
too, so no component depends on the exposition format."""
