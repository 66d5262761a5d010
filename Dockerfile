# syntax=docker/dockerfile:1
# The inferbus image: one image for both processes, chosen by the command.
#   docker build -t inferbus .
#   docker run --rm -v $PWD/worker.toml:/etc/inferbus/worker.toml inferbus worker --config /etc/inferbus/worker.toml
#   docker run --rm -p 8090:8090 -v $PWD/router.yml:/etc/inferbus/router.yml inferbus router --config /etc/inferbus/router.yml
# Runtime dependencies only: the dev extras (pytest, llama-cpp-python, ...) are never installed.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/inferbus/.venv
WORKDIR /src
# What the distribution is built from: pyproject.toml, the readme it names, the packages.
COPY pyproject.toml README.md ./
COPY services ./services
COPY tools ./tools
COPY router ./router
COPY node_worker ./node_worker
RUN /opt/inferbus/.venv/bin/pip install /src

FROM python:3.11-slim
RUN groupadd --system --gid 10001 inferbus \
    && useradd --system --uid 10001 --gid inferbus --create-home --home-dir /home/inferbus \
       --shell /usr/sbin/nologin inferbus
COPY --from=build /opt/inferbus/.venv /opt/inferbus/.venv
ENV PATH=/opt/inferbus/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER inferbus
WORKDIR /home/inferbus
# SIGTERM drains a worker (drain_grace_s, 30 s by default): give `docker stop` a longer -t
# (compose: stop_grace_period) or running jobs are killed at Docker's 10 s default.
STOPSIGNAL SIGTERM
EXPOSE 8090 9464
ENTRYPOINT ["inferbus"]
CMD ["--help"]
