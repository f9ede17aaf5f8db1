# syntax=docker/dockerfile:1
# dfbk-bench in one image: the package and its pinned environment (requirements/constraints.txt,
# installed by the same pip command as `make install`), Snakemake's rules run in it with
# `--software-deployment-method apptainer` (Snakefile `container:`). Build, push and convert to
# Apptainer: docs/cluster.md, "Container".
#   docker build -t dfbk-bench:0.1.0 .
# torch's wheels bring their own CUDA 13 libraries; the base provides the NVIDIA container runtime
# hooks and needs a host driver for CUDA 13 (>= 580). Python 3.11 (the lock's interpreter) comes
# from uv's standalone builds, independent of the distribution's python3.
FROM ghcr.io/astral-sh/uv:0.9.26 AS uv

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python
RUN uv python install 3.11 && uv venv --seed --python 3.11 /opt/venv

# Nothing is downloaded at run time: weights come from `dfbk weights` into bound folders.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    MPLBACKEND=Agg

WORKDIR /opt/dfbk-bench
COPY . .
RUN pip install --quiet --upgrade "pip>=24"
RUN pip install --quiet -c requirements/constraints.txt -e ".[test]"
RUN dfbk --version && dfbk list-methods > /dev/null

ENTRYPOINT ["dfbk"]
CMD ["--help"]
