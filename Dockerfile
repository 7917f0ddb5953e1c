# One image for the API, the GPU worker and the maintenance worker; docker-compose.yml picks the command.
# TORCH_INDEX selects the PyTorch wheels: the default CUDA build from PyPI for GPU workers, or
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a smaller CPU-only image.
FROM python:3.11-slim

ARG TORCH_INDEX=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 atelier
WORKDIR /app

# dependencies first, so code changes do not reinstall torch
COPY pyproject.toml ./
RUN mkdir -p api shared worker && touch api/__init__.py shared/__init__.py worker/__init__.py \
    && pip install --extra-index-url "$TORCH_INDEX" -e . \
    && rm -rf api shared worker

COPY alembic.ini ./
COPY migrations migrations
COPY shared shared
COPY worker worker
COPY api api
RUN pip install --no-deps -e . && mkdir -p /data/storage && chown -R atelier /data

USER atelier
ENV ATELIER_STORAGE_DIR=/data/storage ATELIER_PORT=8000
EXPOSE 8000
# the API under gunicorn with gevent workers (api/gunicorn_conf.py: the same as `atelier run`)
CMD ["gunicorn", "-c", "api/gunicorn_conf.py", "--bind", "0.0.0.0:8000"]
