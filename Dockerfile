# hardgen's runtime stack as a container image, for clusters without conda (`snakemake --sdm apptainer`).
# Built from the same pins as `make` and envs/hardgen.yaml: requirements.lock (its Linux markers pick PyPI's CUDA
# build of torch, which also runs on CPU). The workflow files stay outside: Snakemake runs the checkout's scripts.
#
#   docker build -t hardgen:0.1.0 .
#   apptainer build hardgen.sif docker-daemon://hardgen:0.1.0      # or push it and use docker://<registry>/...
#   snakemake --sdm apptainer --config container=hardgen.sif --apptainer-args "--nv" ...
FROM python:3.11.13-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/hardgen
COPY requirements.lock ./
RUN python -m pip install -r requirements.lock

# hardgen itself (its dependencies are all pinned above); jobs import the checkout's src/ first (PYTHONPATH).
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN python -m pip install --no-deps . && python -c "import hardgen, torch, diffusers, segmentation_models_pytorch"
