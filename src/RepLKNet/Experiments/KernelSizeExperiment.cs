using System.Globalization;
using System.Text;
using System.Text.Json;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.IO;
using RepLKNet.Models;
using RepLKNet.Reparam;
using RepLKNet.Training;
using static TorchSharp.torch;

namespace RepLKNet.Experiments;

/// <summary>The paper's MobileNetV2 kernel-size tables (guidelines 2, 3 and 5).</summary>
public enum KernelSizeTable
{
    /// <summary>Table 2: shortcut ✓/✗ × depthwise kernel 3/13 in every stage.</summary>
    Shortcut,

    /// <summary>Table 3: kernel 3 / 9 / 9 + re-param 3×3 / 13 / 13 + re-param 3×3 in every stage.</summary>
    Reparam,

    /// <summary>Table 5: kernel 3 / 7 / 13 in the last stage (the 7×7 map), 3 elsewhere.</summary>
    LastStage,
}

/// <summary>One variant of a table.</summary>
/// <param name="Id">File-name-safe id (e.g. "k13-rep").</param>
/// <param name="Label">Row label in the paper's wording.</param>
/// <param name="Config">The network.</param>
/// <param name="PaperTop1">The paper's ImageNet top-1 for this variant.</param>
public sealed record ExperimentCell(string Id, string Label, MobileNetV2Config Config, double PaperTop1);

/// <summary>A trained cell: accuracy per seed and cost.</summary>
/// <param name="Cell">The variant.</param>
/// <param name="Top1">Test top-1 of each seed (deploy form for re-parameterized cells).</param>
/// <param name="TrainParams">Parameters as trained.</param>
/// <param name="DeployParams">Parameters after merging the small kernels.</param>
/// <param name="Macs">Deploy-form multiply-accumulates per image.</param>
/// <param name="TrainSeconds">Training wall time of each seed.</param>
/// <param name="Steps">Optimizer steps of each seed.</param>
/// <param name="ReparamMaxDiff">Largest |train − deploy| logit difference over a test batch (0 without re-param).</param>
public sealed record CellResult(ExperimentCell Cell, double[] Top1, long TrainParams, long DeployParams, long Macs, double[] TrainSeconds, long[] Steps, double ReparamMaxDiff)
{
    /// <summary>Mean top-1 over seeds.</summary>
    public double Mean => Top1.Average();

    /// <summary>Sample standard deviation over seeds (0 for one seed).</summary>
    public double Spread => Top1.Length < 2 ? 0 : Math.Sqrt(Top1.Sum(t => (t - Mean) * (t - Mean)) / (Top1.Length - 1));
}

/// <summary>Settings shared by every cell of a run.</summary>
public sealed record KernelSizeExperimentOptions
{
    /// <summary>The table.</summary>
    public required KernelSizeTable Table { get; init; }

    /// <summary>The training recipe (budget, learning rate, …); its seed is replaced by each of <see cref="Seeds"/>.</summary>
    public required ClassifierTrainingOptions Training { get; init; }

    /// <summary>Seeds; each cell is trained once per seed.</summary>
    public IReadOnlyList<long> Seeds { get; init; } = [0];

    /// <summary>Base network (input channels, classes, width, layout); the table sets kernels, shortcuts and re-param.</summary>
    public required MobileNetV2Config Base { get; init; }

    /// <summary>Folder for per-cell weights (deploy form) and the result files; null: keep nothing.</summary>
    public string? OutDir { get; init; }
}

/// <summary>Trains the cells of a kernel-size table with one recipe and reports them in the paper's shape.</summary>
public static class KernelSizeExperiment
{
    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    /// <summary>Parses "shortcut", "reparam" or "last-stage".</summary>
    /// <exception cref="ArgumentException"><paramref name="table"/> names none of them (<see cref="ArgumentException.ParamName"/> <c>table</c>).</exception>
    public static KernelSizeTable ParseTable(string table) => table?.Trim().ToLowerInvariant() switch
    {
        "shortcut" or "shortcuts" => KernelSizeTable.Shortcut,
        "reparam" or "re-param" => KernelSizeTable.Reparam,
        "last-stage" or "laststage" or "last" => KernelSizeTable.LastStage,
        _ => throw new ArgumentException($"table '{table}' is not one of shortcut, reparam, last-stage", nameof(table)),
    };

    /// <summary>The table's name on the command line.</summary>
    public static string Name(KernelSizeTable table) => table switch
    {
        KernelSizeTable.Shortcut => "shortcut",
        KernelSizeTable.Reparam => "reparam",
        _ => "last-stage",
    };

