using RepLKNet.Cli.Commands;
using RepLKNet.Distributed;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli;

/// <summary>Exit codes of the tool.</summary>
public static class ExitCodes
{
    /// <summary>The command did what was asked.</summary>
    public const int Success = 0;

    /// <summary>The command ran and failed (bad data, a failed check, a library error).</summary>
    public const int Failure = 1;

    /// <summary>The command line was wrong: unknown command or option, missing or invalid argument.</summary>
    public const int Usage = 2;

    /// <summary>Stopped by SIGINT (Ctrl-C) after saving what lets it resume (128 + 2, the shell's convention).</summary>
    public const int Interrupted = 130;

    /// <summary>Stopped by SIGTERM after saving what lets it resume (128 + 15).</summary>
    public const int Terminated = 143;
}

/// <summary>A command-line argument has a value the command cannot use; reported with exit code 2.</summary>
public sealed class UsageException : Exception
{
    /// <summary>Creates the exception; the message should name the argument and what is wrong.</summary>
    public UsageException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    public UsageException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public UsageException()
    {
    }
}

/// <summary>Builds the command tree and maps every outcome to an exit code and one clear line on stderr.</summary>
public static class ReplknetApp
{
    /// <summary>Runs the tool with <paramref name="args"/>; output goes to <paramref name="console"/>, errors to <paramref name="error"/>.</summary>
    public static int Run(string[] args, IAnsiConsole console, TextWriter error)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(error);
        bool verbose = args.Contains("--verbose");
        // Started by mpiexec? (docs/distributed.md) Only rank 0 prints; every rank reports its errors with its rank.
        MpiLaunch? launch;
        try
        {
            launch = DataParallel.Detect();
        }
        catch (CollectiveException e)
        {
            Report(error, "error", e, verbose);
            return ExitCodes.Failure;
        }

        DataParallel.ApplyDefaults(args);
        if (launch is { WorldSize: > 1 })
        {
            if (!DataParallel.Allows(args))
            {
                if (launch.Rank != 0)
                {
                    return ExitCodes.Usage; // rank 0 says why
                }

                error.WriteLine($"replknet: usage: {DataParallel.Prefix}'{string.Join(' ', args.TakeWhile(a => !a.StartsWith('-')))}' does not run data-parallel: start it without mpiexec (under mpiexec with several processes: {string.Join(", ", DataParallel.Commands)})");
                return ExitCodes.Usage;
            }

            if (launch.Rank != 0)
            {
                console = DataParallel.Silent();
            }
        }

