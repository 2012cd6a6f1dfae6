"""Install mosaic: fused Triton kernels and a PyTorch model package for Memory Mosaics."""
from setuptools import find_packages, setup

setup(
    name="mosaic",
    version="0.1.0",
    description="Memory Mosaics (arXiv 2405.06394) with fused Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mosaic_kernels*", "mosaic_model*", "benchmarks*"]),
    package_data={"mosaic_kernels": ["*/README.md"], "mosaic_model": ["assets/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy",
        "tiktoken",
        "datasets",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # BabiStories ships as a multi-volume 7z archive: py7zr reads 7z in pure Python and
        # multivolumefile joins the parts, so no 7z binary is needed.
        "babistories": ["py7zr", "multivolumefile"],
        "dev": ["pytest", "pytest-benchmark", "py7zr", "multivolumefile"],
    },
    entry_points={"console_scripts": ["mosaic-train=mosaic_model.train:main", "mosaic-eval=mosaic_model.evaluate:main"]},
)
