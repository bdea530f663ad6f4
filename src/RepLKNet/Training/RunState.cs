using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>The files of a run folder (docs/training.md, "Checkpoints and resuming").</summary>
/// <param name="Path">The run folder.</param>
public sealed record RunFolder(string Path)
{
    /// <summary>The default <see cref="WeightsExtension"/>.</summary>
    public const string DefaultWeightsExtension = ".safetensors";

    /// <summary>Extension of <see cref="LastCheckpoint"/>, <see cref="BestCheckpoint"/> and <see cref="EmaCheckpoint"/> (the task's format, e.g. <c>.pth</c> for MMSeg checkpoints).</summary>
    public string WeightsExtension { get; init; } = DefaultWeightsExtension;

    /// <summary>The last checkpoint (model weights, pointing at the resume state).</summary>
    public string LastCheckpoint => System.IO.Path.Combine(Path, "last" + WeightsExtension);

    /// <summary>The best checkpoint (by the task's score, EMA or not, whichever is higher).</summary>
    public string BestCheckpoint => System.IO.Path.Combine(Path, "best" + WeightsExtension);

    /// <summary>The best checkpoint re-parameterized into its deploy form (written by <see cref="DeployStep"/>).</summary>
    public string DeployCheckpoint => System.IO.Path.Combine(Path, "best-deploy.safetensors");

    /// <summary>The EMA weights of the last checkpoint.</summary>
    public string EmaCheckpoint => System.IO.Path.Combine(Path, "last-ema" + WeightsExtension);

    /// <summary>The resume state: step, history, and which resume folder is complete.</summary>
    public string StateFile => System.IO.Path.Combine(Path, "state.json");

    /// <summary>Where the resume sets (model, EMA, optimizer, generator) live, one folder per saved step.</summary>
    public string ResumeRoot => System.IO.Path.Combine(Path, "resume");

    /// <summary>Per-epoch metrics as CSV.</summary>
    public string MetricsCsv => System.IO.Path.Combine(Path, "metrics.csv");

    /// <summary>Per-epoch metrics as JSON.</summary>
    public string MetricsJson => System.IO.Path.Combine(Path, "metrics.json");

    /// <summary>
    /// Creates the run folder <paramref name="path"/> if needed and checks that a file can be written in it, so a run fails
    /// in one line before any work rather than at its first checkpoint.
    /// </summary>
    /// <exception cref="ArgumentException">The path is a file (ParamName <c>OutDir</c>).</exception>
    /// <exception cref="IOException">The folder cannot be created or written; <c>Data["ParamName"]</c> is <c>OutDir</c>.</exception>
    public static RunFolder EnsureWritable(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (File.Exists(path))
        {
            throw new ArgumentException($"OutDir '{path}' is a file; give a folder for the run", nameof(TrainOptions.OutDir));
        }

        try
        {
            Directory.CreateDirectory(path);
            string probe = System.IO.Path.Combine(path, $".write-probe-{Environment.ProcessId}");
            File.WriteAllBytes(probe, []);
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"OutDir '{path}': cannot create or write the run folder ({e.Message.TrimEnd('.')})", e)
            {
                Data = { ["ParamName"] = nameof(TrainOptions.OutDir) },
            };
        }

        return new RunFolder(path);
    }
}

/// <summary>
/// Saving and restoring a run's complete state atomically: the resume set (model, EMA, optimizer, libtorch's generator) is
/// written into a fresh folder, renamed into place, then pointed at by <c>state.json</c> (written atomically); the
/// user-facing copies (<c>last*.safetensors</c>) follow. A failure anywhere leaves the previous state intact. In a
/// data-parallel job only rank 0 writes (every rank holds the same weights and optimizer state); every rank restores
/// from the same files, and the state records the world size.
/// </summary>
internal sealed class RunState(RunFolder folder, ITrainingTask task, Module model, ModelEma? ema, AdamW optimizer, long stepsPerEpoch, TrainingLoopOptions options)
{
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>Creates the folder, removes half-written files of a killed run, and checks a requested resume has a state to use.</summary>
    public void Prepare()
    {
        if (Writes)
        {
            Directory.CreateDirectory(folder.Path);
            AtomicFile.RemoveLeftovers(folder.Path);
        }

        if (options.Resume && !File.Exists(folder.StateFile))
        {
            throw new CheckpointException($"resume was requested but '{folder.StateFile}' does not exist: there is no run to continue in '{folder.Path}' (start a new run without resuming)");
        }
    }

    /// <summary>The step <c>state.json</c> points at (set the moment it is replaced, or by <see cref="Restore"/>), or null.</summary>
    public long? LastSavedStep { get; private set; }

    /// <summary>Whether this process writes (rank 0, or the only process).</summary>
    public bool Writes => options.Group.IsMain;

