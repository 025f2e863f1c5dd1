"""Build of hnas_fast and its compiled extension ``hnas_fast._C``.

CPU kernels are always built. CUDA kernels are built when nvcc is found (``CUDA_HOME`` or
``/usr/local/cuda``), unless ``HNAS_FAST_WITH_CUDA=0``; ``TORCH_CUDA_ARCH_LIST`` defaults to ``9.0``
(H100/H200) because nvcc is slow and every extra arch multiplies the build time.
Install with ``pip install --no-build-isolation -e .`` so the build uses the torch already installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import find_packages, setup

VERSION = "0.1.0"
ROOT = Path(__file__).parent


def _want_cuda() -> bool:
    flag = os.environ.get("HNAS_FAST_WITH_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    from torch.utils import cpp_extension

    found = cpp_extension.CUDA_HOME is not None and Path(cpp_extension.CUDA_HOME, "bin", "nvcc").exists()
    if flag in ("1", "true", "yes") and not found:
        raise RuntimeError("HNAS_FAST_WITH_CUDA=1 but nvcc was not found: set CUDA_HOME")
    return found


def _extensions() -> list:
    from torch.utils import cpp_extension

    cpp_sources = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp") if "tests" not in p.parts
    )
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    cxx = ["-O3", "-fopenmp", f'-DHNAS_FAST_VERSION="{VERSION}"']
    if _want_cuda():
        arch = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        defines = ["-DHNAS_WITH_CUDA", f'-DHNAS_CUDA_ARCH_LIST="{arch}"']
        return [
            cpp_extension.CUDAExtension(
                "hnas_fast._C",
                cpp_sources + cuda_sources,
                extra_compile_args={"cxx": cxx + defines, "nvcc": ["-O3", *defines]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        cpp_extension.CppExtension(
            "hnas_fast._C", cpp_sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
        )
    ]


def _cmdclass() -> dict:
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="hnas_fast",
    version=VERSION,
    packages=find_packages(include=["hnas_fast", "hnas_fast.*"]),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    python_requires=">=3.10",
)
