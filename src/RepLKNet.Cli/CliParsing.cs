using System.Globalization;

namespace RepLKNet.Cli;

/// <summary>Parsing helpers for option values; failures are <see cref="UsageException"/>s naming the option.</summary>
internal static class CliParsing
{
    /// <summary>Parses "N,C,H,W" (positive integers).</summary>
    public static long[] Shape(string? text, string option, int rank = 4)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            throw new UsageException($"{option} is required (e.g. 2,3,224,224)");
        }

        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        var shape = new long[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!long.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out shape[i]) || shape[i] <= 0)
            {
                throw new UsageException($"{option} '{text}': '{parts[i]}' is not a positive integer");
            }
        }

        if (shape.Length != rank)
        {
            throw new UsageException($"{option} '{text}' must have {rank} comma-separated sizes (N,C,H,W)");
        }

        return shape;
    }

    /// <summary>Fails with a usage error when a required option is missing.</summary>
    public static string Required(string? value, string option) =>
        string.IsNullOrWhiteSpace(value) ? throw new UsageException($"{option} is required") : value;

    /// <summary>Parses a comma-separated list of positive integers for <paramref name="option"/>.</summary>
    public static int[] IntList(string text, string option)
    {
        var values = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v > 0 ? v : throw new UsageException($"{option} '{text}': '{s}' is not a positive integer"))
            .ToArray();
        return values.Length > 0 ? values : throw new UsageException($"{option} is empty");
    }
}