        var app = new CommandApp();
        app.Configure(config =>
        {
            // Spectre renders every description (commands here, options in the [Description] attributes) as markup:
            // a literal bracket is written [[ or ]] (HelpAndMarkupTests runs --help on every command of this tree).
            config.SetApplicationName("replknet");
            config.ConfigureConsole(console);
            config.PropagateExceptions();
            config.UseStrictParsing();
            config.ValidateExamples();
            config.SetInterceptor(new ThreadsInterceptor());
            config.AddCommand<TrainCommand>("train")
                .WithDescription("Train a RepLKNet (default: RepLKNet-FMNIST on Fashion-MNIST): AdamW, warm-up + cosine, EMA, checkpoints, resume, re-parameterized result.")
                .WithExample("train")
                .WithExample("train", "--epochs", "1", "--out", "runs/smoke");
            config.AddCommand<EvalCommand>("eval")
                .WithDescription("Evaluate a checkpoint on a test set: top-1/top-5, loss, per-class accuracy, confusion matrix (table and PNG).")
                .WithExample("eval", "--weights", "runs/fmnist/best.safetensors");
            config.AddCommand<PredictCommand>("predict")
                .WithDescription("Top-5 classes with probabilities for images (files or folders), using the checkpoint's class names and preprocessing.")
                .WithExample("predict", "--weights", "runs/fmnist/best-deploy.safetensors", "shirt.png");
            config.AddCommand<ModelsCommand>("models")
                .WithDescription("List the model variants with parameters (train/deploy), MACs at the default resolution and kernel sizes.")
                .WithExample("models")
                .WithExample("models", "--json");
            config.AddCommand<DescribeCommand>("describe")
                .WithDescription("Print a model's state dict (keys, shapes, dtypes in order) and parameter count.")
                .WithExample("describe", "--arch", "RepLKNet-31B", "--deploy", "--json");
            config.AddCommand<ForwardCommand>("forward")
                .WithDescription("Run a model in eval mode on a raw float32 NCHW tensor; write logits (and stage features) raw.")
                .WithExample("forward", "--arch", "RepLKNet-31B", "--weights", "w.pth", "--input", "x.bin", "--input-shape", "2,3,224,224", "--output", "y.bin");
            config.AddCommand<ReparamCommand>("reparam")
                .WithDescription("Convert a training checkpoint to the deploy form (optionally fusing every conv+BN) and verify equivalence.")
                .WithExample("reparam", "--arch", "RepLKNet-31B", "--weights", "train.pth", "--out", "deploy.safetensors");
            config.AddBranch("export", export =>
            {
                export.SetDescription("Export models for deployment.");
                export.AddCommand<ExportOnnxCommand>("onnx")
                    .WithDescription("Re-parameterize and write an ONNX graph of a classifier, backbone or UperNet segmenter (metadata: input size, normalization, class names); verified with ONNX Runtime before it is kept (at two sizes with --dynamic-size).")
                    .WithExample("export", "onnx", "--weights", "runs/fmnist/best.safetensors", "--out", "fmnist.onnx", "--dynamic-batch")
                    .WithExample("export", "onnx", "--arch", "RepLKNet-31B", "--weights", "w.pth", "--out", "31b.onnx", "--fuse-bn")
                    .WithExample("export", "onnx", "--arch", "seg.json", "--weights", "seg.pth", "--out", "seg.onnx", "--input-size", "512,683", "--dynamic-size");
            });
            config.AddBranch("bench", bench =>
            {
                bench.SetDescription("Benchmarks: the paper's depthwise-conv latency table, whole-model speed and data-parallel scaling.");
                bench.AddCommand<Commands.Bench.BenchDwconvCommand>("dwconv")
                    .WithDescription("Time a stack of depthwise layers per (R, K), ours vs libtorch (the paper's Table 1), with the peak resident memory of each cell.")
                    .WithExample("bench", "dwconv", "--device", "cpu", "--sizes", "32", "--kernels", "7,31", "--layers", "4");
                bench.AddCommand<Commands.Bench.BenchOnnxCommand>("onnx")
                    .WithDescription("Images/s and peak resident memory of an ONNX export on ONNX Runtime against the TorchSharp deploy model of the same architecture (our and libtorch's depthwise conv) and its frozen inference copy (FrozenRepLKNet), all on the same CPU threads (--threads).")
                    .WithExample("bench", "onnx", "--onnx", "fmnist.onnx", "--batch", "32");
                bench.AddCommand<Commands.Bench.BenchModelCommand>("model")
                    .WithDescription("Time a whole model (inference or a training step), ours vs libtorch's depthwise conv, with the peak resident memory of each.")
                    .WithExample("bench", "model", "--arch", "RepLKNet-31B", "--batch", "8", "--mode", "infer");
                bench.AddCommand<Commands.Bench.BenchScaleCommand>("scale")
                    .WithDescription("Data-parallel training images/s for 1, 2, … MPI processes side by side (each an mpiexec job it starts itself), the allreduce time per step, the peak resident memory per process, and a paper estimate of 8- and 64-GPU RepLKNet-31B steps over NVLink and InfiniBand.")
                    .WithExample("bench", "scale", "--ranks", "1,2", "--steps", "30", "--repeat", "3")
                    .WithExample("bench", "scale", "--arch", "RepLKNet-31B", "--batch", "2", "--ranks", "1,2", "--steps", "3", "--json", "scale.json");
            });
            config.AddBranch("seg", seg =>
            {
                seg.SetDescription("Semantic segmentation: UperNet on RepLKNet with MMSegmentation's semantics and checkpoints.");
                seg.AddCommand<Commands.Seg.SegTrainCommand>("train")
                    .WithDescription("Train a segmenter (default upernet-tiny) with the official recipe: AdamW, poly + warm-up, iteration-based, evaluation every N iterations, best by mIoU; MMSeg .pth checkpoints, exact resume.")
                    .WithExample("seg", "train", "--dataset", "ade20k", "--data", "data/ade", "--max-steps", "300", "--out", "runs/seg")
                    .WithExample("seg", "train", "--arch", "upernet-31B-ade20k-512", "--weights", "RepLKNet-31B_ImageNet-1K_224.pth", "--dataset", "ade20k", "--data", "ADEChallengeData2016", "--out", "runs/31b");
                seg.AddCommand<Commands.Seg.SegEvalCommand>("eval")
                    .WithDescription("aAcc, mIoU, mAcc and per-class IoU/Acc of a segmenter on the val split (MMSeg's definitions), whole or sliding-window; table, JSON, bar chart.")
                    .WithExample("seg", "eval", "--weights", "runs/seg/best.pth", "--dataset", "ade20k", "--data", "data/ade", "--json", "scores.json");
                seg.AddCommand<Commands.Seg.SegPredictCommand>("predict")
                    .WithDescription("Segment images: a class-index PNG and a colour overlay per image.")
                    .WithExample("seg", "predict", "--weights", "runs/seg/best.pth", "street.jpg", "--out", "street-mask.png");
                seg.AddCommand<Commands.Seg.SegSyntheticCommand>("synthetic")
                    .WithDescription("Write a small synthetic set (coloured shapes on noise) in the ade20k, cityscapes or folder layout, to try the segmentation commands.")
                    .WithExample("seg", "synthetic", "--out", "data/shapes", "--layout", "ade20k", "--train", "200", "--val", "50", "--size", "128");
            });
            config.AddCommand<ErfCommand>("erf")
                .WithDescription("Effective receptive field (the paper's method): heatmap PNG with colour bar and high-contribution area ratios; --compare draws several models side by side.")
                .WithExample("erf", "--arch", "RepLKNet-31B", "--num-images", "2", "--out", "erf-31b.png")
                .WithExample("erf", "--compare", "resnet18@resnet18.safetensors", "--compare", "@runs/fmnist/best.safetensors", "--size", "224", "--out", "erf.png");
            config.AddCommand<ShapeBiasCommand>("shape-bias")
                .WithDescription("The cue-conflict shape bias (Geirhos et al.): each stimulus decided among 16 categories by any ImageNet-1k classifier (RepLKNet, ResNet, MobileNetV2, ONNX); table, JSON and the paper-style figure, --compare beside other models.")
                .WithExample("shape-bias", "--data", "cue-conflict", "--arch", "RepLKNet-31B", "--weights", "RepLKNet-31B_ImageNet-1K_224.pth", "--json", "31b.json")
                .WithExample("shape-bias", "--data", "cue-conflict", "--arch", "resnet50", "--weights", "resnet50.safetensors", "--compare", "31b.json", "--plot", "shape-bias.png");
            config.AddBranch("experiment", experiment =>
            {
                experiment.SetDescription("The paper's guideline experiments on MobileNetV2, and one-recipe training of other classifiers.");
                experiment.AddCommand<ExperimentKernelSizeCommand>("kernel-size")
                    .WithDescription("Train the paper's MobileNetV2 kernel-size variants with one recipe and print the table (shortcut, reparam or last-stage).")
                    .WithExample("experiment", "kernel-size", "--table", "reparam")
                    .WithExample("experiment", "kernel-size", "--table", "shortcut", "--budget", "5m", "--seeds", "0,1");
                experiment.AddCommand<ExperimentTrainCommand>("train")
                    .WithDescription("Train one comparison model (resnet18/50/101 or mobilenetv2[[-kN]]) with the experiments' recipe; e.g. a ResNet for 'replknet erf --compare'.")
                    .WithExample("experiment", "train", "--model", "resnet18", "--budget", "2", "--out", "runs/resnet18-fmnist.safetensors");
            });
            config.AddBranch("cuda", cuda =>
            {
                cuda.SetDescription("Our CUDA kernels: driver and NVRTC status, compile check, correctness check, tile tuning.");
                cuda.AddCommand<Commands.Cuda.CudaInfoCommand>("info")
                    .WithDescription("CUDA driver, devices, NVRTC version and architectures, cubin cache folder.");
                cuda.AddCommand<Commands.Cuda.CudaCompileCommand>("compile")
                    .WithDescription("Compile every kernel variant with NVRTC (no GPU needed); report registers and spills; exit 1 on errors or spills.")
                    .WithExample("cuda", "compile", "--arch", "sm_90", "--kernels", "13,31");
                cuda.AddCommand<Commands.Cuda.CudaCheckCommand>("check")
                    .WithDescription("Check the CUDA forward kernel against float64, cuDNN and our CPU kernel over awkward shapes (outputs poisoned first).")
                    .WithExample("cuda", "check", "--device", "cuda")
                    .WithExample("cuda", "check", "--raw");
                cuda.AddCommand<Commands.Cuda.CudaTuneCommand>("tune")
                    .WithDescription("Time every candidate tile per (R, K) and report the fastest; --out writes a tuning table.")
                    .WithExample("cuda", "tune", "--device", "cuda", "--sizes", "32,64", "--kernels", "13,31");
            });
            config.AddBranch("distributed", distributed =>
            {
                distributed.SetDescription("Data-parallel jobs under mpiexec (docs/distributed.md).");
                distributed.AddCommand<DistributedCheckCommand>("check")
                    .WithDescription("Check the job's collectives (MPI; NCCL on CUDA) against a float64 reference on every process: run it under mpiexec before a long job.")
                    .WithExample("distributed", "check")
                    .WithExample("distributed", "check", "--device", "cuda");
            });
            config.AddCommand<InfoCommand>("info")
                .WithDescription("Print the .NET, TorchSharp and libtorch versions, threads, CPU vector support, the GLIBCXX fix and CUDA devices.")
                .WithExample("info")
                .WithExample("info", "--device", "cuda");
        });

