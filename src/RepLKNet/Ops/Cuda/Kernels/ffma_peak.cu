// fp32 FFMA ceiling: CHAINS independent dependency chains per thread, UNROLL FMAs each per iteration, so that every
// scheduler always has an independent FFMA to issue. FLOPs = 2 * CHAINS * UNROLL * iterations * threads.
#define CHAINS 8
#define UNROLL 16

extern "C" __global__ void __launch_bounds__(256) ffma_peak(float* out, int iterations, float b, float c)
{
    float a[CHAINS];
#pragma unroll
    for (int i = 0; i < CHAINS; ++i) a[i] = (threadIdx.x + i) * 1e-3f;
    for (int it = 0; it < iterations; ++it) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int i = 0; i < CHAINS; ++i) a[i] = fmaf(a[i], b, c);
        }
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < CHAINS; ++i) s += a[i];
    // Never true for the arguments the host passes; keeps the chains alive without a store per thread.
    if (s == 123456.f) out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
