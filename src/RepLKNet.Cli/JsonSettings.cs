using System.ComponentModel;
using System.Text.Json;
using RepLKNet.IO;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli;

/// <summary>Options of commands that print a table or, with <c>--json</c>, the same facts as JSON on stdout.</summary>
public class TableOrJsonSettings : GlobalSettings
{
    /// <summary>Print JSON instead of a table.</summary>
    [CommandOption("--json")]
    [Description("Print JSON instead of a table.")]
    public bool Json { get; init; }
}

/// <summary>Options of commands that can also write their results as JSON: <c>--json FILE</c>.</summary>
public class JsonFileSettings : GlobalSettings
{
    /// <summary>JSON output file.</summary>
    [CommandOption("--json <FILE>")]
    [Description("Also write the results as JSON to FILE.")]
    public string? Json { get; init; }

    /// <inheritdoc />
    /// <remarks>Checks <c>--json</c> before the command runs (a benchmark can take minutes): not a folder, and no existing parent of it a file.</remarks>
    protected override ValidationResult ValidateOptions()
    {
        if (Json is { } path)
        {
            if (string.IsNullOrWhiteSpace(path))
            {
                return ValidationResult.Error("--json needs a file name");
            }

            if (Directory.Exists(path))
            {
                return ValidationResult.Error($"--json '{path}' is a folder, not a file");
            }

            for (var parent = Path.GetDirectoryName(Path.GetFullPath(path)); !string.IsNullOrEmpty(parent); parent = Path.GetDirectoryName(parent))
            {
                if (File.Exists(parent))
                {
                    return ValidationResult.Error($"--json '{path}': '{parent}' is a file, not a folder");
                }

                if (Directory.Exists(parent))
                {
                    break;
                }
            }
        }

        return base.ValidateOptions();
    }

    /// <summary>Writes <paramref name="document"/> to <see cref="Json"/> when it was given (see <see cref="JsonOutput.Write"/>); returns whether it did.</summary>
    internal bool WriteJson(object document)
    {
        if (Json is null)
        {
            return false;
        }

        JsonOutput.Write(Json, document);
        return true;
    }
}

/// <summary>How the commands write JSON: indented, UTF-8, non-ASCII and HTML characters as they are.</summary>
internal static class JsonOutput
{
    public static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Prints <paramref name="document"/> (a JsonNode or any serializable object) on the console's output as one JSON text.</summary>
    public static void Print(IAnsiConsole console, object document) =>
        console.Profile.Out.Writer.WriteLine(JsonSerializer.Serialize(document, Options));

    /// <summary>Writes <paramref name="document"/> to <paramref name="path"/> atomically, with a final newline.</summary>
    public static void Write(string path, object document) =>
        AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(JsonSerializer.Serialize(document, Options) + "\n")));
}
