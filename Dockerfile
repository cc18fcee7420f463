# syntax=docker/dockerfile:1
# The production image: the same wheel `make wheel-smoke` builds, installs non-editable and serves from,
# without the embedded database (set FHIR_MONGODB_URI; see docker-compose.yml).

# Build stage: the project's wheel (capability/ and profiles/ inside as data files), then the wheels
# of its dependencies, so that the runtime stage installs offline.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fhir_server ./fhir_server
COPY capability ./capability
COPY profiles ./profiles
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /dist/fhir_server-0.1.0-py3-none-any.whl

# Runtime stage: non-root, only the installed wheels, working directory outside any source tree.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FHIR_DATA_DIR=/var/lib/fhir-server
RUN groupadd --system --gid 10001 fhir \
    && useradd --system --uid 10001 --gid fhir --home-dir /var/lib/fhir-server fhir \
    && mkdir -p /var/lib/fhir-server && chown fhir:fhir /var/lib/fhir-server
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'fhir-server==0.1.0' && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/fhir-server
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
ENTRYPOINT ["fhir-server", "serve", "--host", "0.0.0.0", "--port", "8080"]
