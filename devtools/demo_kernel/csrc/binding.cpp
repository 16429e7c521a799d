// The Python binding: checks the tensor, then calls the launcher in add_one.cu on torch's current stream.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "add_one.h"

namespace {

torch::Tensor add_one(const torch::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "add_one: x must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "add_one: x must be float32, got ", x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const torch::Tensor in = x.contiguous();
  torch::Tensor out = torch::empty_like(in);
  const int err = gpumatrix_add_one_launch(in.data_ptr<float>(), out.data_ptr<float>(), in.numel(),
                                           c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "add_one: kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gpumatrix demo kernel";
  m.def("add_one", &add_one, "x + 1 for a contiguous float32 CUDA tensor (a compiled CUDA kernel)");
}
