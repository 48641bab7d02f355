"""Prometheus metrics: the daemon's figures served over HTTP and written for node_exporter."""
