# MTCC on a GPU node: CUDA runtime, ffmpeg, the package, the GPU build of ONNX Runtime.
# Build: docker build -t mtcc .
# Run:   docker run --gpus all -v /data:/data mtcc run mtcc --input /data/raw --output /data/mtcc
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 RAY_AUTH_MODE=disabled
RUN apt-get update \
 && apt-get install -y -qq ffmpeg espeak-ng sox python3 python3-venv python3-dev gcc \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mtcc
# the whole project, less what .dockerignore names (virtual environments, builds, outputs): a folder the
# package maps (pyproject.toml's package-dir) can never be missing from the image
# (tests/test_docker_context.py installs the package from exactly this context)
COPY . .

RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --upgrade pip setuptools wheel \
 && /opt/venv/bin/pip install -q '.[s3,gcs]' \
 && /opt/venv/bin/mtcc setup-node --gpu
# `mtcc setup-node --gpu`: the model libraries installed without their dependencies (pipeline/node.py), and
# ONNX Runtime's GPU build (the face detector's CUDAExecutionProvider) in place of the CPU one that
# pyproject.toml names (both install the same module); a profile with `device: cuda` refuses to start on a
# node without the CUDA provider, naming this package. `mtcc env mtcc` in the image says what is missing
# weights: mount a folder made by `mtcc models fetch` and pass --set models=/models/models.yaml
ENV PATH=/opt/venv/bin:$PATH

ENTRYPOINT ["mtcc"]
CMD ["--help"]
