// Just enough of CUDA C++ to run this project's kernels on the CPU: one std::thread per CUDA thread of a block, a
// std::barrier for __syncthreads, blocks one after another. Used by CudaKernelEmulationTests (g++ -std=c++20).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
using std::max;
using std::min;
struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
thread_local dim3 threadIdx;
dim3 blockIdx, gridDim, blockDim;
std::barrier<>* g_barrier;
#define __global__
#define __launch_bounds__(...)
#define __restrict__
#define __shared__
#define __syncthreads() g_barrier->arrive_and_wait()
template <class T> T __ldg(const T* p) { return *p; }
