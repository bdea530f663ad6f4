using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace RepLKNet.Ops.Cuda;

/// <summary>One measured tile choice: on card <paramref name="Card"/>, for H×W maps with K×K filters, <paramref name="Tile"/> was fastest.</summary>
/// <param name="Card">Device name as the driver reports it.</param>
/// <param name="Height">H.</param>
/// <param name="Width">W.</param>
/// <param name="K">Kernel size.</param>
/// <param name="Tile">The winning tile.</param>
/// <param name="Ms">Its time for one (64, 384, H, W) layer.</param>
/// <param name="DefaultMs">The default tile's time for the same layer.</param>
public sealed record DepthwiseTuningEntry(string Card, int Height, int Width, int K, DepthwiseTile Tile, double Ms, double DefaultMs);

/// <summary>
/// The committed autotuning table (<c>Kernels/dwconv_fwd_tuning.json</c>: the fastest of <see cref="Candidates"/> timed on
/// a GPU machine, written by <see cref="Serialize"/>): exact (card, H, W, K) matches override
/// <see cref="CudaDepthwise.SelectTile"/>; every other shape uses the default rule. Results do not depend on the tile
/// (every output sums its taps in the same order), only speed does.
/// </summary>
public static class DepthwiseTuning
{
    /// <summary>The embedded table's resource file name.</summary>
    public const string FileName = "dwconv_fwd_tuning.json";

    /// <summary>Environment variable naming a tuning table to use instead of the committed one (e.g. one just measured and written by <see cref="Serialize"/>).</summary>
    public const string EnvironmentVariable = "REPLKNET_CUDA_TUNING";

    private static readonly Lazy<IReadOnlyList<DepthwiseTuningEntry>> Table = new(Load);

    /// <summary>The committed entries.</summary>
    public static IReadOnlyList<DepthwiseTuningEntry> Entries => Table.Value;

    /// <summary>The tuned tile for this card and shape, or null.</summary>
    public static DepthwiseTile? Lookup(string card, int height, int width, int k) =>
        Table.Value.FirstOrDefault(e => e.Card == card && e.Height == height && e.Width == width && e.K == k)?.Tile;

    private static IReadOnlyList<DepthwiseTuningEntry> Load()
    {
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } path)
        {
            try
            {
                return Parse(File.ReadAllText(path));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or JsonException or InvalidOperationException)
            {
                throw new CudaException($"{EnvironmentVariable}={path}: cannot read the tuning table: {e.Message}", e);
            }
        }

        return Parse(Nvrtc.EmbeddedSource(FileName));
    }

    /// <summary>Parses a table.</summary>
    public static IReadOnlyList<DepthwiseTuningEntry> Parse(string json)
    {
        var root = JsonNode.Parse(json) as JsonObject ?? throw new FormatException($"{FileName}: expected a JSON object");
        var list = new List<DepthwiseTuningEntry>();
        foreach (var node in root["entries"] as JsonArray ?? [])
        {
            var e = node as JsonObject ?? throw new FormatException($"{FileName}: entries must be objects");
            var t = e["tile"] as JsonObject ?? throw new FormatException($"{FileName}: entry without a tile");
            list.Add(new DepthwiseTuningEntry((string)e["card"]!, (int)e["H"]!, (int)e["W"]!, (int)e["K"]!,
                new DepthwiseTile((int)t["RY"]!, (int)t["BX"]!, (int)t["BY"]!, (int)t["PL"]!, (bool?)t["small"] ?? false), (double)e["ms"]!, (double)e["default_ms"]!));
        }

        return list;
    }

    /// <summary>Serializes entries in the table's format.</summary>
    public static string Serialize(IEnumerable<DepthwiseTuningEntry> entries, string note)
    {
        var array = new JsonArray();
        foreach (var e in entries)
        {
            array.Add(new JsonObject
            {
                ["card"] = e.Card, ["H"] = e.Height, ["W"] = e.Width, ["K"] = e.K,
                ["tile"] = new JsonObject { ["RY"] = e.Tile.RowsPerThread, ["BX"] = e.Tile.ThreadsX, ["BY"] = e.Tile.ThreadsY, ["PL"] = e.Tile.Planes, ["small"] = e.Tile.SmallMap },
                ["ms"] = Math.Round(e.Ms, 4), ["default_ms"] = Math.Round(e.DefaultMs, 4),
            });
        }

        return new JsonObject { ["note"] = note, ["entries"] = array }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    /// <summary>The candidate tiles the tuner times for a shape (the default first).</summary>
    public static List<DepthwiseTile> Candidates(long planes, int height, int width, int k, int maxShared)
    {
        var list = new List<DepthwiseTile> { CudaDepthwise.SelectTile(planes, height, width, k, maxShared) };
        bool[] kernels = width <= 32 ? [false, true] : [false];
        foreach (bool small in kernels)
        {
            foreach (int ry in (int[])[2, 4, 7, 8, 16])
            {
                foreach (int threads in (int[])[64, 128, 256])
                {
                    DepthwiseTile tile;
                    try
                    {
                        tile = CudaDepthwise.SelectTile(planes, height, width, k, maxShared, ry, threads, small);
                    }
                    catch (CudaException)
                    {
                        continue;
                    }

                    if (!list.Contains(tile))
                    {
                        list.Add(tile);
                    }
                }
            }
        }

        return list;
    }

    /// <summary>Formats milliseconds for tables.</summary>
    public static string Ms(double ms) => ms.ToString("F3", CultureInfo.InvariantCulture);
}
