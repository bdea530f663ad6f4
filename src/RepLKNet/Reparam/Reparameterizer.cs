using static TorchSharp.torch.nn;

namespace RepLKNet.Reparam;

/// <summary>
/// Structural re-parameterization: one walker that switches every <see cref="IReparameterizable"/> module to its deploy
/// form (the official <c>structural_reparam</c>), optionally followed by folding every remaining conv+BN pair
/// (<see cref="IBatchNormFoldable"/>; the official <c>deep_fuse_BN</c>; pre-BNs are left alone because nothing precedes
/// them to fold into).
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
            foreach (var pair in model.modules().OfType<IBatchNormFoldable>().ToList())
            {
                pair.FuseBn();
            }
        }

        return switched;
    }
}
