using System.Globalization;
using System.Text.RegularExpressions;
using RepLKNet.Data;

namespace RepLKNet.Experiments.ShapeBias;

/// <summary>One cue-conflict image: the shape of one category rendered with the texture of another.</summary>
/// <param name="File">Path of the PNG.</param>
/// <param name="Shape">Shape category (the folder, and the name's first part).</param>
/// <param name="ShapeImage">n in <c>&lt;shape&gt;&lt;n&gt;-&lt;texture&gt;&lt;m&gt;.png</c>.</param>
/// <param name="Texture">Texture category (the name's second part).</param>
/// <param name="TextureImage">m.</param>
public sealed record CueConflictStimulus(string File, string Shape, int ShapeImage, string Texture, int TextureImage)
{
    /// <summary>Whether shape and texture are different categories (the images shape bias counts).</summary>
    public bool IsConflict => !string.Equals(Shape, Texture, StringComparison.Ordinal);
}

/// <summary>
/// The standard cue-conflict stimulus folder (texture-vs-shape's <c>stimuli/style-transfer-preprocessed-512</c>, model-vs-
/// human's <c>cue-conflict</c>): one folder per category (<c>airplane</c> … <c>truck</c>), each holding
/// <c>&lt;shape&gt;&lt;n&gt;-&lt;texture&gt;&lt;m&gt;.png</c> files whose shape is the folder's category, e.g.
/// <c>cat/cat1-elephant2.png</c>. A file that does not follow the naming is reported, never guessed.
/// </summary>
public static partial class CueConflictSet
{
    [GeneratedRegex(@"^(?<shape>[a-z]+)(?<n>[0-9]+)-(?<texture>[a-z]+)(?<m>[0-9]+)\.png$", RegexOptions.CultureInvariant)]
    private static partial Regex NamePattern();

    /// <summary>Reads the stimuli of <paramref name="folder"/>, in category then file-name order.</summary>
    /// <exception cref="DatasetException">
    /// The folder is missing or holds no stimuli, a subfolder is not one of the 16 categories, or a file does not follow
    /// <c>&lt;shape&gt;&lt;n&gt;-&lt;texture&gt;&lt;m&gt;.png</c> with known categories and the folder's shape (the message
    /// names the file; ParamName <c>data</c>).
    /// </exception>
    public static IReadOnlyList<CueConflictStimulus> Read(string folder)
    {
        ArgumentNullException.ThrowIfNull(folder);
        if (File.Exists(folder))
        {
            throw new DatasetException($"--data '{folder}': a file, not the folder of cue-conflict stimuli (16 category folders airplane … truck)", "data");
        }

        if (!Directory.Exists(folder))
        {
            throw new DatasetException($"--data '{folder}': no such folder (the cue-conflict stimuli: 16 category folders airplane … truck)", "data");
        }

        var stimuli = new List<CueConflictStimulus>();
        var loose = Directory.EnumerateFiles(folder).Where(f => !Path.GetFileName(f).StartsWith('.')).Order(StringComparer.Ordinal).FirstOrDefault();
        if (loose is not null)
        {
            throw new DatasetException($"'{loose}': a file beside the category folders; the cue-conflict layout is <category>/<shape><n>-<texture><m>.png", "data");
        }

        foreach (var dir in Directory.EnumerateDirectories(folder).Order(StringComparer.Ordinal))
        {
            string category = Path.GetFileName(dir);
            if (category.StartsWith('.'))
            {
                continue;
            }

            if (CueConflictCategories.IndexOf(category) < 0)
            {
                throw new DatasetException($"'{dir}': '{category}' is not one of the 16 categories ({string.Join(", ", CueConflictCategories.Names)})", "data");
            }

            foreach (var file in Directory.EnumerateFiles(dir).Where(f => !Path.GetFileName(f).StartsWith('.')).Order(StringComparer.Ordinal))
            {
                stimuli.Add(Parse(file, category));
            }
        }

        if (stimuli.Count == 0)
        {
            throw new DatasetException($"--data '{folder}': no cue-conflict stimuli (expected <category>/<shape><n>-<texture><m>.png, e.g. cat/cat1-elephant2.png)", "data");
        }

        return stimuli;
    }

    /// <summary>Parses one stimulus file name inside the folder of <paramref name="category"/>.</summary>
    /// <exception cref="DatasetException">The name does not follow the naming, names an unknown category, or its shape is not the folder's.</exception>
    public static CueConflictStimulus Parse(string file, string category)
    {
        ArgumentNullException.ThrowIfNull(file);
        string name = Path.GetFileName(file);
        var m = NamePattern().Match(name);
        if (!m.Success)
        {
            throw new DatasetException($"'{file}': not a cue-conflict stimulus name: expected <shape><n>-<texture><m>.png in lower case, e.g. {category}1-elephant2.png", "data");
        }

        string shape = m.Groups["shape"].Value, texture = m.Groups["texture"].Value;
        foreach (var (part, value) in new[] { ("shape", shape), ("texture", texture) })
        {
            if (CueConflictCategories.IndexOf(value) < 0)
            {
                throw new DatasetException($"'{file}': the {part} '{value}' is not one of the 16 categories", "data");
            }
        }

        if (shape != category)
        {
            throw new DatasetException($"'{file}': its shape '{shape}' is not its folder's category '{category}'", "data");
        }

        if (!int.TryParse(m.Groups["n"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int n)
            || !int.TryParse(m.Groups["m"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int k))
        {
            throw new DatasetException($"'{file}': an image number is too large", "data");
        }

        return new CueConflictStimulus(file, shape, n, texture, k);
    }
}
