"""HTTP: the metrics server and the exporter-toolkit web config (TLS, basic auth, reload).

- server       the selector-loop HTTP server: bounded connections, deadlines, eviction
- http1        strict, byte-limited parsing of request heads; response heads
- routes       what each path answers (the telemetry path, /, /healthz)
- negotiation  which encoding of the rendered metrics a request gets
- pages        the landing page and /healthz
- config       parse and validate a web config file (exporter-toolkit's format)
- tls          TLS settings and the SSLContext they make
- auth         basic authentication against bcrypt hashes (the result cache)
- gate         the one bcrypt thread: bounded, fair, shedding queue of checks
- reload       the live web config: re-read when its files change
"""
