# vLLM backend image for GPU clusters: vLLM's official OpenAI-server image (CUDA build of
# vLLM with its torch) plus this package, which the official image lacks. The tag follows
# envs/vllm.yaml. Build from the project root:
#   docker build -f envs/containers/vllm.Dockerfile -t llm-energy-vllm .
#   apptainer build resources/containers/vllm.sif docker-daemon://llm-energy-vllm:latest
# (not exercised on the development machines: no container registry is reachable there).
FROM vllm/vllm-openai:v0.33.0
WORKDIR /opt/llm-energy
RUN pip install --no-cache-dir "pydantic>=2.12" pyyaml pandas pyarrow psutil zeus==0.16.0 \
        nvidia-ml-py
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-cache-dir --no-deps .
# The official image's entrypoint starts a server; Snakemake runs its own command.
ENTRYPOINT []
