# The GPU profile's vLLM server with Tome's sparse prefill as its attention backend.
# vLLM is pinned: the plugin (engines/vllm_flash_sparse.py) subclasses this version's FlashAttention backend.
ARG VLLM_TAG=v0.25.0
FROM vllm/vllm-openai:${VLLM_TAG}

# Only what the plugin imports: engines/ and kernels/ (torch and Triton come with the image). Installing the project
# without its dependencies registers the `vllm.general_plugins` entry point that fills vLLM's CUSTOM backend slot.
WORKDIR /opt/tome
COPY pyproject.toml README.md ./
COPY engines engines
COPY kernels kernels
RUN pip install --no-cache-dir --no-deps . \
    && python3 -c "import engines.sparse_prefill, kernels.triton_vertical_slash"
WORKDIR /
