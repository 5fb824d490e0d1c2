# robustkit on a GPU: `docker build -t robustkit .`, then see README.md, section "Docker".
#
# Base: the official PyTorch CUDA *runtime* image (no compilers; robustkit builds no
# extensions), pinned to one release. torch 2.14.1 lies in the range pyproject.toml supports
# (torch>=2.4) and is the release the test suite runs on. Its CUDA 12.6 build runs on NVIDIA
# drivers >= 525 (CUDA 12 minor-version compatibility) and on GPUs up to Hopper. Blackwell
# GPUs need a newer CUDA build, e.g.
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.2-cudnn9-runtime .
# (CUDA 13 needs a driver >= 580).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

# Optional extras to install, e.g. --build-arg EXTRAS='[ray,slurm]' (never the dev extras).
ARG EXTRAS=""
# UID of the non-root user. 10001 stays clear of the base image's own users (uid 1000 is
# `ubuntu` there); to own the files written to a bind mount, run with --user "$(id -u):$(id -g)".
ARG UID=10001

# PyTorch images since 2.11 use Ubuntu's system Python, which PEP 668 marks "externally
# managed"; the image is the environment, so pip may install into it. Caches and matplotlib's
# config go to /tmp so that any --user UID can run the image (its HOME may not be writable).
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    ROBUSTKIT_DATA_DIR=/data

WORKDIR /opt/robustkit
COPY pyproject.toml README.md ./
COPY robustkit ./robustkit
COPY experiments ./experiments

# The install step (README.md, "Docker", repeats it; tests/test_docker.py checks they agree).
# The constraint keeps the image's own torch (its CUDA build): without it pip could replace it
# by another torch wheel from PyPI to satisfy a newer torchvision. It names the version pip
# sees (the distribution's metadata), which may differ from torch.__version__ in local builds.
RUN python -c "from importlib.metadata import version; print('torch==' + version('torch'))" > constraints.txt \
    && python -m pip install --no-cache-dir --constraint constraints.txt "./${EXTRAS}"

RUN useradd --create-home --uid "${UID}" --user-group robustkit \
    && mkdir -p /data /runs \
    && chown robustkit:robustkit /data /runs

USER ${UID}
WORKDIR /runs
VOLUME ["/data", "/runs"]

ENTRYPOINT ["robustkit"]
CMD ["--help"]
