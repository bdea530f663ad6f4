using System.Globalization;
using System.Runtime.InteropServices;

namespace RepLKNet.Runtime;

/// <summary>
/// The threshold of libtorch's own C++ log (c10's <c>LOG(…)</c> and the default <c>TORCH_WARN</c> handler), which writes
/// straight to file descriptor 2. By default the project raises it to ERROR, so stderr carries the project's messages
/// only: libtorch 2.10 logs "Could not initialize NNPACK! Reason: Unsupported hardware." on every CPU convolution that
/// reaches its NNPACK check (the failed initialisation is cached, the warning is not) on CPUs NNPACK does not support.
/// </summary>
/// <remarks>
/// libtorch has no NNPACK switch that TorchSharp 0.107 exposes (<c>at::Context::setUserEnabledNNPACK</c> is C++ only),
/// and PyTorch's documented <c>TORCH_CPP_LOG_LEVEL</c> is read only by <c>c10::initLogging()</c>, which only the Python
/// module calls. The level itself is the C symbol <c>FLAGS_caffe2_log_level</c> exported by libc10 (the variable
/// <c>TORCH_CPP_LOG_LEVEL</c> sets), checked at every log statement; this class writes it once after libtorch loads and
/// honours <c>TORCH_CPP_LOG_LEVEL</c> (INFO, WARNING, ERROR, FATAL or 0–3) when it is set.
/// </remarks>
public static class LibTorchLog
{
    /// <summary>PyTorch's environment variable for the level; set it (e.g. WARNING) to see libtorch's warnings again.</summary>
    public const string LevelEnvironmentVariable = "TORCH_CPP_LOG_LEVEL";

    /// <summary>The level used when <see cref="LevelEnvironmentVariable"/> is not set: ERROR (warnings are dropped).</summary>
    public const int DefaultLevel = 2;

    private const string FlagSymbol = "FLAGS_caffe2_log_level";
    private static readonly string[] Names = ["INFO", "WARNING", "ERROR", "FATAL"];

    /// <summary>Sets the level in the libc10 this process has loaded; returns the level set, or null when libc10 or its flag is not found.</summary>
    /// <exception cref="TorchLoadException"><see cref="LevelEnvironmentVariable"/> has a value libtorch does not know.</exception>
    public static int? Apply()
    {
        int level = Parse(Environment.GetEnvironmentVariable(LevelEnvironmentVariable));
        if (Flag() is not { } flag)
        {
            return null;
        }

        Marshal.WriteInt32(flag, level);
        return level;
    }

    /// <summary>The current level as a name (INFO, WARNING, ERROR, FATAL), or null when libc10 or its flag is not found.</summary>
    public static string? Current() => Flag() is { } flag ? Name(Marshal.ReadInt32(flag)) : null;

    /// <summary>Parses a <see cref="LevelEnvironmentVariable"/> value as libtorch does; null or empty gives <see cref="DefaultLevel"/>.</summary>
    /// <exception cref="TorchLoadException">The value is not INFO, WARNING, ERROR, FATAL or 0–3.</exception>
    public static int Parse(string? value)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            return DefaultLevel;
        }

        string text = value.Trim().ToUpperInvariant();
        int index = Array.IndexOf(Names, text);
        if (index >= 0)
        {
            return index;
        }

        return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n is >= 0 and <= 3
            ? n
            : throw new TorchLoadException($"{LevelEnvironmentVariable}='{value}' is not a libtorch log level (INFO, WARNING, ERROR, FATAL or 0-3)");
    }

    /// <summary>
    /// An error message on one line without the C++ stack libtorch appends to it ("Exception raised from … frame #0: …"),
    /// for one-line error reports; the full text stays in the exception.
    /// </summary>
    public static string WithoutNativeStack(string message)
    {
        ArgumentNullException.ThrowIfNull(message);
        string line = message.ReplaceLineEndings(" ").Trim();
        int native = line.IndexOf(" Exception raised from ", StringComparison.Ordinal);
        return native > 0 ? line[..native].TrimEnd() : line;
    }

    private static string Name(int level) => level >= 0 && level < Names.Length ? Names[level] : level.ToString(CultureInfo.InvariantCulture);

    private static IntPtr? Flag()
    {
        // The libc10 actually mapped (the bundled one, or an external CUDA libtorch's): dlopen by full path returns it.
        foreach (string path in NativeLibraries.MappedLibraries("libc10.so"))
        {
            if (NativeLibrary.TryLoad(path, out var handle) && NativeLibrary.TryGetExport(handle, FlagSymbol, out var flag))
            {
                return flag;
            }
        }

        return null;
    }
}
