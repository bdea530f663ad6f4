namespace RepLKNet.Experiments.ShapeBias;

/// <summary>
/// The 16 entry-level categories of the cue-conflict stimuli (Geirhos et al., ICLR 2019) and their ImageNet-1k indices,
/// exactly as the reference implementation lists them (model-vs-human, <c>modelvshuman/helper/human_categories.py</c>,
/// <c>HumanCategories.&lt;category&gt;_indices</c>; the same lists as texture-vs-shape's), and its decision rule
/// (<c>ImageNetProbabilitiesTo16ClassesMapping</c> with the default aggregation, the mean): softmax over the 1,000
/// logits, the mean probability over each category's indices, the category with the largest mean. A tie (in practice
/// never) goes to the first in alphabetical order, as texture-vs-shape's <c>probabilities_to_decision.py</c> (strict
/// comparison); model-vs-human's <c>np.flip(np.argsort(…))</c> would take the last.
/// </summary>
public static class CueConflictCategories
{
    /// <summary>The 16 categories in alphabetical order (the reference's <c>sorted(...)</c>), the decision's index space.</summary>
    public static IReadOnlyList<string> Names { get; } =
    [
        "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
    ];

    /// <summary>Each category's ImageNet-1k class indices (0-based, in the reference's order).</summary>
    public static IReadOnlyDictionary<string, IReadOnlyList<int>> ImageNetIndices { get; } = new Dictionary<string, IReadOnlyList<int>>
    {
        ["airplane"] = [404],
        ["bear"] = [294, 295, 296, 297],
        ["bicycle"] = [444, 671],
        ["bird"] = [8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 98, 99, 100, 127,
            128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145],
        ["boat"] = [472, 554, 625, 814, 914],
        ["bottle"] = [440, 720, 737, 898, 899, 901, 907],
        ["car"] = [436, 511, 817],
        ["cat"] = [281, 282, 283, 284, 285, 286],
        ["chair"] = [423, 559, 765, 857],
        ["clock"] = [409, 530, 892],
        ["dog"] = [152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177,
            178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 205, 206,
            207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 228, 229, 230, 231, 232, 233, 234,
            235, 236, 237, 238, 239, 240, 241, 243, 244, 245, 246, 247, 248, 249, 250, 252, 253, 254, 255, 256, 257, 259, 261, 262, 263, 265, 266,
            267, 268],
        ["elephant"] = [385, 386],
        ["keyboard"] = [508, 878],
        ["knife"] = [499],
        ["oven"] = [766],
        ["truck"] = [555, 569, 656, 675, 717, 734, 864, 867],
    };

    /// <summary>ImageNet-1k's class count, the logits a model must produce.</summary>
    public const int ImageNetClasses = 1000;

    /// <summary>The index of <paramref name="name"/> in <see cref="Names"/>, or −1.</summary>
    public static int IndexOf(string name)
    {
        for (int i = 0; i < Names.Count; i++)
        {
            if (string.Equals(Names[i], name, StringComparison.Ordinal))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>
    /// The 16-category probabilities of one image: softmax of <paramref name="logits"/> (1,000 values, computed in float64),
    /// then the mean over each category's indices, in <see cref="Names"/> order.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="logits"/> does not hold 1,000 finite values.</exception>
    public static double[] Probabilities(ReadOnlySpan<float> logits)
    {
        if (logits.Length != ImageNetClasses)
        {
            throw new ArgumentException($"logits: the decision needs the {ImageNetClasses} ImageNet-1k logits, got {logits.Length}", nameof(logits));
        }

        double max = double.NegativeInfinity;
        foreach (float v in logits)
        {
            if (!float.IsFinite(v))
            {
                throw new ArgumentException($"logits: a logit is {v}", nameof(logits));
            }

            max = Math.Max(max, v);
        }

        double sum = 0;
        var p = new double[ImageNetClasses];
        for (int i = 0; i < p.Length; i++)
        {
            p[i] = Math.Exp(logits[i] - max);
            sum += p[i];
        }

        var result = new double[Names.Count];
        for (int c = 0; c < Names.Count; c++)
        {
            var indices = ImageNetIndices[Names[c]];
            double mean = 0;
            foreach (int i in indices)
            {
                mean += p[i];
            }

            result[c] = mean / sum / indices.Count;
        }

        return result;
    }

    /// <summary>The decision for one image's 1,000 logits: the index in <see cref="Names"/> (first largest mean probability).</summary>
    /// <exception cref="ArgumentException"><paramref name="logits"/> does not hold 1,000 finite values.</exception>
    public static int Decide(ReadOnlySpan<float> logits)
    {
        var p = Probabilities(logits);
        int best = 0;
        for (int c = 1; c < p.Length; c++)
        {
            if (p[c] > p[best])
            {
                best = c;
            }
        }

        return best;
    }
}
