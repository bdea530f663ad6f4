using RepLKNet.Inference;

// Classify CHECKPOINT IMAGE [ARCH]: the five most probable classes of IMAGE. CHECKPOINT is an official PyTorch .pth
// (train or deploy form), a safetensors file or the project's format; ARCH is a variant name (RepLKNet-31B, -31L, -XL)
// or a JSON file of the official constructor's arguments, needed for files that do not record it (.pth).
if (args.Length < 2)
{
    Console.Error.WriteLine("usage: Classify CHECKPOINT IMAGE [ARCH]");
    return 2;
}

using var classifier = ImageClassifier.Load(args[0], arch: args.Length > 2 ? args[2] : null);
classifier.Reparameterize(); // train form -> deploy form: one large kernel per block, same outputs, faster
foreach (var c in classifier.Predict(args[1], topK: 5))
{
    Console.WriteLine($"{c.Label,-24} {c.Probability:P2}");
}

return 0;
