// Depthwise "same" convolution, weight gradient: dW[c][ky][kx] = sum over n, y, x of dY[n,c,y,x] * X[n,c,y+ky-K/2,x+kx-K/2]
// (zero outside the image), fp32, NCHW. Compiled by NVRTC with -DKS=<kernel> -DTH=<rows per tile> -DTHREADS=<block>.
//
// Deterministic split reduction (no atomics): block (c, s) walks work items s, s + S, s + 2S, ... of channel c, where an
// item is one (n, row tile) of TH rows; it stages the tile's dY rows and the X rows they reach (TH + K - 1, zero
// padded) in shared memory, and every thread accumulates a few groups of 4 adjacent taps (ky, kx0..kx0+3) in
// registers: per 4 output columns, one broadcast 128-bit load of dY, two 128-bit loads of X and 16 FMAs. The block
// writes its sums to partial[s][c][K][K]; dwconv_wgrad_reduce adds the S partials in a fixed order. Same inputs, same
// S: bit-identical results run to run.
#ifndef KS
#error "KS (kernel size) must be defined"
#endif
#ifndef TH
#error "TH must be defined"
#endif
#ifndef THREADS
#error "THREADS must be defined"
#endif

#define PAD (KS / 2)
#define KP ((KS + 3) / 4 * 4)
#define GROUPS_PER_ROW (KP / 4)
#define GROUPS (KS * GROUPS_PER_ROW)
#define G ((GROUPS + THREADS - 1) / THREADS)

extern "C" __global__ void __launch_bounds__(THREADS, 1)
dwconv_wgrad(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,
             int batch, int channels, int height, int width, int wp, int splits)
{
    extern __shared__ float4 shared4[];
    const int xw = wp + KP;                        // staged X row: width rounded to 4 plus the filter reach
    float* sG = reinterpret_cast<float*>(shared4); // [TH][wp]
    float* sX = sG + TH * wp;                      // [TH + KS - 1][xw]

    const int c = blockIdx.x, s = blockIdx.y, tid = threadIdx.x;
    const int tilesY = (height + TH - 1) / TH;
    const int items = batch * tilesY;

    float acc[G][4];
#pragma unroll
    for (int i = 0; i < G; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    }

    for (int item = s; item < items; item += splits) {
        const int n = item / tilesY, y0 = (item - n * tilesY) * TH;
        const float* xp = x + ((size_t)n * channels + c) * height * width;
        const float* gp = dy + ((size_t)n * channels + c) * height * width;
        __syncthreads();  // the previous item's readers are done
        for (int i = tid; i < TH * wp; i += THREADS) {
            const int r = i / wp, col = i - r * wp, y = y0 + r;
            sG[i] = (y < height && col < width) ? __ldg(gp + (size_t)y * width + col) : 0.f;
        }
        for (int i = tid; i < (TH + KS - 1) * xw; i += THREADS) {
            const int r = i / xw, col = i - r * xw;
            const int y = y0 - PAD + r, xx = col - PAD;
            sX[i] = (y >= 0 && y < height && xx >= 0 && xx < width) ? __ldg(xp + (size_t)y * width + xx) : 0.f;
        }
        __syncthreads();
        const int rows = min(TH, height - y0);
        for (int r = 0; r < rows; ++r) {
            const float* grow = sG + r * wp;
            for (int x4 = 0; x4 < wp; x4 += 4) {
                const float4 g4 = *reinterpret_cast<const float4*>(grow + x4);
#pragma unroll
                for (int i = 0; i < G; ++i) {
                    const int q = tid + i * THREADS;
                    if (q < GROUPS) {
                        const int ky = q / GROUPS_PER_ROW, kx0 = 4 * (q - ky * GROUPS_PER_ROW);
                        const float* xr = sX + (r + ky) * xw + x4 + kx0;
                        const float4 a = *reinterpret_cast<const float4*>(xr);
                        const float4 b = *reinterpret_cast<const float4*>(xr + 4);
                        const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                        const float g[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
#pragma unroll
                            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(g[e], v[e + j], acc[i][j]);
                        }
                    }
                }
            }
        }
    }

    float* out = partial + ((size_t)s * channels + c) * KS * KS;
#pragma unroll
    for (int i = 0; i < G; ++i) {
        const int q = tid + i * THREADS;
        if (q < GROUPS) {
            const int ky = q / GROUPS_PER_ROW, kx0 = 4 * (q - ky * GROUPS_PER_ROW);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (kx0 + j < KS) out[ky * KS + kx0 + j] = acc[i][j];
            }
        }
    }
}

// dW[c][t] = sum over s of partial[s][c][t], s ascending (a fixed order, so the result is deterministic).
extern "C" __global__ void dwconv_wgrad_reduce(const float* __restrict__ partial, float* __restrict__ dw, int count, int splits)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float sum = 0.f;
    for (int s = 0; s < splits; ++s) sum += partial[(size_t)s * count + i];
    dw[i] = sum;
}
