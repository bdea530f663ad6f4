namespace RepLKNet.Models;

/// <summary>Size and analytical cost of a RepLKNet: parameters, and convolution and linear multiply-accumulates (BN, activations and adds not counted).</summary>
public static class Complexity
{
    /// <summary>
    /// Parameter elements of <paramref name="config"/> in <paramref name="form"/> (buffers not counted), from a model built on
    /// the meta device: no memory is allocated and nothing is initialized.
    /// </summary>
    public static long Parameters(RepLKNetConfig config, ModelForm form)
    {
        ArgumentNullException.ThrowIfNull(config);
        using var model = ModelForms.Create(config, form, new TorchSharp.torch.Device("meta"));
        return model.Describe().Parameters;
    }

    /// <summary>
    /// Conv + linear MACs for one image of <paramref name="height"/>×<paramref name="width"/>. The deploy form is what the
    /// paper's README reports as "FLOPs" (31B at 224: 15.354 G); the train form adds the small-kernel branch.
    /// </summary>
    public static long Macs(RepLKNetConfig config, int height, int width, ModelForm form)
    {
        ArgumentNullException.ThrowIfNull(config);
        long h = Out(height, 3, 2, 1), w = Out(width, 3, 2, 1);
        long c0 = config.Channels[0];
        long macs = c0 * config.InChannels * 9 * h * w    // stem.0: dense 3×3 stride 2
            + c0 * 9 * h * w                               // stem.1: depthwise 3×3
            + c0 * c0 * h * w;                             // stem.2: 1×1
        h = Out(h, 3, 2, 1);
        w = Out(w, 3, 2, 1);
        macs += c0 * 9 * h * w;                            // stem.3: depthwise 3×3 stride 2
        for (int i = 0; i < config.NumStages; i++)
        {
            long c = config.Channels[i], d = config.DwChannels(i), f = config.FfnChannels(i), k = config.LargeKernelSizes[i];
            long hw = h * w;
            long block = c * d * hw + d * k * k * hw + d * c * hw;
            if (form == ModelForm.Train && config.SmallKernel is int s)
            {
                block += d * s * s * hw;
            }

            macs += config.Layers[i] * (block + 2 * c * f * hw);
            if (i < config.NumStages - 1)
            {
                long next = config.Channels[i + 1];
                macs += c * next * hw;
                h = Out(h, 3, 2, 1);
                w = Out(w, 3, 2, 1);
                macs += next * 9 * h * w;
            }
        }

        if (config.NumClasses is int classes)
        {
            macs += config.Channels[^1] * classes;
        }

        return macs;
    }

    private static long Out(long size, int kernel, int stride, int padding) => (size + 2 * padding - kernel) / stride + 1;
}
