using System.ComponentModel;
using System.Globalization;
using System.Text.Json.Nodes;
using RepLKNet.Models;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet models</c>: the registered variants and their sizes.</summary>
public sealed class ModelsCommand(IAnsiConsole console) : Command<ModelsCommand.Settings>
{
    /// <summary>Options of <c>models</c>: <c>--json</c> prints a JSON array.</summary>
    public sealed class Settings : TableOrJsonSettings
    {
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        TorchRuntime.Initialize(DeviceRequest.Cpu);
        var rows = ModelRegistry.Variants.Select(Describe).ToList();
        if (settings.Json)
        {
            JsonOutput.Print(console, new JsonArray([.. rows.Select(r => (JsonNode)r)]));
            return ExitCodes.Success;
        }

        var table = new Table().AddColumns("model", "params (train)", "params (deploy)", "MACs (deploy)", "input", "large kernels", "small kernel", "channels");
        foreach (var r in rows)
        {
            table.AddPlainRow(
                r["name"]!.ToString(),
                ((long)r["params"]!).ToString("N0", CultureInfo.InvariantCulture),
                ((long)r["deploy_params"]!).ToString("N0", CultureInfo.InvariantCulture),
                $"{(long)r["macs"]! / 1e9:F3} G",
                $"{r["resolution"]}×{r["resolution"]}",
                string.Join("/", r["large_kernel_sizes"]!.AsArray().Select(n => n!.ToString())),
                r["small_kernel"]?.ToString() ?? "none",
                string.Join("/", r["channels"]!.AsArray().Select(n => n!.ToString())));
        }

        console.Write(table);
        return ExitCodes.Success;
    }

    private static JsonObject Describe(ModelVariant v)
    {
        int res = v.Pretrained.InputSize.H;
        return new JsonObject
        {
            ["name"] = v.Name,
            ["params"] = Complexity.Parameters(v.Config, ModelForm.Train),
            ["deploy_params"] = Complexity.Parameters(v.Config, ModelForm.Deploy),
            ["resolution"] = res,
            ["macs"] = Complexity.Macs(v.Config, res, res, ModelForm.Deploy),
            ["macs_train"] = Complexity.Macs(v.Config, res, res, ModelForm.Train),
            ["large_kernel_sizes"] = new JsonArray([.. v.Config.LargeKernelSizes.Select(k => (JsonNode)k)]),
            ["small_kernel"] = v.Config.SmallKernel,
            ["channels"] = new JsonArray([.. v.Config.Channels.Select(k => (JsonNode)k)]),
            ["layers"] = new JsonArray([.. v.Config.Layers.Select(k => (JsonNode)k)]),
            ["mean"] = new JsonArray(v.Pretrained.Mean.R, v.Pretrained.Mean.G, v.Pretrained.Mean.B),
            ["std"] = new JsonArray(v.Pretrained.Std.R, v.Pretrained.Std.G, v.Pretrained.Std.B),
        };
    }
}
