using RepLKNet.Runtime;

namespace RepLKNet.Tests.Support;

/// <summary>Loads TorchSharp through <see cref="TorchRuntime"/> (the path the app takes) before any test touches torch.</summary>
internal static class Torch
{
    private static readonly Lazy<TorchRuntimeInfo> Info = new(() => TorchRuntime.Initialize(DeviceRequest.Cpu));

    public static TorchRuntimeInfo EnsureLoaded() => Info.Value;
}
