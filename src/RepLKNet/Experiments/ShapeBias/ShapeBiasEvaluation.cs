using RepLKNet.Data;
using RepLKNet.Data.Transforms;

namespace RepLKNet.Experiments.ShapeBias;

/// <summary>One image's decision.</summary>
/// <param name="File">The stimulus.</param>
/// <param name="Shape">Its shape category.</param>
/// <param name="Texture">Its texture category.</param>
/// <param name="Decision">The model's category (<see cref="CueConflictCategories.Decide"/>).</param>
public sealed record ShapeBiasDecision(string File, string Shape, string Texture, string Decision)
{
    /// <summary>Whether the image's shape and texture differ (only those count towards the shape bias).</summary>
    public bool IsConflict => Shape != Texture;
}

/// <summary>The shape bias of one shape category (images whose shape is it).</summary>
/// <param name="Category">The shape category.</param>
/// <param name="Images">Its images (cue-conflict and same-category).</param>
/// <param name="ShapeDecisions">Cue-conflict images decided by shape.</param>
/// <param name="TextureDecisions">Cue-conflict images decided by texture.</param>
public sealed record CategoryShapeBias(string Category, int Images, int ShapeDecisions, int TextureDecisions)
{
    /// <summary>Shape decisions / (shape + texture decisions); NaN when there are none.</summary>
    public double ShapeBias => ShapeDecisions + TextureDecisions == 0 ? double.NaN : (double)ShapeDecisions / (ShapeDecisions + TextureDecisions);
}

/// <summary>
/// The cue-conflict evaluation of one model (Geirhos et al., ICLR 2019; model-vs-human's <c>ShapeBias</c> analysis):
/// images whose shape and texture categories coincide are reported but left out; of the others, a decision for the shape
/// category is a shape hit, for the texture category a texture hit; shape bias = shape hits / (shape + texture hits).
/// </summary>
/// <param name="Model">Label of the model.</param>
/// <param name="Decisions">Every image's decision, in the set's order.</param>
/// <param name="Note">e.g. that the weights are random, or null.</param>
public sealed record ShapeBiasReport(string Model, IReadOnlyList<ShapeBiasDecision> Decisions, string? Note = null)
{
    /// <summary>Images evaluated.</summary>
    public int Images => Decisions.Count;

    /// <summary>Images whose shape and texture are the same category (left out of the shape bias).</summary>
    public int SameCategory => Decisions.Count(d => !d.IsConflict);

    /// <summary>Cue-conflict images decided by their shape.</summary>
    public int ShapeDecisions => Decisions.Count(d => d.IsConflict && d.Decision == d.Shape);

    /// <summary>Cue-conflict images decided by their texture.</summary>
    public int TextureDecisions => Decisions.Count(d => d.IsConflict && d.Decision == d.Texture);

    /// <summary>Shape hits / (shape + texture hits); NaN when neither occurred.</summary>
    public double ShapeBias => ShapeDecisions + TextureDecisions == 0 ? double.NaN : (double)ShapeDecisions / (ShapeDecisions + TextureDecisions);

    /// <summary>Shape hits / cue-conflict images.</summary>
    public double ShapeAccuracy => Ratio(ShapeDecisions, Images - SameCategory);

    /// <summary>Texture hits / cue-conflict images.</summary>
    public double TextureAccuracy => Ratio(TextureDecisions, Images - SameCategory);

    /// <summary>Shape hits / all images (model-vs-human's <c>fraction-correct-shape</c>, whose denominator keeps the same-category ones).</summary>
    public double FractionCorrectShape => Ratio(ShapeDecisions, Images);

    /// <summary>Texture hits / all images (model-vs-human's <c>fraction-correct-texture</c>).</summary>
    public double FractionCorrectTexture => Ratio(TextureDecisions, Images);

    /// <summary>The shape bias of each shape category present, in <see cref="CueConflictCategories.Names"/> order (model-vs-human's per-category analysis, by the <c>category</c> column = shape).</summary>
    public IReadOnlyList<CategoryShapeBias> PerCategory =>
    [
        .. CueConflictCategories.Names.Where(c => Decisions.Any(d => d.Shape == c)).Select(c =>
        {
            var mine = Decisions.Where(d => d.Shape == c).ToList();
            return new CategoryShapeBias(c, mine.Count, mine.Count(d => d.IsConflict && d.Decision == d.Shape), mine.Count(d => d.IsConflict && d.Decision == d.Texture));
        }),
    ];

