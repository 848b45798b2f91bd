# The Skiff code location as a container image: a Dagster gRPC code server that the webserver,
# the daemon and the run launcher (Kubernetes or Celery: docs/production.md) talk to.
#   docker build -t skiff:latest .
#
# It runs as the unprivileged user `skiff` (uid/gid 10001, numeric so that Kubernetes'
# `runAsNonRoot` can check it), which owns only what it writes: SKIFF_HOME, DAGSTER_HOME's
# storage/ (compute logs, local artifacts) and dbt's target/ and logs/ folders. The code, the
# installed packages, DAGSTER_HOME itself and its dagster.yaml stay root's, read-only to it:
# the process cannot replace the instance config (its storage, its run launcher).
#
# Ports, all internal to the cluster (none is meant for the internet):
#   4000  this code server (gRPC, unauthenticated): only the Dagster webserver, daemon and run
#         pods may reach it; deploy/networkpolicy.yaml allows exactly that. It listens on
#         0.0.0.0 because they reach it through the pod's address.
#   3000  dagster-webserver (not this image's process): behind an authenticating ingress.
#   8000  `skiff serve`, when this image runs it: the model API, for the shop's backend.
FROM python:3.11-slim

ARG SKIFF_UID=10001

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SKIFF_ENV=prod \
    SKIFF_HOME=/opt/skiff/home \
    SKIFF_DAGSTER_HOME=/opt/dagster/dagster_home \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    HOME=/home/skiff

RUN groupadd --system --gid "${SKIFF_UID}" skiff \
    && useradd --system --uid "${SKIFF_UID}" --gid "${SKIFF_UID}" --home-dir /home/skiff \
       --create-home --shell /usr/sbin/nologin skiff

WORKDIR /opt/skiff/app

# torch first and alone, pinned (see ../shared/STACK.md). On PyPI this is the CUDA build; for a
# smaller CPU-only image, point PIP_EXTRA_INDEX_URL at a CPU wheel index with --build-arg.
ARG PIP_EXTRA_INDEX_URL=
RUN pip install torch==2.13.0

COPY pyproject.toml README.md ./
COPY skiff ./skiff
COPY skiff_cli ./skiff_cli
COPY ml ./ml
COPY orchestration ./orchestration
COPY serving ./serving
COPY dbt_project ./dbt_project
COPY workspace.yaml ./
# editable: the code finds dbt_project/ beside it; compiled here, as the user cannot write it
RUN pip install -e . && pip check \
    && python -m compileall -q skiff skiff_cli ml orchestration serving

# The dbt manifest, built ahead so the code location never parses at start. Parsing renders
# the profile but connects to nothing: placeholders stand in for the credentials.
RUN SNOWFLAKE_ACCOUNT=build SNOWFLAKE_USER=build SNOWFLAKE_PASSWORD=build SNOWFLAKE_ROLE=build \
    SNOWFLAKE_WAREHOUSE=build SNOWFLAKE_DATABASE=build SNOWFLAKE_SCHEMA=build \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    dbt parse --project-dir dbt_project --profiles-dir dbt_project --target snowflake

# Instance config (PostgreSQL storage; connection from DAGSTER_PG_* at run time), root's.
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml

# What the user writes, and nothing else: Skiff's local scratch, Dagster's storage/ (compute
# logs and local artifacts; with PostgreSQL storage nothing else is written under
# DAGSTER_HOME) and dbt's per-invocation target folders and logs. DAGSTER_HOME and dagster.yaml
# stay root's, and the file read-only to all.
RUN mkdir -p "${SKIFF_HOME}" "${DAGSTER_HOME}/storage" dbt_project/target dbt_project/logs \
    && chown -R "${SKIFF_UID}:${SKIFF_UID}" "${SKIFF_HOME}" "${DAGSTER_HOME}/storage" \
       dbt_project/target dbt_project/logs \
    && chown root:root "${DAGSTER_HOME}" "${DAGSTER_HOME}/dagster.yaml" \
    && chmod 0755 "${DAGSTER_HOME}" && chmod 0444 "${DAGSTER_HOME}/dagster.yaml"

# dbt writes no usage cookie (.user.yml) into the root-owned profiles folder
ENV DBT_SEND_ANONYMOUS_USAGE_STATS=false

USER ${SKIFF_UID}:${SKIFF_UID}

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "orchestration.definitions", "-a", "defs"]
