# Herald's image. The builder stage builds Herald's wheel, installs it into a venv and runs
# `herald check` over the files baked in; the final stage is python:3.11-slim with that venv
# (pip and setuptools removed) and those files only: no compiler, installer, cache or source
# tree. docs/deploy.md explains it.
#
# PYTHON_IMAGE replaces the base of both stages (a mirror, a digest-pinned tag, or the
# stand-in base of `make image` where no registry can be reached); both stages must share it,
# since the venv links to the base's interpreter.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# Where PyPI is reached through a TLS-inspecting proxy: the path of its CA bundle, mounted
# into the build (`make image` passes the host's PIP_CERT). A build argument reaches the RUN
# steps of this stage only, not the final image.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
RUN python3 -m venv /opt/herald \
    && /opt/herald/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/herald/bin/pip install /tmp/wheels/herald-*.whl \
    && /opt/herald/bin/pip uninstall --quiet --yes pip setuptools \
    && /opt/herald/bin/python -m compileall -q /opt/herald/lib
# The routing table, schemas and templates at the absolute paths the final stage points at,
# checked together: a route naming a missing template, or a template reading a field its
# schema lacks, fails the build.
COPY deploy/routing.yaml /etc/herald/routing.yaml
COPY schemas/ /usr/share/herald/schemas/
COPY templates/ /usr/share/herald/templates/
# The keys are for this check alone (Herald needs them to load); they do not stay in the image,
# whose deployment provides its own (HERALD_LINKS__UNSUBSCRIBE_SECRET and
# HERALD_POLICY__ADDRESS_KEY, secret files).
RUN HERALD_ROUTING_FILE=/etc/herald/routing.yaml \
    HERALD_SCHEMAS_DIR=/usr/share/herald/schemas \
    HERALD_TEMPLATES_DIR=/usr/share/herald/templates \
    HERALD_LINKS__UNSUBSCRIBE_SECRET=build-check-only \
    HERALD_POLICY__ADDRESS_KEY=build-check-only-not-a-real-address-key \
    /opt/herald/bin/herald check

FROM ${PYTHON_IMAGE}
# A fixed uid and gid, so a pod's securityContext (runAsUser, fsGroup) can name them.
RUN useradd --no-log-init --uid 10001 --user-group --home-dir /var/lib/herald --create-home \
        --shell /usr/sbin/nologin herald
COPY --from=builder /opt/herald /opt/herald
COPY --from=builder /etc/herald /etc/herald
COPY --from=builder /usr/share/herald /usr/share/herald
# Mounting a file or directory over one of these paths replaces what the image carries; the
# variables can also point elsewhere. The SQLite store lives in the user's home, which a volume
# should back (docs/operations.md, "What to deploy").
ENV PATH=/opt/herald/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    HERALD_ROUTING_FILE=/etc/herald/routing.yaml \
    HERALD_SCHEMAS_DIR=/usr/share/herald/schemas \
    HERALD_TEMPLATES_DIR=/usr/share/herald/templates \
    HERALD_IDEMPOTENCY__PATH=/var/lib/herald/idempotency.sqlite3 \
    HERALD_HTTP__HOST=0.0.0.0 \
    HERALD_HTTP__PORT=9464 \
    HERALD_PUBLIC__HOST=0.0.0.0 \
    HERALD_PUBLIC__PORT=8080
WORKDIR /var/lib/herald
# Numeric, so the kubelet can verify runAsNonRoot without the image's /etc/passwd.
USER 10001:10001
# 9464: /metrics, /healthz, /readyz (internal). 8080: the public listener (one-click
# unsubscribe, provider webhooks), for the ingress that terminates TLS.
EXPOSE 9464 8080
# /healthz over loopback with the interpreter the image already has (slim has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['HERALD_HTTP__PORT'], timeout=4)"]
ENTRYPOINT ["herald"]
CMD ["run"]
