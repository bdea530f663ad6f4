using System.ComponentModel;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli;

/// <summary>Options every command takes.</summary>
public class GlobalSettings : CommandSettings
{
    /// <summary>auto (CUDA when available), cpu, cuda or cuda:N.</summary>
    [CommandOption("--device <DEVICE>")]
    [Description("auto (CUDA when available), cpu, cuda or cuda:N. CUDA needs REPLKNET_LIBTORCH (see README).")]
    [DefaultValue("auto")]
    public string Device { get; init; } = "auto";

    /// <summary>CPU threads for libtorch and our kernels; applied once, before the command runs (<see cref="ThreadsInterceptor"/>).</summary>
    [CommandOption("--threads <T>")]
    [Description("CPU threads for libtorch and our kernels alike (default: libtorch's get_num_threads()).")]
    public int? Threads { get; init; }

    /// <summary>Print full stack traces on errors.</summary>
    [CommandOption("--verbose")]
    [Description("Print the full stack trace of an error.")]
    public bool Verbose { get; init; }

    /// <summary>The parsed <see cref="Device"/>.</summary>
    public DeviceRequest DeviceRequest => DeviceRequest.Parse(Device);

    /// <summary>
    /// Refuses a text option given without its value first (it holds Spectre's placeholder; said before any command's own
    /// checks read it as a path or device, or complain about another option), then runs <see cref="ValidateOptions"/>.
    /// </summary>
    public sealed override ValidationResult Validate() =>
        FlagTypes.MissingValue(this) is { } missing ? ValidationResult.Error($"{missing} needs a value") : ValidateOptions();

    /// <summary>
    /// The options' own checks, once every text option has its value: <c>--device</c> and <c>--threads</c> here; a command's
    /// settings override this and end in <c>base.ValidateOptions()</c>.
    /// </summary>
    protected virtual ValidationResult ValidateOptions()
    {
        try
        {
            _ = DeviceRequest;
        }
        catch (FormatException e)
        {
            return ValidationResult.Error($"--device: {e.Message}");
        }

        return Threads is <= 0 ? ValidationResult.Error($"--threads {Threads} must be positive") : ValidationResult.Success();
    }

    /// <summary>
    /// A usage error naming the options of <paramref name="options"/> that were given although this command inherits them
    /// without taking them (<paramref name="reason"/> says why), or null when none was given.
    /// </summary>
    protected static ValidationResult? Inapplicable(string reason, params (bool Given, string Flag)[] options)
    {
        var given = options.Where(o => o.Given).Select(o => o.Flag).ToList();
        return given.Count == 0 ? null : ValidationResult.Error($"{string.Join(", ", given)} {(given.Count == 1 ? "does" : "do")} not apply: {reason}");
    }
}

/// <summary>Applies the options every command shares before the command runs: <c>--threads</c>.</summary>
internal sealed class ThreadsInterceptor : ICommandInterceptor
{
    /// <inheritdoc />
    public void Intercept(CommandContext context, CommandSettings settings)
    {
        // Before libtorch is loaded the count is kept and applied when the command initializes the runtime.
        if (settings is GlobalSettings { Threads: int threads })
        {
            TorchRuntime.SetThreads(threads);
        }
    }
}
