using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Inference;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Inference;

public sealed class ImageClassifierTests
{
    private const string SmallArchJson =
        """{"large_kernel_sizes": [13, 11, 9, 5], "layers": [1, 1, 2, 1], "channels": [16, 32, 64, 128], "small_kernel": 5, "dw_ratio": 1.5, "ffn_ratio": 4, "num_classes": 10}""";

    [Fact]
    public void The_official_train_checkpoint_re_parameterized_classifies_like_itself_and_like_the_official_deploy_checkpoint()
    {
        using var dir = new TempDirectory();
        string arch = dir.File("small.json");
        File.WriteAllText(arch, SmallArchJson);
        var image = Stripes(3, 40, 52);

        using var classifier = ImageClassifier.Load(OfficialFixture.File("small-train.pth"), arch, DeviceRequest.Cpu);
        Assert.Equal(ModelForm.Train, classifier.Form);
        Assert.Null(classifier.ClassNames);
        Assert.Equal(new EvalPreprocessing(224, 3, Normalization.ImageNet, 0.875), classifier.Preprocessing);
        var train = classifier.Predict(image, topK: 10);
        Assert.Equal(10, train.Count);
        Assert.Equal(1.0, train.Sum(c => c.Probability), 1e-5);
        Assert.True(train.Zip(train.Skip(1)).All(p => p.First.Probability >= p.Second.Probability));
        Assert.Equal(Enumerable.Range(0, 10), train.Select(c => c.Index).Order());
        Assert.All(train, c => Assert.Equal($"class {c.Index}", c.Label));

        Assert.Equal(5, classifier.Reparameterize()); // one large kernel in each of the 1 + 1 + 2 + 1 blocks
        Assert.Equal(ModelForm.Deploy, classifier.Form);
        Assert.Equal(0, classifier.Reparameterize());
        var deploy = classifier.Predict(image, topK: 3);
        Assert.Equal(train.Take(3).Select(c => c.Index), deploy.Select(c => c.Index));
        Assert.All(deploy, c => Assert.Equal(train.First(t => t.Index == c.Index).Probability, c.Probability, 1e-5f));

        using var official = ImageClassifier.Load(OfficialFixture.File("small-deploy.pth"), arch, DeviceRequest.Cpu);
        Assert.Equal(ModelForm.Deploy, official.Form);
        var fromOfficial = official.Predict(image, topK: 3);
        Assert.Equal(deploy.Select(c => c.Index), fromOfficial.Select(c => c.Index));
        Assert.All(fromOfficial, c => Assert.Equal(deploy.First(t => t.Index == c.Index).Probability, c.Probability, 1e-5f));
    }

    [Fact]
    public void Errors_name_the_library_argument()
    {
        using var dir = new TempDirectory();
        string arch = dir.File("small.json");
        File.WriteAllText(arch, SmallArchJson);
        string pth = OfficialFixture.File("small-deploy.pth");

        var size = Assert.Throws<ArgumentOutOfRangeException>(() => ImageClassifier.Load(pth, new ModelLoadOptions { Arch = arch }, DeviceRequest.Cpu, inputSize: 0));
        Assert.Equal("inputSize", size.ParamName);
        Assert.StartsWith("inputSize 0 must be positive", size.Message, StringComparison.Ordinal);

        var classifier = ImageClassifier.Load(pth, new ModelLoadOptions { Arch = arch }, DeviceRequest.Cpu, inputSize: 64);
        Assert.Equal(64, classifier.Preprocessing.InputSize);
        var channels = Assert.Throws<ArgumentException>(() => classifier.Predict(Stripes(1, 8, 8)));
        Assert.Equal("image", channels.ParamName);
        Assert.StartsWith("image has 1 channel(s); the model takes 3", channels.Message, StringComparison.Ordinal);
        Assert.Equal("topK", Assert.Throws<ArgumentOutOfRangeException>(() => classifier.Predict(Stripes(3, 8, 8), topK: 0)).ParamName);
        Assert.Equal(10, classifier.Predict(Stripes(3, 8, 8), topK: 50).Count);
        string missing = dir.File("nope.png");
        Assert.Contains($"'{missing}': no such image", Assert.Throws<DatasetException>(() => classifier.Predict(missing)).Message, StringComparison.Ordinal);

        classifier.Dispose();
        Assert.Throws<ObjectDisposedException>(() => classifier.Predict(Stripes(3, 8, 8)));
        Assert.Throws<ObjectDisposedException>(() => classifier.Reparameterize());
        classifier.Dispose();
    }

    private static ImageU8 Stripes(int channels, int height, int width)
    {
        var image = new ImageU8(channels, height, width);
        for (int i = 0; i < image.Pixels.Length; i++)
        {
            image.Pixels[i] = (byte)(i * 37 % 251);
        }

        return image;
    }
}
