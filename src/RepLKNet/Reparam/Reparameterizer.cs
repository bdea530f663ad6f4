using RepLKNet.Layers;
using RepLKNet.Models;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Reparam;

/// <summary>
/// Structural re-parameterization: one walker that switches every <see cref="IReparameterizable"/> module to its deploy
/// form (the official <c>structural_reparam</c>), optionally followed by folding every remaining conv+BN pair (the
/// official <c>deep_fuse_BN</c>; pre-BNs are left alone because nothing precedes them to fold into).
/// </summary>
public static class Reparameterizer
{
    /// <summary>Converts <paramref name="model"/> in place and returns how many modules were switched.</summary>
    public static int Reparameterize(Module model, bool fuseBn = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        int switched = 0;
        // Materialize first: switching edits the module tree being walked.
        foreach (var module in model.modules().OfType<IReparameterizable>().ToList())
        {
            if (!module.IsDeploy)
            {
                module.SwitchToDeploy();
                switched++;
            }
        }

        if (fuseBn)
        {
            foreach (var convBn in model.modules().OfType<ConvBn>().ToList())
            {
                convBn.FuseBn();
            }
        }

        return switched;
    }

    /// <summary>A re-parameterized copy of <paramref name="model"/> on the same device; the original is untouched.</summary>
    public static RepLKNetModel ReparameterizedCopy(RepLKNetModel model, bool fuseBn = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        var device = model.parameters().First().device;
        var copy = new RepLKNetModel(model.Config, deploy: model.IsDeploy, device: device);
        using (no_grad())
        {
            var source = model.state_dict();
            foreach (var (key, tensor) in copy.state_dict())
            {
                tensor.copy_(source[key]);
            }
        }

        copy.train(model.training);
        Reparameterize(copy, fuseBn);
        return copy;
    }
}
