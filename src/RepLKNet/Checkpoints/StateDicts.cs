using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Checkpoints;

/// <summary>State dicts in PyTorch's exact order.</summary>
public static class StateDicts
{
    /// <summary>
    /// The module's state dict in PyTorch order: for each module, its own parameters, then its own persistent buffers,
    /// then each child recursively in registration order. (TorchSharp's <c>state_dict()</c> has the same entries but
    /// lists them in another order inside containers.) The tensors are the module's own, not copies.
    /// </summary>
    public static List<KeyValuePair<string, Tensor>> Ordered(Module module) => Models.StateDictOrder.Ordered(module);
}
