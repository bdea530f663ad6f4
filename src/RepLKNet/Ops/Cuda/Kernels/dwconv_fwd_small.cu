// Depthwise "same" convolution, forward, for small maps (W <= 32, K > W typical of RepLKNet's late stages and the
// paper's R = 16 rows): y[n,c] = x[n,c] (*) w[c] + b[c], stride 1, padding K/2, fp32, NCHW.
// Compiled by NVRTC with -DKS=<kernel> -DWI=<map width> -DRY -DBX -DBY -DPL (see dwconv_fwd.cu for the tile terms).
//
// On a W-wide map most of a K x K window lies in the padding when K > W (14 x 14 with K = 27: 73% of the taps). The
// direct kernel skips padded rows but not padded columns; this one skips both. A thread owns RY rows x 4 adjacent
// columns x0..x0+3. Instead of sliding over the K filter columns it slides over the W image columns: output x0+j takes
// image column c with filter column c - (x0 + j) + K/2. Written as t = c - j + 3 (t in [0, W + 3)), the image value is
// the same for every thread of a row (a broadcast shared load) and the filter tap index kbase + t, kbase = K/2 - x0 - 3,
// is a per-thread window into the filter row, held in registers and reused for all RY output rows. Filter rows are
// stored with zero margins so that windows reaching past the filter read zeros. Rows are looped filter-row first
// (ky), each output row taking image row ys + r + ky - K/2 when it exists.
#ifndef KS
#error "KS (kernel size) must be defined"
#endif
#ifndef WI
#error "WI (map width) must be defined"
#endif

#define PAD (KS / 2)
#define TW (4 * BX)
#define TH (RY * BY)
#define THREADS (BX * BY * PL)
#define SW ((WI + 6 + 3) / 4 * 4)                                         // staged row: 3 zero columns, W image columns, zeros
#define ML0 ((TW - 1 - PAD) > 0 ? (TW - 1 - PAD) : 0)                   // filter row left margin needed
#define ML (ML0 + ((((3 - PAD) % 4 + 4) % 4 - ML0 % 4 + 4) % 4))          // ... made = (3 - PAD) mod 4, so windows are 16-byte aligned
#define WR ((ML + PAD + WI + 3) / 4 * 4)                                  // stored filter row length
#define WSEG ((WI + 3 + 3) / 4 * 4)                                       // filter window a thread holds

extern "C" __global__ void __launch_bounds__(THREADS, 1)
dwconv_fwd_small(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                 float* __restrict__ y, int planes, int channels, int height, int width, int tilesX, int rowsStored, int vectorStore)
{
    extern __shared__ float4 shared4[];
    float* sW = reinterpret_cast<float*>(shared4);
    float* sIn = sW + PL * KS * WR;

    const int tx = threadIdx.x, ty = threadIdx.y, tp = threadIdx.z;
    const int tid = tx + BX * (ty + BY * tp);
    const int tileY0 = blockIdx.x * TH;   // one tile spans the whole width (tilesX == 1)
    const int plane0 = (blockIdx.z * gridDim.y + blockIdx.y) * PL;
    const int rowLo = max(0, tileY0 - PAD);
    const int rows = min(height, tileY0 + TH + PAD) - rowLo;

    for (int i = tid; i < PL * KS * WR; i += THREADS) {
        const int p = i / (KS * WR);
        const int rest = i - p * (KS * WR);
        const int ky = rest / WR, kx = rest - ky * WR - ML;
        const int plane = plane0 + p;
        float v = 0.f;
        if (plane < planes && kx >= 0 && kx < KS) v = __ldg(w + ((size_t)(plane % channels) * KS + ky) * KS + kx);
        sW[i] = v;
    }

    for (int p = 0; p < PL; ++p) {
        const int plane = plane0 + p;
        if (plane >= planes) break;
        const float* xp = x + (size_t)plane * height * WI;
        float* sp = sIn + p * rowsStored * SW;
        for (int i = tid; i < rows * SW; i += THREADS) {
            const int r = i / SW, c = i - r * SW - 3;
            sp[i] = (c >= 0 && c < WI) ? __ldg(xp + (size_t)(rowLo + r) * WI + c) : 0.f;
        }
    }
    __syncthreads();

    const int plane = plane0 + tp;
    const int ys = tileY0 + ty * RY;
    const int x0 = 4 * tx;
    if (plane >= planes || ys >= height || x0 >= WI) return;

    float acc[RY][4];
#pragma unroll
    for (int r = 0; r < RY; ++r) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[r][j] = 0.f;
    }

    const float* sp = sIn + tp * rowsStored * SW;
    const float* wp = sW + tp * KS * WR + ML + PAD - x0 - 3;  // window start for filter row 0
    // Filter rows that reach at least one image row from this strip: image row g = ys + r + ky - PAD.
    const int kyBegin = max(0, PAD - ys - (RY - 1));
    const int kyEnd = min(KS, height + PAD - ys);
    for (int ky = kyBegin; ky < kyEnd; ++ky) {
        float ws[WSEG];
        const float4* wr4 = reinterpret_cast<const float4*>(wp + ky * WR);
#pragma unroll
        for (int q = 0; q < WSEG / 4; ++q) {
            const float4 t = wr4[q];
            ws[4 * q] = t.x; ws[4 * q + 1] = t.y; ws[4 * q + 2] = t.z; ws[4 * q + 3] = t.w;
        }
        const int g0 = ys + ky - PAD;
#pragma unroll
        for (int r = 0; r < RY; ++r) {
            const int g = g0 + r;
            if (g >= 0 && g < height) {
                float v[SW];
                const float4* row = reinterpret_cast<const float4*>(sp + (g - rowLo) * SW);
#pragma unroll
                for (int q = 0; q < SW / 4; ++q) {
                    const float4 t = row[q];
                    v[4 * q] = t.x; v[4 * q + 1] = t.y; v[4 * q + 2] = t.z; v[4 * q + 3] = t.w;
                }
#pragma unroll
                for (int t = 0; t < WI + 3; ++t) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        // image column t + j - 3 must exist (compile-time after unrolling)
                        if (t + j >= 3 && t + j < WI + 3) acc[r][j] = fmaf(ws[t], v[t + j], acc[r][j]);
                    }
                }
            }
        }
    }

    const float b = bias != nullptr ? __ldg(bias + plane % channels) : 0.f;
    float* yp = y + (size_t)plane * height * WI;
#pragma unroll
    for (int r = 0; r < RY; ++r) {
        const int yy = ys + r;
        if (yy < height) {
            float* out = yp + (size_t)yy * WI + x0;
            if (vectorStore && x0 + 3 < WI) {
                *reinterpret_cast<float4*>(out) = make_float4(acc[r][0] + b, acc[r][1] + b, acc[r][2] + b, acc[r][3] + b);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (x0 + j < WI) out[j] = acc[r][j] + b;
                }
            }
        }
    }
}
