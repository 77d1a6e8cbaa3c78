# syntax=docker/dockerfile:1
# One image for every kt-cluster role: `ktc chief`, `ktc worker`, `ktc data synth`, `ktc status`.
#
#   docker build -t REGISTRY/kt-cluster:0.1.0 .
#   docker push REGISTRY/kt-cluster:0.1.0
#   helm install kt-cluster helm/kt-cluster --set image.repository=REGISTRY/kt-cluster
#
# The base image brings TensorFlow with CUDA and cuDNN (and runs on CPU-only nodes as well);
# `pip install .` keeps its TensorFlow (the project accepts >=2.16,<2.22) and adds keras-tuner,
# gRPC and the rest.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The source is bind-mounted for the install only, so no copy of it stays in a layer. The
# image is the whole environment, hence the system interpreter (PEP 668 does not apply).
RUN --mount=type=bind,target=/src,rw \
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install "/src[neptune]" \
    && ktc --help >/dev/null

# uid/gid 1000, as the Helm chart's securityContext expects (runAsUser/fsGroup 1000). Base
# images that already have a user 1000 keep it.
RUN set -eux; \
    getent group 1000 >/dev/null || groupadd --gid 1000 ktc; \
    getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin ktc

# Writable places are volumes in Kubernetes (the root filesystem is read-only): /tmp is HOME
# and holds Keras' cache; /data and /results are the dataset and results volumes.
ENV HOME=/tmp \
    KERAS_HOME=/tmp/.keras
WORKDIR /tmp
USER 1000:1000

# Ports: 8000 gRPC oracle (chief), 9100 chief metrics, 9101 worker metrics.
EXPOSE 8000 9100 9101
ENTRYPOINT ["ktc"]
CMD ["--help"]
