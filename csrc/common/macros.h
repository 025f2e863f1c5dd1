// Shared definitions for code compiled by both the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HNAS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HNAS_HOST_DEVICE inline
#endif

// Compile a CPU hot loop for AVX-512 and AVX2 too; the loader picks the best one at run time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define HNAS_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HNAS_CPU_CLONES
#endif
