namespace RepLKNet.Cli;

/// <summary>
/// The library names its arguments in its own words (a method parameter or an options property: <c>LearningRate</c>,
/// <c>InitialWeights</c>, <c>arch</c>) and starts an error about one of them with that name, setting the exception's
/// <c>ParamName</c> (or <c>Data["ParamName"]</c> for exception types without one); this table puts the CLI's flag in its place, so a user reads the flag they typed.
/// </summary>
internal static class OptionNames
{
    /// <summary>Library argument name → CLI flag (case-sensitive; one entry per library name).</summary>
    private static readonly Dictionary<string, string> Flags = new(StringComparer.Ordinal)
    {
        ["arch"] = "--arch",
        ["Arch"] = "--arch",
        ["numClasses"] = "--num-classes",
        ["NumClasses"] = "--num-classes",
        ["weights"] = "--weights",
        ["InitialWeights"] = "--weights",
        ["dataset"] = "--dataset",
        ["data"] = "--data",
        ["channels"] = "--channels",
        ["valSplit"] = "--val-split",
        ["valFraction"] = "--val-split",
        ["InputSize"] = "--input-size",
        ["inputSize"] = "--input-size",
        ["InputHeight"] = "--input-size",
        ["InputWidth"] = "--input-size",
        ["DynamicSize"] = "--dynamic-size",
        ["DynamicBatch"] = "--dynamic-batch",
        ["BatchSize"] = "--batch-size",
        ["CropSize"] = "--crop-size",
        ["Scale"] = "--scale",
        ["LearningRate"] = "--lr",
        ["MinLearningRate"] = "--min-lr",
        ["WarmupEpochs"] = "--warmup-epochs",
        ["WeightDecay"] = "--weight-decay",
        ["EmaDecay"] = "--ema-decay",
        ["Epochs"] = "--epochs",
        ["AccumulationSteps"] = "--accum-steps",
        ["ClipGradNorm"] = "--clip-grad",
        ["LayerDecay"] = "--layer-decay",
        ["TrainSubset"] = "--train-subset",
        ["MaxSteps"] = "--max-steps",
        ["SaveEvery"] = "--save-every",
        ["Workers"] = "--workers",
        ["OutDir"] = "--out",
        ["Resume"] = "--resume",
        ["AllowWorldSizeChange"] = "--allow-world-size-change",
        ["SyncBatchNorm"] = "--sync-bn",
        ["Precision"] = "--dtype",
        ["CropScale"] = "--crop-scale",
        ["HorizontalFlip"] = "--hflip",
        ["RandAugment"] = "--randaug",
        ["EraseProbability"] = "--reprob",
        ["Mixup"] = "--mixup",
        ["CutMix"] = "--cutmix",
        ["LabelSmoothing"] = "--smoothing",
        ["CropPct"] = "--crop-pct",
        ["DropPathRate"] = "--drop-path",
        ["opset"] = "--opset",
        ["Features"] = "--features",
        ["outputPath"] = "--out",
        ["ema"] = "--ema",
        ["Ema"] = "--ema",
        ["table"] = "--table",
        ["Seeds"] = "--seeds",
        ["onnx"] = "--onnx",
        ["batch"] = "--batch",
        ["Batch"] = "--batch",
        ["reps"] = "--reps",
        ["pass"] = "--pass",
        ["layout"] = "--layout",
        ["budget"] = "--budget",
        ["threads"] = "--threads",
        ["EvaluateEvery"] = "--eval-every",
        ["WarmupIterations"] = "--warmup-iters",
        ["WarmupRatio"] = "--warmup-ratio",
        ["AuxiliaryWeight"] = "--aux-weight",
        ["EvalLimit"] = "--eval-limit",
        ["device"] = "--device",
    };

    /// <summary>The CLI flag for a library argument name, or null when the CLI has no flag for it.</summary>
    public static string? Flag(string? paramName) => paramName is not null && Flags.TryGetValue(paramName, out var flag) ? flag : null;

    /// <summary>
    /// Why CUDA is not in use, in the CLI's words: the library's <see cref="Runtime.TorchRuntime.CudaNotRequested"/> names the
    /// request by its argument (<c>device</c>), the CLI by its flag.
    /// </summary>
    public static string? CudaUnavailableReason(Runtime.TorchRuntimeInfo runtime)
    {
        ArgumentNullException.ThrowIfNull(runtime);
        return runtime.CudaUnavailableReason == Runtime.TorchRuntime.CudaNotRequested
            ? $"not requested ({Flags["device"]} cpu)"
            : runtime.CudaUnavailableReason;
    }

    /// <summary>
    /// <paramref name="e"/>'s message with the library argument name it is about replaced by the flag, when the exception names
    /// one the CLI knows: the leading name, or else its first mention as a word of its own (after a space or '(', before a
    /// space, punctuation or the end: "… pass Arch (…)" → "… pass --arch (…)"); otherwise the message unchanged.
    /// </summary>
    public static string Rewrite(Exception e, string message)
    {
        ArgumentNullException.ThrowIfNull(e);
        ArgumentNullException.ThrowIfNull(message);
        string? name = e switch
        {
            ArgumentException a => a.ParamName,
            Checkpoints.CheckpointException c => c.ParamName,
            Data.DatasetException d => d.ParamName,
            Models.ConfigException m => m.ParamName,
            Export.OnnxExportException x => x.ParamName,
            Runtime.TorchLoadException t => t.ParamName,
            _ => e.Data["ParamName"] as string, // any other exception may carry the name in its Data
        };
        if (Flag(name) is not { } flag)
        {
            return message;
        }

        // ArgumentException appends " (Parameter 'x')" to its message: the flag now says which.
        string suffix = $" (Parameter '{name}')";
        if (message.EndsWith(suffix, StringComparison.Ordinal))
        {
            message = message[..^suffix.Length];
        }

        if (message.StartsWith(name + " ", StringComparison.Ordinal) || message.StartsWith(name + ":", StringComparison.Ordinal))
        {
            return flag + message[name!.Length..];
        }

        int at = MentionOf(message, name!);
        return at < 0 ? message : message[..at] + flag + message[(at + name!.Length)..];
    }

    // The first place where name stands as a word of its own in running text, not inside a path or file name ('a/weights.pth').
    private static int MentionOf(string message, string name)
    {
        for (int at = message.IndexOf(name, StringComparison.Ordinal); at >= 0; at = message.IndexOf(name, at + 1, StringComparison.Ordinal))
        {
            int end = at + name.Length;
            bool before = at > 0 && message[at - 1] is ' ' or '(';
            bool after = end == message.Length || message[end] is ' ' or ',' or ';' or ':' or ')'
                || message[end] == '.' && (end + 1 == message.Length || message[end + 1] == ' ');
            if (before && after)
            {
                return at;
            }
        }

        return -1;
    }
}
