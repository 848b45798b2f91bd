# The Skiff code location as a container image: a Dagster gRPC code server that the webserver,
# the daemon and the run launcher (Kubernetes or Celery: docs/production.md) talk to.
#   docker build -t skiff:latest .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    SKIFF_ENV=prod \
    SKIFF_HOME=/opt/skiff/home \
    SKIFF_DAGSTER_HOME=/opt/dagster/dagster_home

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
# editable: the code finds dbt_project/ beside it
RUN pip install -e . && pip check

# The dbt manifest, built ahead so the code location never parses at start. Parsing renders
# the profile but connects to nothing: placeholders stand in for the credentials.
RUN SNOWFLAKE_ACCOUNT=build SNOWFLAKE_USER=build SNOWFLAKE_PASSWORD=build SNOWFLAKE_ROLE=build \
    SNOWFLAKE_WAREHOUSE=build SNOWFLAKE_DATABASE=build SNOWFLAKE_SCHEMA=build \
    dbt parse --project-dir dbt_project --profiles-dir dbt_project --target snowflake

# Instance config (PostgreSQL storage; connection from DAGSTER_PG_* at run time).
COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "orchestration.definitions", "-a", "defs"]