    private static double Ratio(int a, int b) => b == 0 ? double.NaN : (double)a / b;
}

/// <summary>How the stimuli reach the model.</summary>
public enum ShapeBiasTransform
{
    /// <summary>
    /// model-vs-human's (the toolbox behind the published shape-bias figures): the stimuli (224 × 224) go in as they are,
    /// only normalized; an image of another size than the model's input is resized to it, without a crop.
    /// </summary>
    Reference,

    /// <summary>The model's recorded eval transform: the short side resized to size / crop_pct, a centre crop, normalization.</summary>
    Recorded,
}

/// <summary>Runs a classifier over the cue-conflict stimuli and collects its 16-category decisions.</summary>
public static class ShapeBiasEvaluation
{
    /// <summary>
    /// Decides every stimulus: each image is decoded as RGB, brought to <paramref name="size"/> × <paramref name="size"/> by
    /// <paramref name="transform"/> (the reference's: as it is, normalized; or the recorded eval transform: resize of the
    /// short side to size / <paramref name="cropPct"/>, centre crop), normalized with <paramref name="normalization"/>, and
    /// given in batches to <paramref name="logits"/>, which fills (batch × 1000) logits for (batch × 3 × size × size)
    /// samples; the decision is <see cref="CueConflictCategories.Decide"/>.
    /// </summary>
    /// <param name="stimuli">From <see cref="CueConflictSet.Read"/>.</param>
    /// <param name="model">Label for the report.</param>
    /// <param name="size">Input size.</param>
    /// <param name="cropPct">Eval crop fraction.</param>
    /// <param name="normalization">Mean and std (3 channels).</param>
    /// <param name="logits">The model: samples, batch, logits out.</param>
    /// <param name="batchSize">Images per call.</param>
    /// <param name="onProgress">Images done so far, after each batch.</param>
    /// <param name="note">Note for the report (e.g. random weights).</param>
    /// <param name="transform">How images reach the model (default: the reference's).</param>
    /// <exception cref="DatasetException">An image cannot be read (the message names it).</exception>
    public static ShapeBiasReport Run(IReadOnlyList<CueConflictStimulus> stimuli, string model, int size, double cropPct, Normalization normalization,
        Action<float[], int, float[]> logits, int batchSize = 16, Action<int>? onProgress = null, string? note = null,
        ShapeBiasTransform transform = ShapeBiasTransform.Reference)
    {
        ArgumentNullException.ThrowIfNull(stimuli);
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        var pipeline = new SamplePipeline(new AugmentOptions { CropPct = cropPct }, normalization, 3, size);
        int length = pipeline.SampleLength;
        var decisions = new List<ShapeBiasDecision>(stimuli.Count);
        for (int start = 0; start < stimuli.Count; start += batchSize)
        {
            int n = Math.Min(batchSize, stimuli.Count - start);
            var samples = new float[(long)n * length];
            try
            {
                Parallel.For(0, n, i =>
                {
                    var image = ImageDecoder.Decode(stimuli[start + i].File, 3);
                    var destination = samples.AsSpan(i * length, length);
                    if (transform == ShapeBiasTransform.Recorded)
                    {
                        pipeline.Eval(image, destination);
                    }
                    else
                    {
                        pipeline.EvalAsIs(image.Height == size && image.Width == size ? image : ImageOps.Resize(image, size, size), destination);
                    }
                });
            }
            catch (AggregateException e) when (e.InnerExceptions.FirstOrDefault(x => x is DatasetException) is DatasetException first)
            {
                throw first; // the unreadable image's own message
            }
            var output = new float[n * CueConflictCategories.ImageNetClasses];
            logits(samples, n, output);
            for (int i = 0; i < n; i++)
            {
                var s = stimuli[start + i];
                int c = CueConflictCategories.Decide(output.AsSpan(i * CueConflictCategories.ImageNetClasses, CueConflictCategories.ImageNetClasses));
                decisions.Add(new ShapeBiasDecision(s.File, s.Shape, s.Texture, CueConflictCategories.Names[c]));
            }

            onProgress?.Invoke(start + n);
        }

        return new ShapeBiasReport(model, decisions, note);
    }
}

