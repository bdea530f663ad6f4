namespace RepLKNet.Data;

/// <summary>
/// A small, fast, deterministic generator (xoshiro256**, seeded through SplitMix64 from a key of several numbers). Every
/// random choice of the data pipeline draws from one keyed by (seed, epoch, position) or (seed, step), so augmentations do
/// not depend on thread scheduling and a resumed run draws exactly what an uninterrupted one would.
/// </summary>
public struct SampleRandom
{
    private ulong _s0, _s1, _s2, _s3;
    private double? _spareNormal;

    /// <summary>Creates a generator keyed by <paramref name="key"/>.</summary>
    public SampleRandom(params ReadOnlySpan<ulong> key)
    {
        ulong x = 0x9E3779B97F4A7C15UL;
        foreach (ulong k in key)
        {
            x = Mix(x ^ Mix(k + 0x632BE59BD9B4E019UL));
        }

        _s0 = Mix(x += 0x9E3779B97F4A7C15UL);
        _s1 = Mix(x += 0x9E3779B97F4A7C15UL);
        _s2 = Mix(x += 0x9E3779B97F4A7C15UL);
        _s3 = Mix(x + 0x9E3779B97F4A7C15UL);
        _spareNormal = null;
    }

    /// <summary>The next 64 random bits.</summary>
    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform on [0, 1).</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform on [<paramref name="low"/>, <paramref name="high"/>).</summary>
    public double Uniform(double low, double high) => low + (high - low) * NextDouble();

    /// <summary>Uniform integer on [0, <paramref name="n"/>).</summary>
    public int NextInt(int n)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(n);
        return (int)((NextUInt64() >> 33) * (ulong)n >> 31);
    }

    /// <summary>Uniform integer on [<paramref name="low"/>, <paramref name="high"/>] (both included).</summary>
    public int NextInt(int low, int high) => low + NextInt(high - low + 1);

    /// <summary>Fisher–Yates shuffle of <paramref name="items"/> in place (from the last position down).</summary>
    public void Shuffle(Span<long> items)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = (int)(NextUInt64() % (ulong)(i + 1));
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    /// <summary>True with probability <paramref name="p"/>.</summary>
    public bool Chance(double p) => p > 0 && NextDouble() < p;

    /// <summary>Standard normal (Box–Muller, pairs).</summary>
    public double Normal()
    {
        if (_spareNormal is double spare)
        {
            _spareNormal = null;
            return spare;
        }

        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        double r = Math.Sqrt(-2.0 * Math.Log(u1));
        _spareNormal = r * Math.Sin(2 * Math.PI * u2);
        return r * Math.Cos(2 * Math.PI * u2);
    }

    /// <summary>Gamma(<paramref name="shape"/>, 1) (Marsaglia–Tsang; boosted for shape &lt; 1).</summary>
    public double Gamma(double shape)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(shape);
        if (shape < 1)
        {
            return Gamma(shape + 1) * Math.Pow(1.0 - NextDouble(), 1.0 / shape);
        }

        double d = shape - 1.0 / 3, c = 1 / Math.Sqrt(9 * d);
        while (true)
        {
            double x = Normal(), v = 1 + c * x;
            if (v <= 0)
            {
                continue;
            }

            v = v * v * v;
            double u = 1.0 - NextDouble();
            if (Math.Log(u) < 0.5 * x * x + d - d * v + d * Math.Log(v))
            {
                return d * v;
            }
        }
    }

    /// <summary>Beta(<paramref name="a"/>, <paramref name="b"/>).</summary>
    public double Beta(double a, double b)
    {
        double x = Gamma(a), y = Gamma(b);
        return x / (x + y);
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
