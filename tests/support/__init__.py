"""What the tests share (nothing is imported from conftest.py):

- paths       the repository root and ../shared beside it
- database    PostgreSQL servers and per-test databases (testcontainers, else pgserver)
- process     free ports, HTTP, a real `serve` subprocess, Prometheus/Alertmanager daemons
- hardening   roles, certificates, /proc figures for the security tests
- remediation finalizer fixtures: wedged batches, event counts, exactly-once checks
"""
