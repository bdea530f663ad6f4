"""Expected values for ErfTests.The_99_percent_square_is_the_official_float32_one_not_the_float64_one.

Run with NumPy 1.x (checked with Debian 12's python3-numpy 1.24.2) and its portable float32 log10 (the C library's log10f):
    NPY_DISABLE_CPU_FEATURES="AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL" /usr/bin/python3 numpy_erf_reference.py
The 512x512 score matrix is the test's: a core of levels L in 0..5 from an integer formula with M = 10^L - 1 (so A = L/5
whatever log10f is used), a faint tail M = 5e-7 from Chebyshev distance 200 on (where real ERF maps flatten out, so that
successive squares differ by less than float32 resolves), and in row 0 and column 0, which no square reaches, K cells at level 5 (row 0 from column 1 on, then column 0 from row 1 on) and one
tuning value X at (0, 0). K and X put the share of the squares near 0.99; X is the middle of the values for which the official
float32 arithmetic (analyze_erf.py verbatim) and float64 arithmetic give different 99 % squares. Prints the test's constants.
"""
import numpy as np

N, D, TAIL = 512, 200, np.float32(5e-7)


def matrix(k, x):
    r = np.arange(N)[:, None]
    c = np.arange(N)[None, :]
    d = np.maximum(np.abs(r - N // 2), np.abs(c - N // 2))
    bump = ((r * 7 + c * 13) % 3 == 0).astype(np.int64)
    levels = np.clip(5 - d // 40 + bump, 0, 5)
    m = (10.0 ** levels - 1).astype(np.float32)
    m[d >= D] = TAIL
    m[0, :] = 0
    m[:, 0] = 0
    m[0, 1:min(k, N - 1) + 1] = 99999  # K cells: row 0 from column 1, then column 0 from row 1
    m[1:max(0, k - (N - 1)) + 1, 0] = 99999
    m[0, 0] = np.float32(x)
    return m


def get_rectangle(data, thresh, start=1):  # analyze_erf.py, verbatim (start: skip squares known to be too small)
    h, w = data.shape
    all_sum = np.sum(data)
    for i in range(start, h // 2):
        selected_area = data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i]
        area_sum = np.sum(selected_area)
        if area_sum / all_sum > thresh:
            return i * 2 + 1, (i * 2 + 1) / h * (i * 2 + 1) / w
    return None


def normalized(m):  # analyze_erf.py, verbatim
    data = np.log10(m + 1)
    data = data / np.max(data)
    return data


assert np.__version__.startswith('1.'), 'NumPy 2 compares float32 with Python floats in float32 (NEP 50)'
base = normalized(matrix(0, 0).astype(np.float64))
inside = base[N // 2 - D + 1:N // 2 + D, N // 2 - D + 1:N // 2 + D].sum()
extra = inside / (0.99 - 2e-8) - base.sum()  # the core's share just under 0.99
k = int(extra)
print('extra', extra, 'K', k)
differ = []
for x in (10.0 ** (5 * np.linspace(0.0, 0.999, 2001)) - 1).astype(np.float32):  # A(0, 0) evenly over [0, 1)
    m = matrix(k, x)
    s32 = get_rectangle(normalized(m), 0.99, D - 2)
    s64 = get_rectangle(normalized(m.astype(np.float64)), 0.99, D - 2)
    if s32 != s64:
        differ.append((x, s32 and s32[0], s64 and s64[0]))
both = [d for d in differ if d[1] and d[2]]  # prefer values where both find a square
assert both, 'no tuning value separates float32 from float64'
x = both[len(both) // 2][0]
m = matrix(k, x)
print('numpy', np.__version__, '; tuning values that differ:', len(differ), 'of 2001;', len(both), 'with a square in both:', both[0], '...', both[-1])
print('K', k, 'X', repr(float(x)), 'bits 0x%08X' % np.float32(x).view(np.uint32))
print('official (float32):', [get_rectangle(normalized(m), t) for t in [0.2, 0.3, 0.5, 0.99]])
print('float64:           ', [get_rectangle(normalized(m.astype(np.float64)), t) for t in [0.2, 0.3, 0.5, 0.99]])
print('float32 np.sum(A) bits 0x%08X' % np.sum(normalized(m)).view(np.uint32))