        try
        {
            int code = app.Run(args);
            DataParallel.Close();
            return code;
        }
        catch (Exception e) when (IsUsageError(e))
        {
            // A usage error is about the command line, the same on every process of a job: rank 0 says it once.
            if (DataParallel.Launch is { Rank: > 0, WorldSize: > 1 })
            {
                if (DataParallel.Current is { IsDistributed: true })
                {
                    Thread.Sleep(TimeSpan.FromSeconds(3)); // rank 0 prints and ends the job first; this is the fallback
                    DataParallel.AbortAfterFailure(ExitCodes.Usage);
                }

                return ExitCodes.Usage;
            }

            Report(error, "usage", e, verbose, args);
            error.WriteLine("Run 'replknet --help' (or 'replknet <command> --help') for usage.");
            DataParallel.AbortAfterFailure(ExitCodes.Usage);
            return ExitCodes.Usage;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Report(error, "error", e, verbose);
            DataParallel.AbortAfterFailure(ExitCodes.Failure);
            return ExitCodes.Failure;
        }
    }

    /// <summary>
    /// Spectre words a refused value by .NET type and names no option ("Failed to convert 'abc' to Double.", "… to
    /// Nullable`1."): put the flag the value was given to in front, found as "--flag value", "--flag=value" or
    /// "--flag:value" among the flags whose declared type can refuse it (<see cref="FlagTypes"/>), and say what it takes
    /// ("--lr 'abc' is not a number"). A flag given without its value reaches the converter as '__default_command', or
    /// comes as "Option 'x' is defined but no value has been provided." or "Expected an option value.": that becomes
    /// "--epochs needs a value (an integer)". Other messages pass unchanged.
    /// </summary>
    internal static string NameTheFlag(string message, string[]? args)
    {
        if (args is null)
        {
            return message;
        }

        var noValue = System.Text.RegularExpressions.Regex.Match(message, @"^Option '([^']+)' is defined but no value has been provided\.?$");
        if (noValue.Success)
        {
            return NeedsValue("--" + noValue.Groups[1].Value);
        }

        if (message.StartsWith("Expected an option value", StringComparison.Ordinal)
            && args.FirstOrDefault(a => a.StartsWith("--", StringComparison.Ordinal) && (a.EndsWith('=') || a.EndsWith(':'))) is { } empty)
        {
            return NeedsValue(empty[..^1]);
        }

        var m = System.Text.RegularExpressions.Regex.Match(message, @"^Failed to convert '(.*)' to (.+?)\.?$");
        if (!m.Success)
        {
            return message;
        }

        string value = m.Groups[1].Value, type = m.Groups[2].Value;
        if (value == FlagTypes.DefaultCommandPlaceholder)
        {
            // A converted flag with nothing after it but another flag or the end of the line.
            int bare = Enumerable.Range(0, args.Length).FirstOrDefault(i =>
                args[i].StartsWith("--", StringComparison.Ordinal) && FlagTypes.CanFail(args[i], type) && (i + 1 == args.Length || LooksLikeFlag(args[i + 1])), -1);
            return bare >= 0 ? NeedsValue(args[bare]) : message;
        }

        for (int i = 0; i < args.Length; i++)
        {
            string? flag = null;
            int joined = args[i].StartsWith("--", StringComparison.Ordinal) ? args[i].IndexOfAny(['=', ':']) : -1;
            if (joined > 2 && args[i][(joined + 1)..] == value)
            {
                flag = args[i][..joined];
            }
            else if (i > 0 && args[i] == value && args[i - 1].StartsWith("--", StringComparison.Ordinal))
            {
                flag = args[i - 1];
            }

            if (flag is not null && FlagTypes.CanFail(flag, type))
            {
                string kind = type switch
                {
                    "Int32" or "Int64" => "an integer",
                    "Double" or "Single" or "Decimal" => "a number",
                    "Nullable`1" => FlagTypes.Kind(flag) ?? "a valid value",
                    var other => $"a valid {other}",
                };
                return $"{flag} '{value}' is not {kind}";
            }
        }

        return message;
    }

    // "--epochs needs a value (an integer)"; without the kind where the flag's values are not only numbers.
    private static string NeedsValue(string flag) => FlagTypes.Kind(flag) is { } kind ? $"{flag} needs a value ({kind})" : $"{flag} needs a value";

    // A token Spectre reads as an option rather than a value: "-x" or "--x", but not a negative number ("-1", "-0.5").
    private static bool LooksLikeFlag(string token) =>
        token.StartsWith('-') && token.Length > 1 && !double.TryParse(token, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out _);

    private static bool IsUsageError(Exception e) =>
        e is CommandAppException or UsageException or RepLKNet.Models.ConfigException
        || e is ArgumentException && e.TargetSite?.DeclaringType?.Namespace?.StartsWith("Spectre", StringComparison.Ordinal) == true
        // A library argument the user gave through a flag, with a value the library refused.
        || e is ArgumentException { ParamName: { } name } and not ArgumentNullException && OptionNames.Flag(name) is not null;

    private static void Report(TextWriter error, string kind, Exception e, bool verbose, string[]? args = null)
    {
        // libtorch appends its C++ stack to every error: keep it for --verbose.
        string message = verbose ? e.Message.ReplaceLineEndings(" ").Trim() : RepLKNet.Runtime.LibTorchLog.WithoutNativeStack(e.Message);
        message = NameTheFlag(OptionNames.Rewrite(e, message), args);

        error.WriteLine($"replknet: {kind}: {DataParallel.Prefix}{message}");
        if (verbose)
        {
            error.WriteLine(e.ToString());
        }
    }
}
