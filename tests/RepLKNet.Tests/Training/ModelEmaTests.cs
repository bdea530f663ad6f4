using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Training;

public sealed class ModelEmaTests
{
    public ModelEmaTests() => Torch.EnsureLoaded();

    [Fact]
    public void Ema_follows_decay_times_average_plus_rest_times_current_and_copies_counters()
    {
        using var scope = NewDisposeScope();
        var config = new RepLKNetConfig { LargeKernelSizes = [5, 3], Layers = [1, 1], Channels = [4, 8], SmallKernel = 3, NumClasses = 3 };
        var model = new RepLKNetModel(config);
        var ema = new ModelEma(model, new RepLKNetModel(config), decay: 0.9);
        var start = StateDicts.Ordered(model).ToDictionary(kv => kv.Key, kv => kv.Value.clone());

        using (no_grad())
        {
            foreach (var (key, tensor) in StateDicts.Ordered(model))
            {
                if (tensor.is_floating_point())
                {
                    tensor.add_(1.0);
                }
                else
                {
                    tensor.fill_(5);
                }
            }
        }

        ema.Update(model);

        var average = StateDicts.Ordered(ema.Average).ToDictionary();
        foreach (var (key, before) in start)
        {
            var expected = before.is_floating_point() ? before * 0.9 + (before + 1.0) * 0.1 : full_like(before, 5);
            Assert.True(average[key].allclose(expected, rtol: 1e-6, atol: 1e-6), key);
        }

        Assert.All(ema.Average.parameters(), p => Assert.False(p.requires_grad));
        Assert.False(ema.Average.training);
    }
}
