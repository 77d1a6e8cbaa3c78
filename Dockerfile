# syntax=docker/dockerfile:1
# kt-cluster's two images, both on one Python base pinned by digest:
#
#   docker build --target gpu -t REGISTRY/kt-cluster:0.1.0 .       # GPU workers: TensorFlow with CUDA
#   docker build --target cpu -t REGISTRY/kt-cluster:0.1.0-cpu .   # the chief, the data Job, the test
#                                                                  # pod, and workers without GPUs
#   docker push REGISTRY/kt-cluster:0.1.0 && docker push REGISTRY/kt-cluster:0.1.0-cpu
#
# The Helm chart runs `<image.repository>:<tag>` on GPU workers and `<tag>-cpu` everywhere else.
#
# Layers: the dependencies are installed from pyproject.toml alone, so a change of the source
# rebuilds only the small layer of the project itself. The GPU image adds NVIDIA's CUDA and cuDNN
# wheels (`tensorflow[and-cuda]`, for the TensorFlow already installed) on top of the same layers.
#
# The base is `python:3.11-slim-bookworm` pinned to the digest that Docker's official images
# publish for that tag (docker-library/repo-info, repos/python/remote/3.11-slim-bookworm.md). To
# move it to the tag's current image, read the digest with
#   docker buildx imagetools inspect python:3.11-slim-bookworm      (the first "Digest:" line)
# replace it below and rebuild both targets.
FROM python:3.11-slim-bookworm@sha256:fe556eaffd0d96abd8685b83bb8a69addd0dc730fa193669a7df0d49ddcfac02 AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2
# uid/gid 1000, as the Helm chart's securityContext expects (runAsUser/fsGroup 1000); HOME is
# /tmp, a volume in Kubernetes (the root filesystem is read-only).
RUN groupadd --gid 1000 ktc \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin ktc

# The dependencies of pyproject.toml and of its `neptune` extra, without the project (keras-tuner
# pinned there to the releases kt_cluster.core.compat was tested against).
FROM base AS deps-cpu
COPY pyproject.toml /build/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/build/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['neptune']))" > /build/requirements.txt \
    && pip install -r /build/requirements.txt

# CUDA and cuDNN for the installed TensorFlow, as NVIDIA's wheels, each library directory
# registered with the dynamic linker so that TensorFlow finds all of them.
FROM deps-cpu AS deps-gpu
RUN pip install "tensorflow[and-cuda]==$(python -c 'from importlib.metadata import version; print(version("tensorflow"))')" \
    && python -c "import glob, sysconfig; print('\n'.join(sorted(glob.glob(sysconfig.get_paths()['purelib'] + '/nvidia/*/lib'))))" > /etc/ld.so.conf.d/nvidia-wheels.conf \
    && ldconfig

# The project as a wheel; the source is bind-mounted, so no copy of it stays in a layer.
FROM base AS wheel
RUN --mount=type=bind,target=/src,rw pip wheel --no-deps --wheel-dir /wheels /src

# Importing the compat module checks that the installed keras-tuner is a supported release: the
# build fails, not the chief or a worker at start-up.
FROM deps-cpu AS cpu
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels pip install --no-deps /wheels/*.whl \
    && ktc --help >/dev/null \
    && python -c "import kt_cluster.core.compat"
ENV HOME=/tmp \
    KERAS_HOME=/tmp/.keras
WORKDIR /tmp
USER 1000:1000
# Ports: 8000 gRPC oracle (chief), 9100 chief metrics, 9101 worker metrics.
EXPOSE 8000 9100 9101
ENTRYPOINT ["ktc"]
CMD ["--help"]

FROM deps-gpu AS gpu
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels pip install --no-deps /wheels/*.whl \
    && ktc --help >/dev/null \
    && python -c "import kt_cluster.core.compat"
ENV HOME=/tmp \
    KERAS_HOME=/tmp/.keras
WORKDIR /tmp
USER 1000:1000
EXPOSE 8000 9100 9101
ENTRYPOINT ["ktc"]
CMD ["--help"]
