namespace RepLKNet.Tests.Support;

/// <summary>Where the tests find the things they check.</summary>
internal static class Paths
{
    /// <summary>The libLibTorchSharp.so copy beside the test assembly (the build's output copy).</summary>
    public static string OutputTorchSharpNative =>
        RepLKNet.Runtime.TorchRuntime.NativeLibraryCandidates(AppContext.BaseDirectory).First(File.Exists);

    /// <summary>The pristine libLibTorchSharp.so in the NuGet package folder (never modified by the build).</summary>
    public static string PackageTorchSharpNative
    {
        get
        {
            string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } custom
                ? custom
                : System.IO.Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            string path = System.IO.Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
            Assert.True(File.Exists(path), $"the TorchSharp package's native library was expected at {path}");
            return path;
        }
    }

    /// <summary>The CLI assembly, copied beside the tests by the project reference.</summary>
    public static string CliAssembly => System.IO.Path.Combine(AppContext.BaseDirectory, "replknet.dll");

    /// <summary>The repository's root: the first folder above the test output that holds RepLKNet.slnx.</summary>
    public static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "RepLKNet.slnx")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no RepLKNet.slnx above {AppContext.BaseDirectory}");
    }
}
