// Depthwise "same" convolution, forward: y[n,c] = x[n,c] (*) w[c] + b[c], stride 1, padding K/2, fp32, NCHW.
// Compiled at run time by NVRTC with the kernel size and the tile shape as compile-time constants:
//   -DKS=<odd kernel size> -DRY=<output rows per thread> -DBX=<threads along x> -DBY=<threads along y> -DPL=<planes per block>
//
// Design (direct convolution; docs/cuda.md):
// - One block computes a TH x TW output tile (TW = 4*BX, TH = RY*BY) of PL (n, c) planes (several small planes per
//   block keep warps full at 7x7..16x16 maps).
// - The block stages its input window in shared memory: only the image rows the tile touches (padded rows are never
//   stored), with zero columns on the left/right so that the inner loop has no bounds checks; the PL filters sit next to it.
// - Each thread owns RY output rows x 4 adjacent columns (RY*4 accumulators). It walks the *image* rows its strip needs
//   (rows in the vertical padding are skipped, not multiplied by zero), loads the row segment it needs once
//   (4 + K - 1 values, 128-bit shared loads) and applies it to every one of its output rows that the row reaches, with
//   that row's filter row read as broadcast 128-bit loads. Per input row: RY*4*K FMAs for (K+3)/4 + RY*(K+3)/4 loads.
#ifndef KS
#error "KS (kernel size) must be defined"
#endif
#ifndef RY
#error "RY must be defined"
#endif
#ifndef BX
#error "BX must be defined"
#endif
#ifndef BY
#error "BY must be defined"
#endif
#ifndef PL
#error "PL must be defined"
#endif

#define PAD (KS / 2)
#define TW (4 * BX)
#define TH (RY * BY)
#define KP ((KS + 3) / 4 * 4)            // filter row stride in shared memory
#define SEG ((4 + KS - 1 + 3) / 4 * 4)   // input values one thread reads per row
#define IN_W ((TW + KS - 1 + 3) / 4 * 4) // staged row width (tile + halo, multiple of 4)
#define THREADS (BX * BY * PL)

// acc[r][0..3] += filter row (g - ys - r + PAD) applied to the row segment v (4 outputs, K taps each).
#define ROW_STEP(r)                                                                                 \
    do {                                                                                            \
        const float4* wr = reinterpret_cast<const float4*>(wp + (g - (ys + (r)) + PAD) * KP);       \
        _Pragma("unroll") for (int q = 0; q < KP / 4; ++q) {                                        \
            const float4 t = wr[q];                                                                 \
            _Pragma("unroll") for (int e = 0; e < 4; ++e) {                                         \
                if (4 * q + e < KS) {                                                               \
                    const float we = e == 0 ? t.x : e == 1 ? t.y : e == 2 ? t.z : t.w;              \
                    _Pragma("unroll") for (int j = 0; j < 4; ++j)                                   \
                        acc[r][j] = fmaf(we, v[4 * q + e + j], acc[r][j]);                          \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    } while (0)

extern "C" __global__ void __launch_bounds__(THREADS, 1)
dwconv_fwd(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
           float* __restrict__ y, int planes, int channels, int height, int width, int tilesX, int rowsStored, int vectorStore)
{
    extern __shared__ float4 shared4[];
    float* sW = reinterpret_cast<float*>(shared4);
    float* sIn = sW + PL * KS * KP;

    const int tx = threadIdx.x, ty = threadIdx.y, tp = threadIdx.z;
    const int tid = tx + BX * (ty + BY * tp);
    const int tileX0 = (blockIdx.x % tilesX) * TW;
    const int tileY0 = (blockIdx.x / tilesX) * TH;
    const int plane0 = (blockIdx.z * gridDim.y + blockIdx.y) * PL;  // planes beyond 65535 blocks continue along z
    const int rowLo = max(0, tileY0 - PAD);
    const int rows = min(height, tileY0 + TH + PAD) - rowLo;

    for (int i = tid; i < PL * KS * KP; i += THREADS) {
        const int p = i / (KS * KP);
        const int rest = i - p * (KS * KP);
        const int ky = rest / KP, kx = rest - ky * KP;
        const int plane = plane0 + p;
        float v = 0.f;
        if (plane < planes && kx < KS) v = __ldg(w + ((size_t)(plane % channels) * KS + ky) * KS + kx);
        sW[i] = v;
    }

    for (int p = 0; p < PL; ++p) {
        const int plane = plane0 + p;
        if (plane >= planes) break;
        const float* xp = x + (size_t)plane * height * width;
        float* sp = sIn + p * rowsStored * IN_W;
        for (int i = tid; i < rows * IN_W; i += THREADS) {
            const int r = i / IN_W, c = i - r * IN_W;
            const int gx = tileX0 - PAD + c;
            sp[i] = (gx >= 0 && gx < width) ? __ldg(xp + (size_t)(rowLo + r) * width + gx) : 0.f;
        }
    }
    __syncthreads();

    const int plane = plane0 + tp;
    const int ys = tileY0 + ty * RY;  // first output row of this thread's strip
    const int xs = 4 * tx;            // first output column, relative to the tile
    if (plane >= planes || ys >= height || tileX0 + xs >= width) return;

    const float b = bias != nullptr ? __ldg(bias + plane % channels) : 0.f;
    float acc[RY][4];
#pragma unroll
    for (int r = 0; r < RY; ++r) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[r][j] = 0.f;
    }

    const float* sp = sIn + tp * rowsStored * IN_W + xs;
    const float* wp = sW + tp * KS * KP;
    const int gBegin = max(0, ys - PAD);
    const int gEnd = min(height, ys + RY + PAD);
    for (int g = gBegin; g < gEnd; ++g) {
        float v[SEG];
        const float4* row = reinterpret_cast<const float4*>(sp + (g - rowLo) * IN_W);
#pragma unroll
        for (int q = 0; q < SEG / 4; ++q) {
            const float4 t = row[q];
            v[4 * q] = t.x; v[4 * q + 1] = t.y; v[4 * q + 2] = t.z; v[4 * q + 3] = t.w;
        }
        // Rows in the middle of the strip's reach feed every output row: no per-row test there, so the compiler can
        // interleave the RY independent accumulator groups; near the ends each output row checks its filter row.
        if (g - ys - (RY - 1) + PAD >= 0 && g - ys + PAD < KS) {
#pragma unroll
            for (int r = 0; r < RY; ++r) ROW_STEP(r);
        } else {
#pragma unroll
            for (int r = 0; r < RY; ++r) {
                const int ky = g - (ys + r) + PAD;
                if (ky >= 0 && ky < KS) ROW_STEP(r);
            }
        }
    }

    float* yp = y + (size_t)plane * height * width;
    const int x0 = tileX0 + xs;
#pragma unroll
    for (int r = 0; r < RY; ++r) {
        const int yy = ys + r;
        if (yy < height) {
            float* out = yp + (size_t)yy * width + x0;
            if (vectorStore && x0 + 3 < width) {
                *reinterpret_cast<float4*>(out) = make_float4(acc[r][0] + b, acc[r][1] + b, acc[r][2] + b, acc[r][3] + b);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (x0 + j < width) out[j] = acc[r][j] + b;
                }
            }
        }
    }
}
