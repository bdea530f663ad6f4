using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using RepLKNet.Reparam;
using RepLKNet.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Inference;

/// <summary>
/// Classifies images with a RepLKNet checkpoint: loads it (PyTorch <c>.pth</c> as released by the official code,
/// safetensors, or the project's format), optionally re-parameterizes it to the deploy form, and prepares each image
/// with the checkpoint's recorded eval preprocessing (<see cref="EvalPreprocessing"/>: resize the short side to
/// size / crop_pct with bicubic resampling, centre-crop to size × size, normalize) before returning the most probable
/// classes. One instance holds one model on one device; it is not thread-safe.
/// </summary>
/// <example>
/// <code>
/// using var classifier = ImageClassifier.Load("RepLKNet-31B_ImageNet-1K_224.pth", arch: "RepLKNet-31B");
/// classifier.Reparameterize();
/// foreach (var c in classifier.Predict("cat.jpg", topK: 5)) Console.WriteLine($"{c.Label} {c.Probability:P2}");
/// </code>
/// </example>
public sealed class ImageClassifier : IDisposable
{
    private readonly RepLKNetModel model;
    private readonly SamplePipeline pipeline;
    private readonly ModelForm loadedForm;
    private bool disposed;

    private ImageClassifier(LoadedModel loaded, Device device, EvalPreprocessing preprocessing)
    {
        model = loaded.Model;
        Arch = loaded.Arch;
        loadedForm = loaded.Form;
        Report = loaded.Report;
        ClassNames = loaded.Metadata?.ClassNames;
        Device = device;
        Preprocessing = preprocessing;
        // The checkpoint's eval transform (SamplePipeline.Eval): short side to size / crop_pct (bicubic) and centre crop, or a
        // warp from 384 up, for every image, one already at the input size included (no resize only at 32 and below, as the official code).
        pipeline = new SamplePipeline(new AugmentOptions { CropPct = preprocessing.CropPct }, preprocessing.Normalization, preprocessing.Channels, preprocessing.InputSize);
    }

    /// <summary>The architecture: a variant name (e.g. <c>RepLKNet-31B</c>) or the name given to a JSON configuration.</summary>
    public string Arch { get; }

    /// <summary>
    /// The form the model is in now: the checkpoint's (<see cref="ModelForm.Train"/>, <see cref="ModelForm.Deploy"/> or
    /// <see cref="ModelForm.Fused"/>), and <see cref="ModelForm.Deploy"/> after <see cref="Reparameterize"/> of a train-form one.
    /// </summary>
    public ModelForm Form => loadedForm == ModelForm.Train && model.IsDeploy ? ModelForm.Deploy : loadedForm;

    /// <summary>How the checkpoint's keys matched the model (all of them, unless non-strict loading skipped some).</summary>
    public LoadReport Report { get; }

    /// <summary>The class names the checkpoint records (index → name), or null (labels are then <c>"class N"</c>).</summary>
    public IReadOnlyList<string>? ClassNames { get; }

    /// <summary>The device the model runs on.</summary>
    public Device Device { get; }

    /// <summary>How every image is prepared: input size in pixels, channels, normalization on [0, 1], crop fraction.</summary>
    public EvalPreprocessing Preprocessing { get; }

