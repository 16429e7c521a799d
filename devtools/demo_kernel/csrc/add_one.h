#pragma once
#include <cuda_runtime_api.h>

// Launch out[i] = in[i] + 1 for i < n on `stream`; returns the cudaError_t of the launch (0: cudaSuccess).
int gpumatrix_add_one_launch(const float* in, float* out, long long n, cudaStream_t stream);
