using System.Reflection;
using Spectre.Console.Cli;

namespace RepLKNet.Cli;

/// <summary>
/// The value types of the CLI's long flags, read from every <see cref="CommandSettings"/> class's
/// <see cref="CommandOptionAttribute"/> properties, so that a usage error Spectre words by .NET type ("Failed to convert
/// '1.5' to Nullable`1", or '__default_command' for a flag given without its value) can name the flag and what it takes.
/// A flag that different commands declare with different types maps to all of them.
/// </summary>
internal static class FlagTypes
{
    private static readonly Lazy<Dictionary<string, Type[]>> Map = new(Build);

    /// <summary>The value types <paramref name="flag"/> ("--epochs") has in some command (nullables unwrapped); empty when unknown.</summary>
    public static IReadOnlyList<Type> Of(string flag) => Map.Value.TryGetValue(flag, out var types) ? types : [];

    /// <summary>Whether <paramref name="flag"/> is known and takes a value in at least one command (not only a switch).</summary>
    public static bool TakesValue(string flag) => Of(flag).Any(t => t != typeof(bool));

    /// <summary>"an integer", "a number" or "a value" for the value <paramref name="flag"/> takes (by its types in all commands).</summary>
    public static string Kind(string flag)
    {
        var types = Of(flag).Where(t => t != typeof(bool)).Distinct().ToArray();
        if (types.Length > 0 && types.All(t => t == typeof(int) || t == typeof(long)))
        {
            return "an integer";
        }

        return types.Length > 0 && types.All(t => t == typeof(int) || t == typeof(long) || t == typeof(double) || t == typeof(float))
            ? "a number"
            : "a value";
    }

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