/// <summary>
/// The JSON of a <see cref="ShapeBiasReport"/> (what <c>replknet shape-bias --json</c> writes and <c>--compare</c> reads):
/// <c>model</c>, <c>note</c>, <c>shape_bias</c> and its counts and ratios, <c>per_category</c>, the <c>mapping</c> used
/// (category → ImageNet indices) and <c>decision_rule</c>, and <c>images</c> (<c>file</c>, <c>shape</c>, <c>texture</c>,
/// <c>decision</c>). NaN is written as null.
/// </summary>
public static class ShapeBiasJson
{
    /// <summary>The document of <paramref name="report"/>; files are written relative to <paramref name="root"/> when given (the stimulus folder).</summary>
    public static System.Text.Json.Nodes.JsonObject ToJson(ShapeBiasReport report, string? root = null)
    {
        ArgumentNullException.ThrowIfNull(report);
        static System.Text.Json.Nodes.JsonNode? Number(double v) => double.IsFinite(v) ? v : null;
        var mapping = new System.Text.Json.Nodes.JsonObject();
        foreach (var name in CueConflictCategories.Names)
        {
            mapping[name] = new System.Text.Json.Nodes.JsonArray([.. CueConflictCategories.ImageNetIndices[name].Select(i => (System.Text.Json.Nodes.JsonNode)i)]);
        }

        return new System.Text.Json.Nodes.JsonObject
        {
            ["model"] = report.Model,
            ["note"] = report.Note,
            ["shape_bias"] = Number(report.ShapeBias),
            ["shape_decisions"] = report.ShapeDecisions,
            ["texture_decisions"] = report.TextureDecisions,
            ["images"] = report.Images,
            ["same_category_left_out"] = report.SameCategory,
            ["shape_accuracy"] = Number(report.ShapeAccuracy),
            ["texture_accuracy"] = Number(report.TextureAccuracy),
            ["fraction_correct_shape"] = Number(report.FractionCorrectShape),
            ["fraction_correct_texture"] = Number(report.FractionCorrectTexture),
            ["per_category"] = new System.Text.Json.Nodes.JsonArray([.. report.PerCategory.Select(c => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject
            {
                ["category"] = c.Category, ["images"] = c.Images, ["shape_decisions"] = c.ShapeDecisions, ["texture_decisions"] = c.TextureDecisions,
                ["shape_bias"] = Number(c.ShapeBias),
            })]),
            ["decision_rule"] = "softmax over the 1000 ImageNet logits, mean probability over each category's indices (mapping), argmax over the 16 categories (model-vs-human's ImageNetProbabilitiesTo16ClassesMapping; a tie goes to the first in alphabetical order, as texture-vs-shape's strict comparison)",
            ["mapping"] = mapping,
            ["decisions"] = new System.Text.Json.Nodes.JsonArray([.. report.Decisions.Select(d => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject
            {
                ["file"] = root is null ? d.File : Path.GetRelativePath(root, d.File), ["shape"] = d.Shape, ["texture"] = d.Texture, ["decision"] = d.Decision,
            })]),
        };
    }

    /// <summary>Reads a report written by <see cref="ToJson"/> (its per-image decisions; the figures are recomputed).</summary>
    /// <exception cref="DatasetException">The file is missing, not JSON, or not a shape-bias report (ParamName <c>compare</c>).</exception>
    public static ShapeBiasReport Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        try
        {
            var o = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))?.AsObject()
                ?? throw new DatasetException($"'{path}': empty JSON", "compare");
            var decisions = (o["decisions"] as System.Text.Json.Nodes.JsonArray
                ?? throw new DatasetException($"'{path}': not a shape-bias report (no 'decisions'; write one with shape-bias --json)", "compare"))
                .Select(d => new ShapeBiasDecision((string)d!["file"]!, Category(d, "shape", path), Category(d, "texture", path), Category(d, "decision", path)))
                .ToList();
            return new ShapeBiasReport((string?)o["model"] ?? Path.GetFileNameWithoutExtension(path), decisions, (string?)o["note"]);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Text.Json.JsonException or InvalidOperationException or NullReferenceException or FormatException)
        {
            throw new DatasetException($"'{path}': not a readable shape-bias report ({e.Message})", "compare");
        }
    }

    private static string Category(System.Text.Json.Nodes.JsonNode d, string key, string path)
    {
        string value = (string?)d[key] ?? throw new DatasetException($"'{path}': a decision has no '{key}'", "compare");
        return CueConflictCategories.IndexOf(value) >= 0 ? value : throw new DatasetException($"'{path}': '{value}' is not one of the 16 categories", "compare");
    }
}
