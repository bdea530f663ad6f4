// Runs one kernel variant (chosen with -D at compile time, like NVRTC does) on random data and compares every output
// with a float64 direct convolution. Shared memory starts as garbage, outputs as NaN; the plane blocks are spread
// over grid y and z (gridDim.y = 3) as the launcher does beyond 65535 blocks.
// usage: emulate N C H W seed        prints "max_rel nan_count" and exits 0 when max_rel <= 1e-5 and nothing is NaN
#include "cuda_shim.h"
#define shared4 emulated_shared
#include KERNEL_FILE
#undef shared4
#include <random>
alignas(16) float4 emulated_shared[1 << 16];

int main(int argc, char** argv) {
    if (argc < 6) return 2;
    int N = atoi(argv[1]), C = atoi(argv[2]), H = atoi(argv[3]), W = atoi(argv[4]);
    std::mt19937 rng((unsigned)atoi(argv[5]));
    std::uniform_real_distribution<float> d(-1, 1);
    std::vector<float> x((size_t)N * C * H * W), w((size_t)C * KS * KS), b(C), y((size_t)N * C * H * W, NAN);
    for (auto& v : x) v = d(rng);
    for (auto& v : w) v = d(rng);
    for (auto& v : b) v = d(rng);
    int planes = N * C, tilesX = (W + TW - 1) / TW, tilesY = (H + TH - 1) / TH;
    int rowsStored = min(H, TH + KS - 1), vec = (W % 4 == 0);
    int planeBlocks = (planes + PL - 1) / PL;
    gridDim.y = 3;
    for (int pb = 0; pb < (planeBlocks + 2) / 3 * 3; ++pb)
        for (int tb = 0; tb < tilesX * tilesY; ++tb) {
            blockIdx.x = tb; blockIdx.y = pb % 3; blockIdx.z = pb / 3;
            std::memset(emulated_shared, 0x7f, sizeof(emulated_shared));
            std::barrier bar(THREADS);
            g_barrier = &bar;
            std::vector<std::thread> threads;
            for (int z = 0; z < PL; ++z)
                for (int yy = 0; yy < BY; ++yy)
                    for (int xx = 0; xx < BX; ++xx)
                        threads.emplace_back([&, xx, yy, z] {
                            threadIdx.x = xx; threadIdx.y = yy; threadIdx.z = z;
                            KFUNC(x.data(), w.data(), b.data(), y.data(), planes, C, H, W, tilesX, rowsStored, vec);
                        });
            for (auto& t : threads) t.join();
        }
    double maxErr = 0, maxRef = 0;
    long nan = 0;
    for (int p = 0; p < planes; ++p) {
        int c = p % C;
        for (int i = 0; i < H; ++i)
            for (int j = 0; j < W; ++j) {
                double s = b[c];
                for (int ky = 0; ky < KS; ++ky)
                    for (int kx = 0; kx < KS; ++kx) {
                        int yy = i + ky - KS / 2, xx = j + kx - KS / 2;
                        if (yy >= 0 && yy < H && xx >= 0 && xx < W) s += (double)w[((size_t)c * KS + ky) * KS + kx] * x[((size_t)p * H + yy) * W + xx];
                    }
                float o = y[((size_t)p * H + i) * W + j];
                if (std::isnan(o)) nan++;
                maxErr = std::max(maxErr, std::fabs(o - s));
                maxRef = std::max(maxRef, std::fabs(s));
            }
    }
    double rel = maxErr / (maxRef > 0 ? maxRef : 1);
    printf("%.3e %ld\n", rel, nan);
    return nan == 0 && rel <= 1e-5 ? 0 : 1;
}
