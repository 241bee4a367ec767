# TensorRT-LLM backend image: NVIDIA's TensorRT-LLM release image (TensorRT-LLM with its
# torch, CUDA and MPI) plus this package. The tag follows envs/tensorrt-llm.yaml. Build from
# the project root:
#   docker build -f envs/containers/tensorrt-llm.Dockerfile -t llm-energy-tensorrt-llm .
#   apptainer build resources/containers/tensorrt-llm.sif docker-daemon://llm-energy-tensorrt-llm:latest
# (not exercised on the development machines: no container registry is reachable there).
FROM nvcr.io/nvidia/tensorrt-llm/release:1.2.0
WORKDIR /opt/llm-energy
RUN pip install --no-cache-dir "pydantic>=2.12" pyyaml pandas pyarrow psutil httpx zeus==0.16.0 \
        nvidia-ml-py
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-cache-dir --no-deps .
