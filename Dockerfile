# syntax=docker/dockerfile:1
#
# flespi-bridge image.
#   docker build -t flespi-bridge .
#   docker run -v "$PWD/config.toml:/config/config.toml:ro" \
#       -e FLESPI_BRIDGE_FLESPI__TOKEN=... -p 9871:9871 flespi-bridge
#
# No secret is baked in: the token comes at run time from FLESPI_BRIDGE_FLESPI__TOKEN or from a
# file flespi__token in the secrets directory (/run/secrets/flespi-bridge by default).
#
# To pin the base image by digest too: --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:...
# Where Docker Hub is out of reach, an equivalent base built from Debian packages (bookworm's
# python3 3.11): --build-arg PYTHON_IMAGE="$(tools/debian-python-base)" (see the README).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# The builder's base: the same image unless the build machine needs something the runtime
# must not carry (e.g. the CA of a TLS-inspecting proxy to reach PyPI; see
# tools/debian-python-base --builder-ca). Nothing of the builder but /opt/venv reaches the image.
ARG BUILDER_IMAGE=${PYTHON_IMAGE}
# The package's version: setuptools-scm takes it from git, but .git stays out of the build
# context, so it comes from here: --build-arg VERSION="$(python -m setuptools_scm)" (the
# release workflow passes the tag's). Without it the image says plainly that it does not know.
ARG VERSION=0+unknown

# --- builder: a wheel of the project, and a virtualenv with it and its dependencies --------
FROM ${BUILDER_IMAGE} AS builder
ARG VERSION

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SETUPTOOLS_SCM_PRETEND_VERSION_FOR_FLESPI_BRIDGE=${VERSION} \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
RUN python -m venv /opt/venv

# Only what the wheel is built from (see .dockerignore): dependencies and their versions come
# from pyproject.toml, nothing else.
COPY pyproject.toml README.md ./
COPY bridge ./bridge

# The virtualenv's own pip: a base built from Debian packages has no pip of its own.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /dist . \
    && /opt/venv/bin/pip install "$(ls /dist/flespi_bridge-*.whl)[fast]" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# --- runtime: the virtualenv only, run by an unprivileged user -----------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION

LABEL org.opencontainers.image.title="flespi-bridge" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Bridge a flespi telematics fleet to a local MQTT broker" \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid 10001 flespi-bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin flespi-bridge

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLESPI_BRIDGE_METRICS__HOST=0.0.0.0

USER 10001:10001
WORKDIR /

# /metrics, /healthz and /readyz (metrics.port; set FLESPI_BRIDGE_METRICS__PORT to move it, and
# the health check follows).
EXPOSE 9871

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLESPI_BRIDGE_METRICS__PORT', '9871'), timeout=4)"]

ENTRYPOINT ["flespi-bridge", "run"]
# Mount the configuration here (or replace these arguments, e.g. to add --secrets-dir).
CMD ["--config", "/config/config.toml"]
