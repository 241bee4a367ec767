# Image of the pipeline's own environment: the transformers and openai-server backends
# (backend registry: container of transformers_spec / openai_server_spec). Pins from
# requirements/main.txt (the lock the local .venv is built from; its sha256 is recorded in
# every cell's provenance.json). Build from the project root:
#   docker build -f envs/containers/pipeline.Dockerfile -t llm-energy-pipeline .
#   apptainer build resources/containers/pipeline.sif docker-daemon://llm-energy-pipeline:latest
# (not exercised on the development machines: no container registry is reachable there).
FROM python:3.11-slim
WORKDIR /opt/llm-energy
COPY requirements/main.txt requirements/main.txt
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements/main.txt
COPY requirements/no-deps/main.txt requirements/no-deps/main.txt
RUN pip install --no-cache-dir --no-deps -r requirements/no-deps/main.txt
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-cache-dir --no-deps .
