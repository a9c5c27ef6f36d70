"""Stand-in for llguidance on the GPU host (scripts/gpu_unpack.sh installs it only where llguidance is missing).

vLLM 0.25 imports its guidance backend with the engine and names llguidance types in a class body; PyPI has no
llguidance 1.7 wheel for the host (vLLM asks >=1.7,<1.8), and the bench uses no structured output. Any attribute is
an empty class, so those annotations resolve; a real use fails on the empty class.
"""


def __getattr__(name: str) -> type:
    return type(name, (), {})
