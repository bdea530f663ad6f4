using RepLKNet.Checkpoints;

namespace RepLKNet.Tests.Support;

/// <summary>Assertions on checkpoint files.</summary>
internal static class CheckpointAssert
{
    /// <summary>
    /// <paramref name="a"/> and <paramref name="b"/> hold the same keys in the same order and every tensor equal to the bit;
    /// a failure names the file, the key and <paramref name="context"/> (e.g. " after resume").
    /// </summary>
    public static void SameTensors(string a, string b, string context = "")
    {
        using var x = CheckpointFile.Read(a);
        using var y = CheckpointFile.Read(b);
        Assert.Equal(x.State.Keys, y.State.Keys);
        foreach (var (key, tensor) in x.State)
        {
            Assert.True(tensor.equal(y.State[key]).all().item<bool>(), $"{Path.GetFileName(a)}: {key} differs{context}");
        }
    }
}
