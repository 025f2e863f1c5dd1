// Shared definitions for code compiled by both the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HNAS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HNAS_HOST_DEVICE inline
#endif