    public void Save(long step, double best, List<EpochMetrics> history, (double LossSum, long Steps) epochSoFar = default, PendingEvaluation? pending = null)
    {
        if (!Writes)
        {
            LastSavedStep = step; // rank 0 writes this very state
            return;
        }

        using var scope = NewDisposeScope();
        string name = string.Create(CultureInfo.InvariantCulture, $"step-{step:D9}");
        string target = Path.Combine(folder.ResumeRoot, name);
        string staging = target + ".partial";
        if (Directory.Exists(staging))
        {
            Directory.Delete(staging, recursive: true);
        }

        try
        {
            Directory.CreateDirectory(staging);
            task.SaveWeights(Path.Combine(staging, "model.safetensors"), model);
            if (ema is not null)
            {
                task.SaveWeights(Path.Combine(staging, "ema.safetensors"), ema.Average);
            }

            optimizer.save_state_dict(Path.Combine(staging, "optimizer.bin"));
            // The global CPU generator drives drop path: saving it makes a resumed run draw the same masks.
            using (var rng = torch.get_rng_state())
            {
                File.WriteAllBytes(Path.Combine(staging, "rng.bin"), rng.bytes.ToArray());
            }

            AtomicFile.FlushDirectory(staging);
            if (Directory.Exists(target))
            {
                Directory.Delete(target, recursive: true); // only a set that state.json does not point at (never the same step twice)
            }

            Directory.Move(staging, target);
            AtomicFile.SyncDirectory(folder.ResumeRoot);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(staging);
            throw new IOException($"cannot write the resume state into '{staging}': {e.Message}; the previous state ('{folder.StateFile}') is intact", e);
        }

        var state = new JsonObject
        {
            ["step"] = step,
            ["steps_per_epoch"] = stepsPerEpoch,
            ["seed"] = options.Seed,
            ["batch_size"] = options.BatchSize,
            ["accumulation_steps"] = options.AccumulationSteps,
            ["resume"] = Path.Combine("resume", name),
            ["best_" + task.ScoreName] = double.IsFinite(best) ? best : null,
            ["epoch_loss_sum"] = epochSoFar.LossSum,
            ["epoch_steps"] = epochSoFar.Steps,
            ["pending_evaluation"] = pending is null ? null : JsonSerializer.SerializeToNode(pending, JsonOptions),
            ["history"] = JsonSerializer.SerializeToNode(history, JsonOptions),
        };
        if (options.Group.IsDistributed)
        {
            // A data-parallel run records its processes (one-process states keep their keys; absent means 1).
            state["world_size"] = options.Group.WorldSize;
        }

        if (options.EvaluateEvery is not null)
        {
            // Iteration-based runs: the schedule (poly) is a function of the run's length, so a resume must keep it.
            state["max_steps"] = options.MaxSteps;
        }

        AtomicFile.Write(folder.StateFile, s => s.Write(System.Text.Encoding.UTF8.GetBytes(state.ToJsonString(JsonOptions))));
        LastSavedStep = step; // from here on a failure leaves this step's state as the resumable one
        foreach (var old in Directory.EnumerateDirectories(folder.ResumeRoot).Where(d => Path.GetFileName(d) != name))
        {
            Directory.Delete(old, recursive: true);
        }

        // The user-facing copies (atomic each), after the resume state they describe.
        task.SaveWeights(folder.LastCheckpoint, model, Path.GetFileName(folder.StateFile));
        if (ema is not null)
        {
            task.SaveWeights(folder.EmaCheckpoint, ema.Average);
        }
    }

    public (long Step, double Best, List<EpochMetrics> History, (double LossSum, long Steps) Partial, PendingEvaluation? Pending) Restore()
    {
        JsonObject state;
        try
        {
            state = JsonNode.Parse(File.ReadAllText(folder.StateFile))!.AsObject();
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"'{folder.StateFile}' is damaged: {e.Message}", e);
        }

        long steps = (long)state["steps_per_epoch"]!;
        int world = options.Group.WorldSize;
        long savedWorld = (long?)state["world_size"] ?? 1;
        if (savedWorld != world && !options.AllowWorldSizeChange)
        {
            throw new CheckpointException($"AllowWorldSizeChange: '{folder.StateFile}' was written by a job of {savedWorld} process(es), this one has {world}: resume with {savedWorld} process(es), or allow the change (the global batch, batch size × processes, must stay {(long?)state["batch_size"] * savedWorld})", nameof(options.AllowWorldSizeChange));
        }

