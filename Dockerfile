# The worker pool and the example app, as one image for docker compose and Heroku.
FROM python:3.12-slim

# Output straight to the log (no buffering in pipes), no attempts to write .pyc files at run
# time (/app is not writable by the user), no pip version check at build time.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The project first, so editing the example does not reinstall it. Built outside /app, so the
# app directory holds only the app (and `import entrypoint` finds the installed package).
# "/src[rq,metrics]" is `pip install .[rq,metrics]` of /src, spelled so hadolint sees a local path
# (DL3013); `metrics` is prometheus_client, for METRICS_PORT (k8s/deployment.yaml sets it).
COPY pyproject.toml README.md /src/
COPY entrypoint/ /src/entrypoint/
RUN pip install --no-cache-dir "/src[rq,metrics]" && rm -rf /src

# The example app and its pool config (RQ imports example.jobs from the working directory).
# Compiled now: every RQ work-horse imports the job's module, and the non-root user cannot
# write __pycache__ in /app at run time.
COPY example/ example/
RUN python -m compileall -q example/

# Heroku refuses to run as root. A numeric USER lets Kubernetes' runAsNonRoot verify it.
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin app
USER 10001:10001

# No CMD: with no command, entrypoint runs the pool from $POOL_CONFIG.
ENV POOL_CONFIG=/app/example/pool.yml

# Docker's health status: the pool answers on its control socket, no group is crash-looping,
# memory is under the guard. Run as the same USER, so the socket's per-user default path
# (/tmp/entrypoint-10001/pool.sock, or $POOL_SOCKET) is the pool's. Heroku ignores HEALTHCHECK;
# Kubernetes uses its own probes (k8s/deployment.yaml runs the same command).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["entrypoint", "--health"]

# Exec form: entrypoint itself is PID 1 (it is the init: no tini, no `init: true`).
ENTRYPOINT ["entrypoint"]
