"""cj-health-exporter: Prometheus exporter for the health of CJ assessment batches."""
