using System.Globalization;

namespace RepLKNet.Training;

/// <summary>How long to train: a number of epochs, or a wall-clock time.</summary>
/// <param name="Epochs">Epochs (may be fractional, e.g. 0.5), or null.</param>
/// <param name="Time">Wall-clock training time, or null.</param>
public sealed record TrainingBudget(double? Epochs, TimeSpan? Time)
{
    /// <summary>
    /// Parses "3" or "3e" (epochs; fractions allowed), "90s", "5m", "1.5h" (time). The learning-rate schedule runs over the
    /// budget either way: by steps for epochs, by elapsed time for a time budget.
    /// </summary>
    /// <exception cref="ArgumentException">The text is not a positive budget; the message quotes it.</exception>
    public static TrainingBudget Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string t = text.Trim().ToLowerInvariant();
        char unit = t.Length > 0 && char.IsLetter(t[^1]) ? t[^1] : 'e';
        string number = char.IsLetter(t.Length > 0 ? t[^1] : '0') ? t[..^1] : t;
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || !(value > 0) || double.IsInfinity(value))
        {
            throw new ArgumentException($"budget '{text}' is not a positive number of epochs (3, 0.5e) or a time (90s, 5m, 1h)");
        }

        return unit switch
        {
            'e' => new TrainingBudget(value, null),
            's' => new TrainingBudget(null, TimeSpan.FromSeconds(value)),
            'm' => new TrainingBudget(null, TimeSpan.FromMinutes(value)),
            'h' => new TrainingBudget(null, TimeSpan.FromHours(value)),
            _ => throw new ArgumentException($"budget '{text}': unknown unit '{unit}' (use e for epochs, s, m or h for time)"),
        };
    }

    /// <inheritdoc />
    public override string ToString() => Epochs is double e
        ? string.Create(CultureInfo.InvariantCulture, $"{e:0.##} epoch{(e == 1 ? "" : "s")}")
        : string.Create(CultureInfo.InvariantCulture, $"{Time!.Value.TotalMinutes:0.##} min");
}