    /// <summary>The variants of <paramref name="table"/> built on <paramref name="baseConfig"/>, with the paper's ImageNet top-1.</summary>
    public static IReadOnlyList<ExperimentCell> Cells(KernelSizeTable table, MobileNetV2Config baseConfig)
    {
        ArgumentNullException.ThrowIfNull(baseConfig);
        var b = baseConfig with { SmallKernel = null, Shortcuts = true };
        return table switch
        {
            KernelSizeTable.Shortcut =>
            [
                new("shortcut-k3", "shortcut ✓, 3×3", b.WithKernel(3), 71.76),
                new("shortcut-k13", "shortcut ✓, 13×13", b.WithKernel(13), 72.53),
                new("noshortcut-k3", "shortcut ✗, 3×3", b.WithKernel(3) with { Shortcuts = false }, 68.67),
                new("noshortcut-k13", "shortcut ✗, 13×13", b.WithKernel(13) with { Shortcuts = false }, 53.98),
            ],
            KernelSizeTable.Reparam =>
            [
                new("k3", "3×3", b.WithKernel(3), 71.76),
                new("k9", "9×9", b.WithKernel(9), 72.67),
                new("k9-rep", "9×9 + re-param 3×3", b.WithKernel(9) with { SmallKernel = 3 }, 73.09),
                new("k13", "13×13", b.WithKernel(13), 72.53),
                new("k13-rep", "13×13 + re-param 3×3", b.WithKernel(13) with { SmallKernel = 3 }, 73.24),
            ],
            _ =>
            [
                new("last-k3", "last stage 3×3", b.WithKernel(3), 71.76),
                new("last-k7", "last stage 7×7", b.WithKernel(7, b.LastStages), 72.00),
                new("last-k13", "last stage 13×13", b.WithKernel(13, b.LastStages), 71.97),
            ],
        };
    }

    /// <summary>Trains every cell of the table once per seed; <paramref name="onCell"/> reports each finished cell.</summary>
    /// <exception cref="ArgumentException"><see cref="KernelSizeExperimentOptions.Seeds"/> is empty (<see cref="ArgumentException.ParamName"/> <c>Seeds</c>).</exception>
    public static List<CellResult> Run(KernelSizeExperimentOptions options, IImageDataset train, IImageDataset test,
        Action<ExperimentCell, long, ClassifierTrainingProgress>? onStep = null, Action<CellResult>? onCell = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(test);
        if (options.Seeds.Count == 0)
        {
#pragma warning disable CA2208 // ParamName is the options property the message starts with, as for every option error
            throw new ArgumentException($"{nameof(options.Seeds)} must list at least one seed", nameof(options.Seeds));
#pragma warning restore CA2208
        }

        var results = new List<CellResult>();
        if (options.OutDir is not null)
        {
            Directory.CreateDirectory(options.OutDir);
        }

        int size = options.Training.Augment.InputSize ?? train.FixedSize?.Height ?? 32;
        foreach (var cell in Cells(options.Table, options.Base))
        {
            var top1 = new List<double>();
            var seconds = new List<double>();
            var steps = new List<long>();
            long trainParams = 0, deployParams = 0;
            double reparamDiff = 0;
            foreach (long seed in options.Seeds)
            {
                cancel.ThrowIfCancellationRequested();
                manual_seed(seed);
                using var model = new MobileNetV2(cell.Config, options.Training.Device);
                trainParams = Count(model);
                var result = ClassifierTraining.Run(model, cell.Config.NumClasses, train, test, options.Training with { Seed = seed },
                    onStep is null ? null : p => onStep(cell, seed, p), cancel);
                double accuracy = result.Top1;
                if (cell.Config.SmallKernel is not null)
                {
                    // Report the deployed network: merge, check the logits agree, evaluate the merged model.
                    model.eval();
                    using var probe = randn([8, cell.Config.InChannels, size, size], device: options.Training.Device);
                    using var before = DetachedLogits(model, probe);
                    model.SwitchToDeploy();
                    using var after = DetachedLogits(model, probe);
                    reparamDiff = Math.Max(reparamDiff, (before - after).abs().max().item<float>());
                    var pipeline = new Data.Transforms.SamplePipeline(options.Training.Augment, options.Training.Normalization, train.Channels, size);
                    accuracy = Evaluation.Run(model, cell.Config.NumClasses, test, pipeline, options.Training.BatchSize * 2, options.Training.Device, options.Training.Workers, CancellationToken.None).Top1;
                }

                deployParams = Count(model);
                top1.Add(accuracy);
                seconds.Add(result.Seconds);
                steps.Add(result.Steps);
                if (options.OutDir is not null)
                {
                    if (!model.IsDeploy)
                    {
                        model.SwitchToDeploy();
                    }

                    MobileNetV2Checkpoint.Write(Path.Combine(options.OutDir, string.Create(CultureInfo.InvariantCulture, $"{cell.Id}-seed{seed}.safetensors")), model, train.ClassNames);
                }
            }

            var done = new CellResult(cell, [.. top1], trainParams, deployParams, cell.Config.Macs(size, size, ModelForm.Deploy), [.. seconds], [.. steps], reparamDiff);
            results.Add(done);
            onCell?.Invoke(done);
            if (options.OutDir is not null)
            {
                WriteResults(options, results, size, complete: false);
            }
        }

        if (options.OutDir is not null)
        {
            WriteResults(options, results, size, complete: true);
        }

        return results;
    }

