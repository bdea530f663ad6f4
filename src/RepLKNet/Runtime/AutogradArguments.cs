using static TorchSharp.torch;

namespace RepLKNet.Runtime;

/// <summary>The argument list of the project's batch-norm autograd functions (ours in <c>Ops</c>, SyncBN's in <c>Distributed</c>).</summary>
internal static class AutogradArguments
{
    /// <summary>
    /// The options (not a tensor: TorchSharp passes it through), the input, then the weight and the bias where given — one
    /// entry per gradient that the function's backward returns.
    /// </summary>
    public static object[] Of(object options, Tensor input, Tensor? weight, Tensor? bias)
    {
        var args = new List<object> { options, input };
        if (weight is not null)
        {
            args.Add(weight);
        }

        if (bias is not null)
        {
            args.Add(bias);
        }

        return [.. args];
    }
}
