"""gpumatrix-demo-kernel: the smallest real torch CUDA extension, for gpumatrix's tests of compiled extensions.

One kernel (add_one.cu, which includes no torch header, so nvcc's part of the build stays short) and one binding
(binding.cpp, the only file that includes <torch/extension.h>). Built with torch's BuildExtension; needs torch
installed (pip wheel --no-build-isolation) and a CUDA toolkit (CUDA_HOME or /usr/local/cuda).
"""

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

setup(
    name="gpumatrix-demo-kernel",
    version="0.1.0",
    description="A tiny torch CUDA extension (add_one) used by gpumatrix's tests",
    packages=["gpumatrix_demo_kernel"],
    ext_modules=[
        CUDAExtension(
            name="gpumatrix_demo_kernel._C",
            sources=["csrc/binding.cpp", "csrc/add_one.cu"],
            extra_compile_args={"cxx": ["-O2"], "nvcc": ["-O2"]},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    install_requires=["torch", "einops"],
    python_requires=">=3.9",
)
