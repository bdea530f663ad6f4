using RepLKNet.Reparam;
using static TorchSharp.torch;

namespace RepLKNet.Models;

/// <summary>
/// The RepLKNet side of re-parameterization: a converted copy of a whole model, called as
/// <c>Reparameterizer.ReparameterizedCopy(model)</c> beside the walker (<see cref="Reparameterizer.Reparameterize"/>), which
/// converts any module in place and knows nothing of RepLKNet.
/// </summary>
public static class RepLKNetReparameterization
{
    extension(Reparameterizer)
    {
        /// <summary>
        /// A re-parameterized copy of <paramref name="model"/> on the same device, in the same train/eval mode (deploy form;
        /// with <paramref name="fuseBn"/> every conv+BN pair folded as well); the original is untouched.
        /// </summary>
        public static RepLKNetModel ReparameterizedCopy(RepLKNetModel model, bool fuseBn = false)
        {
            ArgumentNullException.ThrowIfNull(model);
            var device = model.parameters().First().device;
            var copy = new RepLKNetModel(model.Config, deploy: model.IsDeploy, device: device, name: model.Name);
            using (no_grad())
            {
                var source = model.state_dict();
                foreach (var (key, tensor) in copy.state_dict())
                {
                    tensor.copy_(source[key]);
                }
            }

            copy.train(model.training);
            Reparameterizer.Reparameterize(copy, fuseBn);
            return copy;
        }
    }
}
