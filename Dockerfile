FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from the lock file, so this layer is cached across code changes.
COPY requirements.lock ./
RUN pip install -r requirements.lock

# Run from the source tree (not an installed copy) so conf/ sits beside the
# packages, where the settings loader looks for it.
COPY pyproject.toml ./
COPY server ./server
COPY tracing ./tracing
COPY conf ./conf

# The server binds to $WEBSERVER_BIND (set in docker-compose.yml).
ENV WEBSERVER_BIND=0.0.0.0:4000
EXPOSE 4000
CMD ["python", "-m", "server"]
