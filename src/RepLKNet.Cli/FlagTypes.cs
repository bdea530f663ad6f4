using System.Collections;
using System.Reflection;
using Spectre.Console.Cli;

namespace RepLKNet.Cli;

/// <summary>
/// The value types of the CLI's long flags, read from every <see cref="CommandSettings"/> class's
/// <see cref="CommandOptionAttribute"/> properties, so that a usage error Spectre words by .NET type ("Failed to convert
/// '1.5' to Nullable`1", or '__default_command' for a flag given without its value) can name the flag and what it takes.
/// A flag that different commands declare with different types maps to all of them; only the types whose conversion can
/// fail (numbers, enums — not text, not switches) say what a refused value should have been.
/// </summary>
internal static class FlagTypes
{
    /// <summary>The value Spectre binds to an option given without its value (last on the line, or followed by another flag).</summary>
    public const string DefaultCommandPlaceholder = "__default_command";

    private static readonly Lazy<Dictionary<string, Type[]>> Map = new(Build);

    /// <summary>The value types <paramref name="flag"/> ("--epochs") has in some command (nullables unwrapped); empty when unknown.</summary>
    public static IReadOnlyList<Type> Of(string flag) => Map.Value.TryGetValue(flag, out var types) ? types : [];

    /// <summary>
    /// Whether <paramref name="flag"/> can be the flag of a failed conversion to <paramref name="spectreType"/> (Spectre's
    /// words: "Int32", "Double", "Nullable`1", …): a converted type of the flag has that name, or any converted type for
    /// "Nullable`1", which hides the type.
    /// </summary>
    public static bool CanFail(string flag, string spectreType) =>
        Converted(flag).Any(t => spectreType == "Nullable`1" || t.Name == spectreType);

    /// <summary>"an integer", "a number" or null (another kind) for the value <paramref name="flag"/> takes where Spectre converts it.</summary>
    public static string? Kind(string flag)
    {
        var types = Converted(flag).Distinct().ToArray();
        if (types.Length > 0 && types.All(t => t == typeof(int) || t == typeof(long)))
        {
            return "an integer";
        }

        return types.Length > 0 && types.All(t => t == typeof(int) || t == typeof(long) || t == typeof(double) || t == typeof(float))
            ? "a number"
            : null;
    }

    /// <summary>
    /// The first text option of <paramref name="settings"/> that holds Spectre's placeholder for a missing value: a text
    /// flag given without its value is not refused by Spectre (the placeholder is valid text), so it would run with
    /// '__default_command' as a file name or device. Null when every option has a real value.
    /// </summary>
    public static string? MissingValue(CommandSettings settings)
    {
        ArgumentNullException.ThrowIfNull(settings);
        foreach (var property in settings.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (property.GetCustomAttribute<CommandOptionAttribute>() is not { } option || property.GetIndexParameters().Length > 0)
            {
                continue;
            }

            bool missing = property.GetValue(settings) switch
            {
                string text => text == DefaultCommandPlaceholder,
                IEnumerable values and not string => values.OfType<string>().Any(v => v == DefaultCommandPlaceholder),
                _ => false,
            };
            if (missing)
            {
                return option.LongNames.Count > 0 ? "--" + option.LongNames[0] : property.Name;
            }
        }

        return null;
    }

    private static IEnumerable<Type> Converted(string flag) => Of(flag).Where(t => t != typeof(bool) && t != typeof(string));

    private static Dictionary<string, Type[]> Build()
    {
        var map = new Dictionary<string, HashSet<Type>>(StringComparer.Ordinal);
        foreach (var type in typeof(FlagTypes).Assembly.GetTypes().Where(t => typeof(CommandSettings).IsAssignableFrom(t)))
        {
            foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
            {
                if (property.GetCustomAttribute<CommandOptionAttribute>() is not { } option)
                {
                    continue;
                }

                var valueType = Nullable.GetUnderlyingType(property.PropertyType) ?? property.PropertyType;
                foreach (var name in option.LongNames)
                {
                    string flag = "--" + name;
                    if (!map.TryGetValue(flag, out var set))
                    {
                        map[flag] = set = [];
                    }

                    set.Add(valueType);
                }
            }
        }

        return map.ToDictionary(p => p.Key, p => p.Value.ToArray(), StringComparer.Ordinal);
    }
}