        // Per-process batch × processes: the global batch, which fixes the data order and the steps (the processes may change when allowed).
        bool sameBatches = (long?)state["batch_size"] is not long b0 || b0 * savedWorld == (long)options.BatchSize * world;
        bool sameAccumulation = (long?)state["accumulation_steps"] is not long a0 || a0 == options.AccumulationSteps;
        if (steps != stepsPerEpoch || (long)state["seed"]! != options.Seed || !sameBatches || !sameAccumulation)
        {
            throw new CheckpointException($"'{folder.StateFile}' was written with another batch size, accumulation, dataset size or seed ({steps} steps per epoch of batch {(long?)state["batch_size"]}{(savedWorld > 1 ? $" × {savedWorld} processes" : "")} × {(long?)state["accumulation_steps"]}, seed {(long)state["seed"]!}; now {stepsPerEpoch} of {options.BatchSize}{(world > 1 ? $" × {world} processes" : "")} × {options.AccumulationSteps}, seed {options.Seed}); resume with the same settings");
        }

        if (state["max_steps"] is JsonNode recorded && (long?)recorded != options.MaxSteps)
        {
            throw new CheckpointException($"MaxSteps: '{folder.StateFile}' was written by a run of {(long?)recorded} iterations, not {options.MaxSteps}; the learning-rate schedule depends on it: resume with the same number", nameof(options.MaxSteps));
        }

        string resume = Path.Combine(folder.Path, (string?)state["resume"] ?? throw new CheckpointException($"'{folder.StateFile}' names no resume folder"));
        foreach (var required in new[] { "model.safetensors", "optimizer.bin", "rng.bin" })
        {
            if (!File.Exists(Path.Combine(resume, required)))
            {
                throw new CheckpointException($"the resume state '{resume}' (named by '{folder.StateFile}') is incomplete: {required} is missing");
            }
        }

        task.LoadWeights(Path.Combine(resume, "model.safetensors"), model);
        string emaFile = Path.Combine(resume, "ema.safetensors");
        if (ema is not null && File.Exists(emaFile))
        {
            task.LoadWeights(emaFile, ema.Average);
        }

        optimizer.load_state_dict(Path.Combine(resume, "optimizer.bin"));
        byte[] bytes = File.ReadAllBytes(Path.Combine(resume, "rng.bin"));
        using (var rng = tensor(bytes, dtype: ScalarType.Byte))
        {
            torch.set_rng_state(rng);
        }

        var history = state["history"]!.Deserialize<List<EpochMetrics>>(JsonOptions) ?? [];
        double best = state["best_" + task.ScoreName] is JsonNode b ? (double)b : double.NegativeInfinity;
        var partial = ((double?)state["epoch_loss_sum"] ?? 0, (long?)state["epoch_steps"] ?? 0);
        var pending = state["pending_evaluation"] is JsonNode p ? p.Deserialize<PendingEvaluation>(JsonOptions) : null;
        LastSavedStep = (long)state["step"]!;
        return ((long)state["step"]!, best, history, partial, pending);
    }

    public void WriteMetrics(List<EpochMetrics> history)
    {
        if (!Writes)
        {
            return;
        }

        // The score's columns carry its name (top1 for classification); the task's detail figures follow, in their order.
        string score = task.ScoreName;
        // A detail named like the score (segmentation's mIoU) is the score's own column already.
        var details = history.FirstOrDefault(m => m.Details is not null)?.Details?.Keys.Where(k => k != score).ToList() ?? [];
        var csv = new System.Text.StringBuilder($"epoch,step,train_loss,lr,{score},ema_{score},images_per_s,seconds,skipped,data_wait_s");
        foreach (var name in details)
        {
            csv.Append(',').Append(name);
        }

        csv.Append(",peak_rss_bytes\n");
        foreach (var m in history)
        {
            csv.Append(string.Create(CultureInfo.InvariantCulture,
                $"{m.Epoch},{m.Step},{m.TrainLoss:R},{m.LearningRate:R},{m.Top1:R},{m.EmaTop1:R},{m.ImagesPerSecond:F1},{m.Seconds:F1},{m.Skipped},{m.DataWaitSeconds:F2}"));
            foreach (var name in details)
            {
                csv.Append(string.Create(CultureInfo.InvariantCulture, $",{(m.Details is { } d && d.TryGetValue(name, out double v) ? v : double.NaN):R}"));
            }

            csv.Append(string.Create(CultureInfo.InvariantCulture, $",{m.PeakResidentBytes}"));
            csv.AppendLine();
        }

        AtomicFile.Write(folder.MetricsCsv, s => s.Write(System.Text.Encoding.UTF8.GetBytes(csv.ToString())));
        AtomicFile.Write(folder.MetricsJson, s => s.Write(JsonSerializer.SerializeToUtf8Bytes(history, JsonOptions)));
    }

    private static void TryDelete(string path)
    {
        try
        {
            if (Directory.Exists(path))
            {
                Directory.Delete(path, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a leftover staging folder is removed by the next save or ignored by resume.
        }
    }
}
