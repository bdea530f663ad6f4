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

    /// <summary>Print full stack traces on errors.</summary>
    [CommandOption("--verbose")]
    [Description("Print the full stack trace of an error.")]
    public bool Verbose { get; init; }

    /// <summary>The parsed <see cref="Device"/>.</summary>
    public DeviceRequest DeviceRequest => DeviceRequest.Parse(Device);

    /// <inheritdoc />
    public override ValidationResult Validate()
    {
        try
        {
            _ = DeviceRequest;
        }
        catch (FormatException e)
        {
            return ValidationResult.Error($"--device: {e.Message}");
        }

        return base.Validate();
    }
}
