namespace RepLKNet.Inference;

/// <summary>One class of a prediction.</summary>
/// <param name="Index">Class index (0-based position in the classifier's output).</param>
/// <param name="Label">Class name from the checkpoint's (or export's) class names, or <c>"class N"</c> when it records none.</param>
/// <param name="Probability">Softmax probability in [0, 1].</param>
public sealed record ClassScore(int Index, string Label, float Probability)
{
    /// <summary>The name of class <paramref name="index"/> in <paramref name="names"/>, or <c>"class N"</c> when there is none.</summary>
    internal static string LabelOf(IReadOnlyList<string>? names, long index) =>
        names is not null && index >= 0 && index < names.Count ? names[(int)index] : $"class {index}";
}

/// <summary>The top-k classes of one image.</summary>
/// <param name="Source">The image file.</param>
/// <param name="Top">Classes, most probable first.</param>
public sealed record ImagePrediction(string Source, IReadOnlyList<ClassScore> Top);
