using Microsoft.ML.OnnxRuntime;
using RepLKNet.Checkpoints;
using RepLKNet.Export;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Export;

/// <summary>What the ONNX tests share: the official fixture's model and running a file with ONNX Runtime.</summary>
internal static class OnnxTestModels
{
    /// <summary>
    /// The official small fixture's train-form model in eval mode; with <paramref name="config"/> (another head size) the
    /// fixture's weights fill what fits and the head stays initialised.
    /// </summary>
    public static RepLKNetModel OfficialTrainModel(RepLKNetConfig? config = null)
    {
        using var checkpoint = CheckpointFile.Read(OfficialFixture.File("small-train.pth"));
        var model = new RepLKNetModel(config ?? OfficialFixture.Config);
        StateDictLoader.Load(model, checkpoint.State, strict: config is null, skipHead: config is not null, "small-train.pth");
        model.eval();
        return model;
    }

    /// <summary>Every output of an ONNX file on <paramref name="x"/>, run by ONNX Runtime, in the file's output order.</summary>
    public static List<Tensor> RunOrt(string path, Tensor x)
    {
        using var session = new InferenceSession(path);
        var values = x.contiguous().data<float>().ToArray();
        using var input = OrtValue.CreateTensorValueFromMemory(values, x.shape);
        using var outputs = session.Run(new RunOptions(), [OnnxExporter.InputName], [input], session.OutputNames);
        return [.. outputs.Select(o => tensor(o.GetTensorDataAsSpan<float>().ToArray(), o.GetTensorTypeAndShape().Shape))];
    }

    /// <summary>The output names of an ONNX file.</summary>
    public static IReadOnlyList<string> OutputNames(string path)
    {
        using var session = new InferenceSession(path);
        return [.. session.OutputNames];
    }
}