    /// <summary>The model (eval mode, on <see cref="Device"/>), for callers that run tensors themselves: input (N, C, S, S) float32, output (N, classes) logits.</summary>
    public RepLKNetModel Model
    {
        get
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            return model;
        }
    }

    /// <summary>
    /// Loads <paramref name="checkpoint"/> for classification. <paramref name="arch"/> names the architecture: a variant
    /// name (case-insensitive; <c>31B</c> works) or a JSON file of the official constructor's arguments; it may be null
    /// for checkpoints in the project's format, which record theirs, and must be given for PyTorch <c>.pth</c> files.
    /// TorchSharp is initialised on first use (the GLIBCXX fix is checked, an external CUDA libtorch is honoured).
    /// </summary>
    /// <param name="checkpoint">Path of a <c>.pth</c>, <c>.safetensors</c> or project-format checkpoint, in the train or deploy form.</param>
    /// <param name="arch">Variant name or JSON configuration path; null to take it from the checkpoint.</param>
    /// <param name="device">Where to run; null: <see cref="DeviceRequest.Auto"/> (CUDA when available, else the CPU).</param>
    /// <returns>A classifier owning the model; dispose it to free the model's native memory.</returns>
    /// <exception cref="CheckpointException">The file is missing, unreadable, damaged, does not record its architecture
    /// when <paramref name="arch"/> is null, or does not fit the architecture (the message names the file).</exception>
    /// <exception cref="ConfigException"><paramref name="arch"/> is neither a variant nor a readable JSON configuration.</exception>
    /// <exception cref="TorchLoadException">TorchSharp's native libraries could not be loaded, or CUDA was requested and is unavailable.</exception>
    public static ImageClassifier Load(string checkpoint, string? arch = null, DeviceRequest? device = null) =>
        Load(checkpoint, new ModelLoadOptions { Arch = arch }, device);

    /// <summary>
    /// Loads <paramref name="checkpoint"/> with full control over key matching (<paramref name="options"/>: architecture,
    /// EMA weights, strictness, classifier size) and, with <paramref name="inputSize"/>, another square input size than
    /// the checkpoint's recorded one.
    /// </summary>
    /// <param name="checkpoint">Path of a <c>.pth</c>, <c>.safetensors</c> or project-format checkpoint.</param>
    /// <param name="options">What to load and how strictly.</param>
    /// <param name="device">Where to run; null: <see cref="DeviceRequest.Auto"/>.</param>
    /// <param name="inputSize">Input size in pixels (images are prepared at inputSize × inputSize); null: the checkpoint's, else its variant's, else 224.</param>
    /// <returns>A classifier owning the model.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="inputSize"/> is not positive.</exception>
    /// <exception cref="CheckpointException">As for <see cref="Load(string, string?, DeviceRequest?)"/>.</exception>
    /// <exception cref="ConfigException">The architecture cannot be resolved.</exception>
    /// <exception cref="TorchLoadException">TorchSharp could not be loaded, or the requested CUDA device is unavailable.</exception>
    public static ImageClassifier Load(string checkpoint, ModelLoadOptions options, DeviceRequest? device = null, int? inputSize = null)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(options);
        if (inputSize is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(inputSize), inputSize, $"inputSize {inputSize} must be positive");
        }

        var runtime = TorchRuntime.Initialize(device ?? DeviceRequest.Auto);
        var loaded = ModelLoader.Load(checkpoint, options);
        try
        {
            loaded.Model.to(runtime.Device);
            return new ImageClassifier(loaded, runtime.Device, EvalPreprocessing.From(loaded, inputSize));
        }
        catch
        {
            loaded.Model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Structural re-parameterization in place: folds every large-kernel block's parallel small kernel and BatchNorms
    /// into one large kernel with a bias (the deploy form), which gives the same outputs (to float32 rounding) faster.
    /// Does nothing for a model already in the deploy form.
    /// </summary>
    /// <returns>The number of large-kernel modules switched (0 when already re-parameterized).</returns>
    /// <exception cref="ObjectDisposedException">The classifier was disposed.</exception>
    public int Reparameterize()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        return Reparameterizer.Reparameterize(model);
    }

    /// <summary>The <paramref name="topK"/> most probable classes of the image file <paramref name="imagePath"/>.</summary>
    /// <param name="imagePath">A PNG, JPEG, WebP, BMP or GIF file (decoded to the model's channels: RGB, or luminance for one).</param>
    /// <param name="topK">How many classes to return (at most the number of classes).</param>
    /// <returns>Classes, most probable first, with softmax probabilities.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="topK"/> is not positive.</exception>
    /// <exception cref="DatasetException">The file is missing, unreadable or not a decodable image (the message names it).</exception>
    /// <exception cref="ObjectDisposedException">The classifier was disposed.</exception>
    public IReadOnlyList<ClassScore> Predict(string imagePath, int topK = 5)
    {
        ArgumentNullException.ThrowIfNull(imagePath);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(topK);
        ObjectDisposedException.ThrowIf(disposed, this);
        return Predict(ImageDecoder.Decode(imagePath, Preprocessing.Channels), topK);
    }

    /// <summary>The <paramref name="topK"/> most probable classes of a decoded image (any size: it is resized and cropped).</summary>
    /// <param name="image">A planar (channels, height, width) 8-bit image with the model's channel count (<see cref="EvalPreprocessing.Channels"/>).</param>
    /// <param name="topK">How many classes to return (at most the number of classes).</param>
    /// <returns>Classes, most probable first, with softmax probabilities.</returns>
    /// <exception cref="ArgumentException"><paramref name="image"/> has another channel count than the model takes.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="topK"/> is not positive.</exception>
    /// <exception cref="ObjectDisposedException">The classifier was disposed.</exception>
    public IReadOnlyList<ClassScore> Predict(ImageU8 image, int topK = 5)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(topK);
        ObjectDisposedException.ThrowIf(disposed, this);
        int size = Preprocessing.InputSize, channels = Preprocessing.Channels;
        if (image.Channels != channels)
        {
            throw new ArgumentException($"image has {image.Channels} channel(s); the model takes {channels}", nameof(image));
        }

        var sample = new float[pipeline.SampleLength];
        pipeline.Eval(image, sample);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = tensor(sample, [1, channels, size, size]).to(Device);
        var probabilities = nn.functional.softmax(model.call(x), 1).squeeze(0).cpu();
        int k = (int)Math.Min(topK, probabilities.size(0));
        var (values, indexes) = probabilities.topk(k);
        var top = new ClassScore[k];
        for (int i = 0; i < k; i++)
        {
            long c = indexes[i].item<long>();
            top[i] = new ClassScore((int)c, ClassScore.LabelOf(ClassNames, c), values[i].item<float>());
        }

        return top;
    }

    /// <summary>Frees the model's native memory.</summary>
    public void Dispose()
    {
        if (!disposed)
        {
            disposed = true;
            model.Dispose();
        }
    }
}
