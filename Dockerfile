# One image for every service: `docker run IMAGE api|engine --pair P|gateway|settlement|simulate`.
# Runtime dependencies are installed at the versions requirements.lock pins; the lock's
# test and lint tools stay out of the image.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/exchange
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY services ./services
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
