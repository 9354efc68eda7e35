"""torchrec_me package.

torchrec and fbgemm-gpu are deliberately not in install_requires: torchrec's own
metadata asks for the CUDA build ``fbgemm-gpu``, which a CPU machine must not pull.
Install the stack for your machine from requirements/ first (see the README's version
matrix), then this package.
"""

from setuptools import find_packages, setup

setup(
    name="torchrec_me",
    version="0.1.0",
    description="Multi-embedding recommendation models on TorchRec",
    python_requires=">=3.10",
    packages=find_packages(include=["torchrec_me", "torchrec_me.*"]),
    install_requires=[
        "torch>=2.11",
        "numpy",
        "PyYAML",
        "tqdm",
        "torchmetrics>=1.0",
        "pyarrow",
        "iopath",
        "matplotlib",
    ],
    entry_points={"console_scripts": ["torchrec-me=torchrec_me.cli:main"]},
)
