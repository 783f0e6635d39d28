"""vlm_jax: pretraining vision-language models with JAX on device meshes."""
import setuptools

CORE = [
    "jax>=0.10.0,<0.11",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.0,<0.9",
    "ml-collections>=1.1.0,<2",
    "absl-py>=2.1,<3",
    "einops>=0.8,<0.9",
    "msgpack>=1.0,<2",
    "numpy>=1.26,<3",
    "pillow>=10,<14",
    "scikit-learn>=1.5,<2",  # ships the real handwritten digits used by the built-in dataset
    "sentencepiece>=0.2,<0.3",
    "tokenizers>=0.20,<1",
    "ftfy>=6.1,<7",  # open_clip's text cleaning (tokenizer.clean)
    "tensorflow-datasets>=4.9.9,<5",  # data sources only (array_record); TensorFlow is not needed
    "importlib-resources>=6",  # tensorflow-datasets imports it without declaring it
    "pyarrow>=15",  # parquet caption tables
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",  # TensorBoard event files without TensorFlow
]

setuptools.setup(
    name="vlm_jax",
    version="0.1.0",
    description="Pretrain vision-language models (CLIP, SigLIP, multi-objective) with JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["vlm_jax", "vlm_jax.*"]),
    # zero-shot class names and prompt templates (vlm_jax/evals/datasets.py); the built-in
    # shapes' word-level tokenizer
    package_data={"vlm_jax": ["evals/data/*.txt", "data/builtin/*.json"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.8,<4",
                 "tensorboard>=2.16,<3",  # reads the event files back
                 # executes notebooks/quickstart.ipynb headless
                 "nbclient>=0.10,<0.11", "nbformat>=5.10,<6", "ipykernel>=6.29,<8",
                 "matplotlib>=3.8,<4"],
        # launch.convert_weights: PyTorch CLIP/SigLIP checkpoints (not needed to train)
        "interop": ["torch>=2.4,<3", "safetensors>=0.4,<1", "transformers>=4.45,<6",
                    "open_clip_torch>=3.3,<4"],
        "cuda12": ["jax[cuda12]>=0.10.0,<0.11"],
        "tpu": ["jax[tpu]>=0.10.0,<0.11"],
    },
)
