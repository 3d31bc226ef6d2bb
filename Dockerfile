FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Runtime dependencies first, from the runtime lock only (no test or lint tools; those are
# in requirements-dev.lock), so this layer is cached across code changes.
COPY requirements.lock ./
RUN pip install -r requirements.lock

# The project itself, installed like any wheel: the package carries its pages (server/web)
# and its default configuration (server/defaults, links to conf/ resolved by the build).
COPY pyproject.toml ./
COPY server ./server
COPY tracing ./tracing
COPY conf ./conf
RUN pip install -c requirements.lock '.[valkey]' \
    && rm -rf build ./*.egg-info server tracing pyproject.toml

# /app keeps conf/ (the defaults as files to read or copy, cluster.example.toml) for
# `--config conf/...` or a mount; the node runs from the installed package.
# The server binds to $WEBSERVER_BIND (set in docker-compose.yml).
ENV WEBSERVER_BIND=0.0.0.0:4000
EXPOSE 4000
CMD ["python", "-m", "server"]
