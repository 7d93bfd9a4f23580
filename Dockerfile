# cj-health-exporter: Prometheus exporter for the health of CJ assessment batches.
#
#   docker build -t cj-health-exporter .
#   docker run -e CJ_HEALTH_DSN=postgresql+psycopg://reader:...@db:5432/cj -p 10124:10124 \
#       cj-health-exporter
#
# Build argument EXTRAS: the optional dependencies to install. The default, `remediation`,
# brings the finalizer's numpy/scipy/choix; `--build-arg EXTRAS=` builds a slimmer image that
# only exports.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=remediation
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY sql ./sql
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ARG EXTRAS=remediation
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cjhealth
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-index --find-links=/wheels \
        "cj-health-exporter[${EXTRAS}]" \
    && rm -rf /wheels
USER 10001
EXPOSE 10124
# /healthz answers while the process serves; the default listen address is :10124
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10124/healthz', timeout=2)"]
ENTRYPOINT ["cj-health-exporter"]
CMD ["serve"]