    /// <summary>The table in Markdown: one row per variant with our top-1 (mean ± sd over seeds), cost, and the paper's ImageNet number.</summary>
    public static string Markdown(KernelSizeTable table, IReadOnlyList<CellResult> results, string? caption = null)
    {
        ArgumentNullException.ThrowIfNull(results);
        var md = new StringBuilder();
        if (caption is not null)
        {
            md.AppendLine(caption).AppendLine();
        }

        string first = table == KernelSizeTable.Shortcut ? "| shortcut | kernel " : "| variant ";
        md.AppendLine(CultureInfo.InvariantCulture, $"{first}| top-1 % (ours) | params (deploy) | MACs | train time | steps | paper, ImageNet top-1 % |");
        md.AppendLine(table == KernelSizeTable.Shortcut ? "|---|---|---:|---:|---:|---:|---:|---:|" : "|---|---:|---:|---:|---:|---:|---:|");
        foreach (var r in results)
        {
            string acc = r.Top1.Length > 1
                ? string.Create(CultureInfo.InvariantCulture, $"{100 * r.Mean:F2} ± {100 * r.Spread:F2}")
                : string.Create(CultureInfo.InvariantCulture, $"{100 * r.Mean:F2}");
            string head = table == KernelSizeTable.Shortcut
                ? $"| {(r.Cell.Config.Shortcuts ? "✓" : "✗")} | {r.Cell.Config.KernelSizes.Max()}×{r.Cell.Config.KernelSizes.Max()} "
                : $"| {r.Cell.Label} ";
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{head}| {acc} | {r.DeployParams / 1e6:F3} M | {r.Macs / 1e6:F1} M | {r.TrainSeconds.Average() / 60:F1} min | {r.Steps.Average():F0} | {r.Cell.PaperTop1:F2} |"));
        }

        return md.ToString();
    }

    /// <summary>The results as JSON (per-seed numbers included).</summary>
    public static string Json(KernelSizeExperimentOptions options, IReadOnlyList<CellResult> results, int inputSize, bool complete)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(results);
        var doc = new
        {
            table = Name(options.Table),
            complete,
            budget = options.Training.Budget.ToString(),
            seeds = options.Seeds,
            input_size = inputSize,
            batch_size = options.Training.BatchSize,
            learning_rate = options.Training.LearningRate,
            train_subset = options.Training.TrainSubset,
            base_config = JsonDocument.Parse(options.Base.ToJson()).RootElement,
            cells = results.Select(r => new
            {
                id = r.Cell.Id,
                label = r.Cell.Label,
                config = JsonDocument.Parse(r.Cell.Config.ToJson()).RootElement,
                top1 = r.Top1,
                top1_mean = r.Mean,
                top1_sd = r.Spread,
                train_params = r.TrainParams,
                deploy_params = r.DeployParams,
                macs = r.Macs,
                train_seconds = r.TrainSeconds,
                steps = r.Steps,
                reparam_max_abs_diff = r.ReparamMaxDiff,
                paper_imagenet_top1 = r.Cell.PaperTop1,
            }),
        };
        return JsonSerializer.Serialize(doc, JsonOptions);
    }

    private static void WriteResults(KernelSizeExperimentOptions options, IReadOnlyList<CellResult> results, int size, bool complete)
    {
        string name = Name(options.Table);
        AtomicFile.Write(Path.Combine(options.OutDir!, $"{name}.json"), s => s.Write(Encoding.UTF8.GetBytes(Json(options, results, size, complete))));
        AtomicFile.Write(Path.Combine(options.OutDir!, $"{name}.md"), s => s.Write(Encoding.UTF8.GetBytes(Markdown(options.Table, results))));
    }

    private static Tensor DetachedLogits(MobileNetV2 model, Tensor x)
    {
        using var noGrad = no_grad();
        return model.call(x).detach();
    }

    private static long Count(MobileNetV2 model) => model.parameters().Sum(p => p.numel());
}
