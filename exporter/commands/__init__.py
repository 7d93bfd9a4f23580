"""The one-shot commands (`inspect`, `install-view`, `remediate`); `serve` is exporter.service
and `demo` is exporter.demo."""
