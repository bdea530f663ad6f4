using RepLKNet.IO;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.IO;

public sealed class AtomicFileTests
{
    [Fact]
    public void Writes_are_atomic_a_failed_write_leaves_the_old_file()
    {
        using var dir = new TempDirectory();
        string path = dir.File("keep.bin");
        File.WriteAllText(path, "old");
        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s =>
        {
            s.Write("partial"u8);
            throw new InvalidOperationException("disk full");
        }));
        Assert.Equal("old", File.ReadAllText(path));
        Assert.Single(Directory.GetFiles(dir.Path));
    }
}
