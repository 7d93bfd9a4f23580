# cj-health-exporter: Prometheus exporter for the health of CJ assessment batches.
#
#   docker build -t cj-health-exporter .
#   docker run -e CJ_HEALTH_DSN=postgresql+psycopg://reader:...@db:5432/cj -p 10124:10124 \
#       cj-health-exporter
#
# Build argument EXTRAS: the optional dependencies to install. The default, `remediation`,
# brings the finalizer's numpy/scipy/choix; `--build-arg EXTRAS=` builds a slimmer image that
# only exports. VERSION, REVISION and CREATED fill the OCI labels (CI passes the tag, the git
# commit, the build time and the repository URL as SOURCE):
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -t cj-health-exporter .
#
# Health check: `cj-health-exporter healthcheck` reads the same settings as `serve` (set them
# through CJ_HEALTH_* variables, or CJ_HEALTH_CONFIG_FILE for a YAML file: the check does not
# see serve's command line), so it follows --web.listen-address and the web config's TLS and
# basic auth. With basic auth, give it its own user: CJ_HEALTH_HEALTHCHECK_CREDENTIALS_FILE
# names a file holding USER:PASSWORD (docs/security.md).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=remediation
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY sql ./sql
# shipped in the wheel for operators (cj-health-exporter assets)
COPY alerts/cj-batch-health.rules.yml alerts/alertmanager.example.yml ./alerts/
COPY dashboards/overview.json dashboards/batch.json ./dashboards/
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ARG EXTRAS=remediation
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="cj-health-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the health of Comparative Judgement assessment batches" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cjhealth
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-index --find-links=/wheels \
        "cj-health-exporter[${EXTRAS}]" \
    && rm -rf /wheels
USER 10001
EXPOSE 10124
# Liveness (/healthz answers while the process serves), under any listen address and web config
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["cj-health-exporter", "healthcheck"]
ENTRYPOINT ["cj-health-exporter"]
CMD ["serve"]
