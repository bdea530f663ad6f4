using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Models;

/// <summary>State dicts in PyTorch's exact order (public as <c>Checkpoints.StateDicts.Ordered</c>).</summary>
internal static class StateDictOrder
{
    /// <summary>
    /// The module's state dict in PyTorch order: for each module, its own parameters, then its own persistent buffers,
    /// then each child recursively in registration order. (TorchSharp's <c>state_dict()</c> has the same entries but
    /// lists them in another order inside containers.) The tensors are the module's own, not copies.
    /// </summary>
    public static List<KeyValuePair<string, Tensor>> Ordered(Module module)
    {
        ArgumentNullException.ThrowIfNull(module);
        var result = new List<KeyValuePair<string, Tensor>>();
        Collect(module, string.Empty, result);
        return result;
    }

    private static void Collect(Module module, string prefix, List<KeyValuePair<string, Tensor>> result)
    {
        foreach (var (name, parameter) in module.named_parameters(recurse: false))
        {
            result.Add(new(prefix + name, parameter));
        }

        foreach (var (name, buffer) in module.named_buffers(recurse: false, include_nonpersistent: false))
        {
            result.Add(new(prefix + name, buffer));
        }

        foreach (var (name, child) in module.named_children())
        {
            Collect(child, prefix + name + ".", result);
        }
    }
}
