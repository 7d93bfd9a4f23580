"""The zero-setup demo.

- embedded   a throwaway PostgreSQL from the `pgserver` wheel (the demo and the tests)
- scenarios  batches planted as the CJ service leaves them (the demo, the tests, the bench)
- command    `demo`: the exporter served over them
"""
