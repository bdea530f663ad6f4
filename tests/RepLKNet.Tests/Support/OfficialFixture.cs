using System.Text.Json;
using RepLKNet.Models;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Support;

/// <summary>The official-code reference data in ../shared/fixtures/official-small (see the spec, §12).</summary>
internal static class OfficialFixture
{
    private static readonly Lazy<string> DirectoryPath = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (System.IO.File.Exists(Path.Combine(dir.FullName, "RepLKNet.slnx")))
            {
                string fixtures = Path.Combine(dir.FullName, "..", "shared", "fixtures", "official-small");
                Assert.True(Directory.Exists(fixtures), $"the official fixtures were expected at {Path.GetFullPath(fixtures)}");
                return Path.GetFullPath(fixtures);
            }
        }

        throw new InvalidOperationException($"no RepLKNet.slnx above {AppContext.BaseDirectory}");
    });

    private static readonly Lazy<JsonDocument> Oracle = new(() => JsonDocument.Parse(System.IO.File.ReadAllText(File("small-oracle.json"))));

    public static string File(string name) => Path.Combine(DirectoryPath.Value, name);

    public static RepLKNetConfig Config => new()
    {
        LargeKernelSizes = [13, 11, 9, 5], Layers = [1, 1, 2, 1], Channels = [16, 32, 64, 128],
        DropPathRate = 0, SmallKernel = 5, DwRatio = 1.5, FfnRatio = 4, InChannels = 3, NumClasses = 10,
    };

    /// <summary>A raw little-endian float32 file as a tensor of <paramref name="shape"/>.</summary>
    public static Tensor ReadBin(string name, params long[] shape)
    {
        byte[] bytes = System.IO.File.ReadAllBytes(File(name));
        var t = empty(shape, dtype: float32);
        Assert.Equal(t.numel() * 4, bytes.Length);
        bytes.CopyTo(t.bytes);
        return t;
    }

    /// <summary>The oracle's state-dict table rows: (key, shape, dtype, sum, sum of |x|) in state-dict order.</summary>
    public static IReadOnlyList<(string Key, long[] Shape, string DType, double Sum, double AbsSum)> StateDictTable(string form)
    {
        var rows = new List<(string, long[], string, double, double)>();
        foreach (var row in Oracle.Value.RootElement.GetProperty($"{form}_state_dict").EnumerateArray())
        {
            var r = row.EnumerateArray().ToArray();
            rows.Add((r[0].GetString()!, r[1].EnumerateArray().Select(e => e.GetInt64()).ToArray(), r[2].GetString()!, r[3].GetDouble(), r[4].GetDouble()));
        }

        return rows;
    }
}
