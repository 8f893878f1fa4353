# lbsync container image.
#
#   bash deploy/build-image.sh                   # offline: wheels from deploy/wheelhouse
#   docker build --build-arg PIP_OFFLINE=0 -t lbsync .   # online: pip may use PyPI
#
# deploy/build-image.sh downloads the wheels for the base image's Python into
# deploy/wheelhouse/ on the host first, so the build itself needs no network (the default,
# PIP_OFFLINE=1, installs with --no-index). Works with the classic builder and BuildKit.
#
# Runtime: user lbsync (uid/gid 10001); give it the Docker socket's group at run time:
#   docker run --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /srv/lbsync:/etc/lbsync:ro -v /srv/nginx-conf.d:/etc/nginx/conf.d lbsync
# Config: /etc/lbsync/lbsync.yaml ($LBSYNC_CONFIG); mount the directory /etc/lbsync, never
# the single file (lbsync re-reads it when it changes; a bind-mounted file keeps its inode).

ARG BASE_IMAGE=python:3.12-slim

# ---------------------------------------------------------------- build: wheel and venv
FROM ${BASE_IMAGE} AS build
# Marks the (untagged) build-stage images, so deploy/build-image.sh can prune old ones.
LABEL lbsync-build-stage=1
ARG PIP_OFFLINE=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/lbsync
# The wheels deploy/build-image.sh put in deploy/wheelhouse/ (the runtime dependencies and
# the build backend, for this base image's Python). The wildcard lets the build go on when
# there is no such folder (PIP_OFFLINE=0); pyproject.toml is only there so that the source
# list is never empty.
COPY pyproject.toml deploy/wheelhouse* /wheelhouse/
COPY pyproject.toml README.md /src/
COPY templates/ /src/templates/
COPY lbsync/ /src/lbsync/
RUN set -eu; \
    if [ "$PIP_OFFLINE" = 1 ]; then set -- --no-index; else set --; fi; \
    /opt/lbsync/bin/pip wheel "$@" --find-links /wheelhouse --no-deps --wheel-dir /dist /src; \
    /opt/lbsync/bin/pip install "$@" --find-links /wheelhouse /dist/lbsync-*.whl; \
    /opt/lbsync/bin/pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true; \
    rm -f /opt/lbsync/bin/pip* /opt/lbsync/bin/easy_install*; \
    /opt/lbsync/bin/python -c 'import aiohttp, jinja2, yaml, lbsync.cli, lbsync.healthcheck'; \
    /opt/lbsync/bin/lbsync version

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
RUN set -eu; \
    groupadd --gid 10001 lbsync; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lbsync; \
    mkdir -p /etc/lbsync /etc/nginx/conf.d; \
    printf '%s\n' \
        '# lbsync: built-in defaults (one nginx target writing /etc/nginx/conf.d/lbsync.conf).' \
        '# Mount a directory holding your lbsync.yaml on /etc/lbsync to replace this file.' \
        > /etc/lbsync/lbsync.yaml; \
    chown 10001:10001 /etc/nginx/conf.d
COPY --from=build /opt/lbsync /opt/lbsync
ENV PATH=/opt/lbsync/bin:$PATH \
    LBSYNC_CONFIG=/etc/lbsync/lbsync.yaml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /etc/lbsync
USER 10001:10001
# /livez on server.listen (default 127.0.0.1:9180, inside the container's own network
# namespace): 200 while lbsync runs, whatever the engine does.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/lbsync/bin/python", "-m", "lbsync.healthcheck"]
ENTRYPOINT ["lbsync"]
CMD ["run"]

ARG BASE_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=
ARG SOURCE=
LABEL org.opencontainers.image.title="lbsync" \
      org.opencontainers.image.description="Keeps nginx and HAProxy in step with the containers on a Docker engine" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
