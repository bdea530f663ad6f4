namespace RepLKNet.Tests.Support;

/// <summary>Tests that must not overlap others (they depend on process-wide state such as libtorch's global generator).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialTests
{
    public const string Name = "serial";
}
