using System.Text.Json;
using RepLKNet.Data;
using RepLKNet.Erf;
using RepLKNet.Experiments;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Experiments;

[Collection(SerialTests.Name)]
public sealed class ExperimentTests
{
    public ExperimentTests() => Torch.EnsureLoaded();

    /// <summary>A tiny labelled set: class c is a bright square at a class-specific place on noise.</summary>
    private static ImageTensorDataset Tiny(int count, int seed)
    {
        var generator = new Generator((ulong)seed);
        var labels = arange(count, dtype: int64) % 4;
        var images = (rand([count, 1, 28, 28], generator: generator) * 60).to(ScalarType.Byte);
        for (int i = 0; i < count; i++)
        {
            int c = (int)labels[i].item<long>();
            images[i, 0, TensorIndex.Slice(4 + 5 * c, 10 + 5 * c), TensorIndex.Slice(4, 10)] = tensor((byte)250);
        }

        return new ImageTensorDataset(images, labels, ["a", "b", "c", "d"]);
    }

    [Theory]
    [InlineData(KernelSizeTable.Shortcut)]
    [InlineData(KernelSizeTable.Reparam)]
    [InlineData(KernelSizeTable.LastStage)]
    public void A_one_step_smoke_run_of_each_table_reports_every_cell(KernelSizeTable table)
    {
        using var dir = new TempDirectory();
        using var train = Tiny(24, 1);
        using var test = Tiny(12, 2);
        var options = new KernelSizeExperimentOptions
        {
            Table = table, Seeds = [0, 1], OutDir = dir.Path,
            Base = MobileNetV2Config.SmallImages(1, 4, width: 0.25),
            Training = new ClassifierTrainingOptions
            {
                Budget = TrainingBudget.Parse("1"), MaxSteps = 1, BatchSize = 8, Normalization = new Normalization([0.2], [0.3]), Workers = 1,
            },
        };
        var seen = new List<string>();
        var results = KernelSizeExperiment.Run(options, train, test, onCell: r => seen.Add(r.Cell.Id));
        var cells = KernelSizeExperiment.Cells(table, options.Base);
        Assert.Equal(cells.Select(c => c.Id), seen);
        foreach (var r in results)
        {
            Assert.Equal([1L, 1L], r.Steps);
            Assert.All(r.Top1, t => Assert.InRange(t, 0, 1));
            Assert.True(r.ReparamMaxDiff < 1e-3, $"{r.Cell.Id}: re-param logits differ by {r.ReparamMaxDiff}");
            Assert.Equal(r.Cell.Config.SmallKernel is null, r.TrainParams == r.DeployParams);
            Assert.True(File.Exists(dir.File($"{r.Cell.Id}-seed1.safetensors")));
        }

        string name = KernelSizeExperiment.Name(table);
        string md = File.ReadAllText(dir.File($"{name}.md"));
        Assert.Equal(cells.Count + 2, md.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.Contains(" ± ", md, StringComparison.Ordinal);
        using var json = JsonDocument.Parse(File.ReadAllText(dir.File($"{name}.json")));
        Assert.True(json.RootElement.GetProperty("complete").GetBoolean());
        Assert.Equal(cells.Count, json.RootElement.GetProperty("cells").GetArrayLength());
        // A saved cell is a usable ERF subject.
        using var subject = ErfSubject.Create(null, dir.File($"{cells[^1].Id}-seed0.safetensors"));
        Assert.StartsWith("MobileNetV2", subject.Label, StringComparison.Ordinal);
        Assert.True(subject.Trained);
    }

    [Theory]
    [InlineData("3", 3.0, null)]
    [InlineData("0.5e", 0.5, null)]
    [InlineData("90s", null, 90.0)]
    [InlineData("5m", null, 300.0)]
    [InlineData("1.5h", null, 5400.0)]
    public void Budgets_parse_as_epochs_or_time(string text, double? epochs, double? seconds)
    {
        var b = TrainingBudget.Parse(text);
        Assert.Equal(epochs, b.Epochs);
        Assert.Equal(seconds, b.Time?.TotalSeconds);
    }

    [Theory]
    [InlineData("")]
    [InlineData("0")]
    [InlineData("-2")]
    [InlineData("3x")]
    [InlineData("fast")]
    public void Bad_budgets_are_refused_with_the_text_quoted(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => TrainingBudget.Parse(text));
        Assert.Contains($"'{text}'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_schedule_warms_up_linearly_then_follows_a_cosine_to_zero()
    {
        var o = new ClassifierTrainingOptions { Budget = TrainingBudget.Parse("1"), Normalization = Normalization.ImageNet, LearningRate = 2e-3, WarmupFraction = 0.1 };
        Assert.Equal(0, ClassifierTraining.LearningRate(o, 0));
        Assert.Equal(1e-3, ClassifierTraining.LearningRate(o, 0.05), 12);
        Assert.Equal(2e-3, ClassifierTraining.LearningRate(o, 0.1), 12);
        Assert.Equal(1e-3, ClassifierTraining.LearningRate(o, 0.55), 12);
        Assert.Equal(0, ClassifierTraining.LearningRate(o, 1), 12);
    }

    [Fact]
    public void A_few_hundred_steps_learn_the_tiny_task()
    {
        using var train = Tiny(256, 3);
        using var test = Tiny(64, 4);
        manual_seed(5);
        using var model = new MobileNetV2(MobileNetV2Config.SmallImages(1, 4, width: 0.25));
        var result = ClassifierTraining.Run(model, 4, train, test, new ClassifierTrainingOptions
        {
            Budget = TrainingBudget.Parse("6"), BatchSize = 32, Normalization = new Normalization([0.2], [0.3]), Workers = 1, LearningRate = 3e-3,
        });
        Assert.Equal(48, result.Steps);
        Assert.True(result.Top1 >= 0.9, $"top-1 {result.Top1:P1} after {result.Steps} steps (loss {result.FinalLoss:F3})");
    }
}
