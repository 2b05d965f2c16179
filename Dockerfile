# syntax=docker/dockerfile:1
#
# EdgeFill images: one build, two targets.
#
#   docker build --target operator   -t edgefill/operator:0.1.0   .
#   docker build --target cache-node -t edgefill/cache-node:0.1.0 .
#   docker build --target test-origin -t edgefill/test-origin:0.1.0 .   (kind e2e only)
#
# The `build` stage installs the edgefill distribution (with its `fast` extra,
# uvloop) into a virtual environment; the final stages copy only that
# environment onto the same pinned slim base, so no compiler, pip cache or
# source tree ships. Both run as UID/GID 65532 (no shell login, no root) and
# write nothing outside their mounted volumes, so the chart can set
# readOnlyRootFilesystem. Pin the base by digest in your own build by passing
# --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
# Lint: hadolint Dockerfile (devenv/build-tools.sh builds it; tests/chart runs it).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY cache_node/ cache_node/
RUN python -m venv /opt/edgefill \
    && /opt/edgefill/bin/pip install --no-compile '.[fast]' \
    && /opt/edgefill/bin/python -m compileall -q /opt/edgefill/lib \
    && /opt/edgefill/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE} AS runtime
ARG EDGEFILL_VERSION=0.1.0
LABEL org.opencontainers.image.title="EdgeFill" \
      org.opencontainers.image.description="Kubernetes-native edge cache with pre-positioning and peer assist" \
      org.opencontainers.image.version="${EDGEFILL_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/edgefill/edgefill"
COPY --from=build /opt/edgefill /opt/edgefill
ENV PATH=/opt/edgefill/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /
USER 65532:65532

# Test-only S3 origin for the kind e2e path (.github/scripts/kind-e2e.sh): the
# same moto server the test suite runs on loopback, here as a cluster Service.
# Never part of a release.
FROM ${PYTHON_IMAGE} AS test-origin
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-compile 'moto[server,s3]==5.2.1'
USER 65532:65532
EXPOSE 9000
ENTRYPOINT ["moto_server", "-H", "0.0.0.0", "-p", "9000"]

# The operator: kopf reconciling EdgeSites and ContentSets. The chart passes
# its arguments (namespaces, peering, liveness endpoint).
FROM runtime AS operator
EXPOSE 8080 9100
ENTRYPOINT ["edgefill-operator"]

# A cache node: client port 8080, peer port 8081, metrics/health 9090. The
# operator mounts the node configuration at /etc/edgefill/node.json and the
# store at /var/cache/edgefill.
FROM runtime AS cache-node
EXPOSE 8080 8081 9090
ENTRYPOINT ["edgefill-cache-node"]
CMD ["--config", "/etc/edgefill/node.json"]
