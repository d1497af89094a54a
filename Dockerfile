# One image for every role: each stage script, the API, the MLflow tracking server, the monitor, the Evidently
# UI. Build: docker build -t california-housing . (docs/deployment.md). The base image is a build argument so
# that a site without access to Docker Hub builds from its own mirror of the same image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/runtime.lock /tmp/runtime.lock
# every dependency from the lock file, each checked against its hash. The lock is complete, so pip resolves
# nothing (--no-deps: older pips mis-resolve extras such as pandas[parquet] under --require-hashes), and
# pip check proves that the pinned set is consistent.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/runtime.lock \
 && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=1.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/california-housing/california-housing-mlops
LABEL org.opencontainers.image.title="california-housing" \
      org.opencontainers.image.description="Closed-loop MLOps pipeline for California district house prices" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
# LightGBM's wheel links the system's OpenMP runtime; nothing else comes from the distribution
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libgomp1 >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 housing \
 && useradd --system --uid 10001 --gid housing --home-dir /app --no-create-home --shell /usr/sbin/nologin housing
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/entrypoint.sh /usr/local/bin/housing-entrypoint
COPY app.py load_data.py preprocess.py train.py promote.py monitor.py simulate_traffic.py ./
COPY housing ./housing
# what the code writes: the artifacts (a volume in every deployment), the numba cache, scratch space
RUN chmod 0755 /usr/local/bin/housing-entrypoint \
 && mkdir -p /app/artifacts /app/mlartifacts /var/cache/housing \
 && chown housing:housing /app/artifacts /app/mlartifacts /var/cache/housing
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/var/cache/housing/numba \
    MPLCONFIGDIR=/var/cache/housing/matplotlib \
    HOUSING_ARTIFACTS_DIR=/app/artifacts \
    HOUSING_REVISION=${REVISION}
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HOUSING_API_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["housing-entrypoint"]
CMD ["uvicorn", "app:app", "--host=0.0.0.0", "--port=8000", "--http=httptools", "--timeout-keep-alive=5"]
