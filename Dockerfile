# The minilog agent image: a drop-in for grafana/alloy on the Docker -> Loki path.
#
#   docker compose build          (compose/ builds it as the `alloy` service)
#   docker buildx build -t minilog:latest .
#
# Needs BuildKit (compose v2 and buildx use it): the build stage mounts the pip cache and
# an optional CA bundle as a secret, so neither ends up in a layer. Where no registry can
# be reached, build on a local base (scripts/build-base-image):
#   --build-arg BASE_IMAGE=minilog-base:bookworm
# A build behind a TLS-intercepting proxy passes the machine's CA bundle:
#   --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt
# and a private index PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST as build args.
# Any base with python3 (3.11 or later) and its venv module serves; both stages use it, so
# the virtualenv built in the first runs unchanged in the second.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
WORKDIR /src
COPY pyproject.toml README.md ./
COPY minilog ./minilog
# The wheel is built here, with its dependencies as wheels, then installed into a
# virtualenv that has no pip: the runtime stage copies only that virtualenv.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_ca \
    set -eu; \
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do \
      eval "[ -n \"\${$v:-}\" ]" || unset "$v"; \
    done; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore; \
    python3 -m venv /opt/build-venv; \
    /opt/build-venv/bin/pip wheel --quiet --wheel-dir /wheels .; \
    python3 -m venv --without-pip /opt/minilog; \
    /opt/build-venv/bin/pip --python /opt/minilog/bin/python install --quiet \
      --no-index --find-links /wheels minilog; \
    /opt/minilog/bin/minilog --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="minilog" \
      org.opencontainers.image.description="A Loki-compatible log pipeline: a drop-in agent for Grafana Alloy's Docker -> Loki path" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/minilog /opt/minilog
# The seed's pipeline as the default config, as Alloy's image ships an example one: mount
# your own over it. /var/lib/alloy/data is where the default command keeps positions, so a
# volume mounted there (as for Alloy) keeps them across container replacements. Root by
# default, as Alloy's image; uid 473 (Alloy's) owns the data directory for those who run
# the image as a non-root user (see the README: `user: "473"` plus `group_add`).
COPY compose/alloy/config.alloy /etc/alloy/config.alloy
RUN mkdir -p /var/lib/alloy/data \
    && chown -R 473:473 /var/lib/alloy \
    && chmod -R 770 /var/lib/alloy
ENV PATH=/opt/minilog/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    MINILOG_READY_URL=http://127.0.0.1:12345/-/ready
EXPOSE 12345
# No curl or wget in the image: the agent's own Python asks /-/ready (503 until the
# config is loaded and its components started). A command line that moves the HTTP
# server elsewhere sets MINILOG_READY_URL to match.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['MINILOG_READY_URL'], timeout=2)"]
ENTRYPOINT ["minilog"]
CMD ["run", "/etc/alloy/config.alloy", "--storage.path=/var/lib/alloy/data"]
