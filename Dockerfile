# One image for every service: `docker run IMAGE api|engine --pair P|gateway|settlement|simulate`.
# Runtime dependencies are installed at the versions requirements.lock pins; the lock's
# test and lint tools stay out of the image.

# The trading page's chart library, exactly as package-lock.json pins it.
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/exchange
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY services ./services
# Shipped with the page's static files (the package data); the API serves it from there.
COPY --from=web /src/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.mjs \
     services/api/static/vendor/lightweight-charts.mjs
# The lock as constraints: the project's own dependencies, each at its locked version.
RUN /opt/exchange/bin/pip install --constraint requirements.lock . \
 && /opt/exchange/bin/pip check

FROM python:3.11-slim-bookworm
ENV PATH=/opt/exchange/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/exchange /opt/exchange
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 exchange \
 && useradd --system --uid 10001 --gid exchange --no-create-home --shell /usr/sbin/nologin exchange
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001
ENTRYPOINT ["exchange"]
CMD ["--help"]
