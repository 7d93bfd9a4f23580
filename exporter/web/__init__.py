"""HTTP: the metrics server and the exporter-toolkit web config (TLS, basic auth, reload).

- server       the threading HTTP server and its request handler
- negotiation  which encoding of the rendered metrics a request gets
- pages        the landing page and /healthz
- config       parse and validate a web config file (exporter-toolkit's format)
- tls          TLS settings and the SSLContext they make
- auth         basic authentication against bcrypt hashes
- reload       the live web config: re-read when its files change
"""
