using System.Diagnostics;
using System.Globalization;
using System.IO.Compression;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using RepLKNet.Inference;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using Xunit.Abstractions;

namespace RepLKNet.Tests.Packaging;

/// <summary>
/// The NuGet package as a user gets it: <c>dotnet pack src/RepLKNet</c>, its contents, and samples/Classify built
/// against it from a local folder feed (the sample's own NuGet.config, not a project reference) and run on the official
/// fixture checkpoint.
/// </summary>
public sealed partial class PackageTests(ITestOutputHelper output)
{
    private const string SmallArchJson =
        """{"large_kernel_sizes": [13, 11, 9, 5], "layers": [1, 1, 2, 1], "channels": [16, 32, 64, 128], "drop_path_rate": 0.0, "small_kernel": 5, "dw_ratio": 1.5, "ffn_ratio": 4, "in_channels": 3, "num_classes": 10}""";

    private static readonly XNamespace Nuspec = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd";

    [Fact]
    public void Packed_library_has_its_metadata_docs_symbols_and_GLIBCXX_fix_and_the_sample_built_against_it_classifies_like_the_library()
    {
        string root = Paths.RepositoryRoot();
        string versionPrefix = VersionPrefixPattern().Match(File.ReadAllText(Path.Combine(root, "src", "RepLKNet", "RepLKNet.csproj"))).Groups[1].Value;
        Assert.Matches(@"^\d+\.\d+\.\d+$", versionPrefix);
        // The sample's default package version is the library's: `dotnet pack` then `dotnet run` in samples/Classify works as the README says.
        Assert.Contains($">{versionPrefix}</RepLKNetVersion>", File.ReadAllText(Path.Combine(root, "samples", "Classify", "Classify.csproj")), StringComparison.Ordinal);

        // A prerelease version of its own, so that NuGet's global cache (shared, not cleared) cannot serve an older build of the package.
        string suffix = string.Create(CultureInfo.InvariantCulture, $"test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}");
        string version = $"{versionPrefix}-{suffix}";
        string cached = Path.Combine(GlobalPackagesFolder(), "replknet", version);
        using var dir = new TempDirectory();
        var clock = Stopwatch.StartNew();
        try
        {
            // The sample folder and global.json copied as they are: ../artifacts/packages in the sample's NuGet.config is then dir/artifacts/packages.
            CopyTree(Path.Combine(root, "samples"), Path.Combine(dir.Path, "samples"));
            File.Copy(Path.Combine(root, "global.json"), dir.File("global.json"));
            string feed = Path.Combine(dir.Path, "artifacts", "packages");

            // The library is packed from a copy (sources and the repository's build files, no bin/obj), so the pack never
            // shares obj/ with a build of the working tree running at the same time (./replknet, another test).
            string source = dir.File("repo");
            CopyTree(Path.Combine(root, "src", "RepLKNet"), Path.Combine(source, "src", "RepLKNet"));
            foreach (var file in new[] { "Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props", ".editorconfig", "global.json" })
            {
                File.Copy(Path.Combine(root, file), Path.Combine(source, file));
            }

            Dotnet(source, "pack", Path.Combine(source, "src", "RepLKNet", "RepLKNet.csproj"), "-c", "Release", "-o", feed, $"-p:VersionSuffix={suffix}");
            output.WriteLine($"pack: {clock.Elapsed.TotalSeconds:F1} s");
            CheckPackage(root, Path.Combine(feed, $"RepLKNet.{version}.nupkg"), version);
            CheckSymbols(Path.Combine(feed, $"RepLKNet.{version}.snupkg"));

            string sample = Path.Combine(dir.Path, "samples", "Classify");
            Dotnet(sample, "build", "-c", "Release", $"-p:RepLKNetVersion={version}");
            output.WriteLine($"pack + sample build: {clock.Elapsed.TotalSeconds:F1} s");
            string bin = Path.Combine(sample, "bin", "Release", "net10.0");
            Assert.True(File.Exists(Path.Combine(cached, $"replknet.{version}.nupkg")), $"the sample did not restore RepLKNet {version} into {cached}");
            // The sample uses the package just packed, as a package (not a project reference).
            var libraries = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(bin, "Classify.deps.json")))!["libraries"]!.AsObject();
            Assert.Equal("package", libraries[$"RepLKNet/{version}"]?["type"]?.GetValue<string>());
            Assert.Equal(["Classify/1.0.0"], libraries.Where(l => l.Value!["type"]!.GetValue<string>() == "project").Select(l => l.Key));
            CheckGlibcxxFix(Path.Combine(bin, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"));

            // The official fixture's train-form .pth (no architecture recorded: the JSON names it) on an image made here.
            string arch = dir.File("small.json");
            File.WriteAllText(arch, SmallArchJson);
            string image = dir.File("stripes.png");
            WriteImage(image);
            string checkpoint = OfficialFixture.File("small-train.pth");
            var run = Run(bin, Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet",
                [Path.Combine(bin, "Classify.dll"), checkpoint, image, arch], TimeSpan.FromMinutes(2));
            output.WriteLine($"pack + sample build + run: {clock.Elapsed.TotalSeconds:F1} s");
            Assert.True(run.ExitCode == 0, run.StdOut + run.StdErr);
            var lines = run.StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

            // The same public API in this process gives the same classes in the same order, and the same probabilities.
            using var classifier = ImageClassifier.Load(checkpoint, arch, DeviceRequest.Cpu);
            classifier.Reparameterize();
            var expected = classifier.Predict(image, topK: 5);
            Assert.Equal(expected.Count, lines.Length);
            for (int i = 0; i < lines.Length; i++)
            {
                var match = Regex.Match(lines[i], @"^(.+?)\s+(\d+\.\d+) %$");
                Assert.True(match.Success, lines[i]);
                Assert.Equal(expected[i].Label, match.Groups[1].Value);
                Assert.Equal(expected[i].Probability * 100, double.Parse(match.Groups[2].Value, CultureInfo.InvariantCulture), 0.011);
            }
        }
        finally
        {
            // Leave NuGet's global cache as it was.
            if (Directory.Exists(cached))
            {
                Directory.Delete(cached, recursive: true);
            }

            string id = Path.GetDirectoryName(cached)!;
            if (Directory.Exists(id) && !Directory.EnumerateFileSystemEntries(id).Any())
            {
                Directory.Delete(id);
            }
        }
    }

    [Fact]
    public void The_README_section_Use_as_a_library_opens_with_the_sample_program()
    {
        string root = Paths.RepositoryRoot();
        string readme = File.ReadAllText(Path.Combine(root, "README.md")).ReplaceLineEndings("\n");
        string program = File.ReadAllText(Path.Combine(root, "samples", "Classify", "Program.cs")).ReplaceLineEndings("\n");
        int section = readme.IndexOf("\n## Use as a library\n", StringComparison.Ordinal);
        Assert.True(section >= 0, "README.md has no '## Use as a library' section");
        string body = readme[(section + "\n## Use as a library\n".Length)..].TrimStart('\n');
        Assert.StartsWith("```csharp\n" + program.TrimEnd('\n') + "\n```\n", body, StringComparison.Ordinal);
    }

    private void CheckPackage(string root, string nupkg, string version)
    {
        Assert.True(File.Exists(nupkg), $"dotnet pack wrote no {nupkg}");
        using var zip = ZipFile.OpenRead(nupkg);
        var entries = zip.Entries.Select(e => e.FullName).ToHashSet(StringComparer.Ordinal);
        output.WriteLine($"{Path.GetFileName(nupkg)}: {new FileInfo(nupkg).Length / 1024} KiB, {string.Join(", ", entries.Order(StringComparer.Ordinal))}");
        foreach (var required in new[]
        {
            "RepLKNet.nuspec", "PACKAGE.md", "lib/net10.0/RepLKNet.Core.dll", "lib/net10.0/RepLKNet.Core.xml",
            "buildTransitive/RepLKNet.targets", "buildTransitive/ElfSymbolVersions.cs",
        })
        {
            Assert.Contains(required, entries);
        }

        // The build logic and the patcher are the repository's own files, unchanged.
        Assert.Equal(File.ReadAllBytes(Path.Combine(root, "src", "RepLKNet", "buildTransitive", "RepLKNet.targets")), Read(zip, "buildTransitive/RepLKNet.targets"));
        Assert.Equal(File.ReadAllBytes(Path.Combine(root, "src", "RepLKNet", "Runtime", "ElfSymbolVersions.cs")), Read(zip, "buildTransitive/ElfSymbolVersions.cs"));
        Assert.Equal(File.ReadAllBytes(Path.Combine(root, "src", "RepLKNet", "PACKAGE.md")), Read(zip, "PACKAGE.md"));

        string docs = ReadText(zip, "lib/net10.0/RepLKNet.Core.xml");
        Assert.Contains("M:RepLKNet.Inference.ImageClassifier.Load(System.String,System.String,System.Nullable{RepLKNet.Runtime.DeviceRequest})", docs, StringComparison.Ordinal);
        Assert.Contains("M:RepLKNet.Inference.ImageClassifier.Predict(System.String,System.Int32)", docs, StringComparison.Ordinal);

        var metadata = XDocument.Parse(ReadText(zip, "RepLKNet.nuspec")).Root!.Element(Nuspec + "metadata")!;
        string Field(string name) => metadata.Element(Nuspec + name)?.Value ?? "";
        Assert.Equal("RepLKNet", Field("id"));
        Assert.Equal(version, Field("version"));
        Assert.Equal("MIT", Field("license"));
        Assert.Equal("expression", metadata.Element(Nuspec + "license")!.Attribute("type")!.Value);
        Assert.Equal("PACKAGE.md", Field("readme"));
        Assert.False(string.IsNullOrWhiteSpace(Field("authors")));
        Assert.Contains("RepLKNet", Field("description"), StringComparison.Ordinal);
        Assert.Contains("torchsharp", Field("tags"), StringComparison.Ordinal);

        // Every package a consumer needs at run time, at the versions this repository pins (Directory.Packages.props).
        var pins = XDocument.Load(Path.Combine(root, "Directory.Packages.props")).Descendants("PackageVersion")
            .ToDictionary(e => e.Attribute("Include")!.Value, e => e.Attribute("Version")!.Value, StringComparer.Ordinal);
        var dependencies = metadata.Descendants(Nuspec + "group").Single(g => g.Attribute("targetFramework")?.Value == "net10.0")
            .Elements(Nuspec + "dependency").ToDictionary(d => d.Attribute("id")!.Value, d => d.Attribute("version")!.Value, StringComparer.Ordinal);
        foreach (var id in new[]
        {
            "TorchSharp", "libtorch-cpu-linux-x64", "TorchSharp.PyBridge", "TorchVision", "SkiaSharp", "SkiaSharp.NativeAssets.Linux.NoDependencies",
            "OnnxSharp", "Google.Protobuf", "Microsoft.ML.OnnxRuntime", "System.IO.Hashing",
        })
        {
            Assert.True(dependencies.TryGetValue(id, out var v), $"the package does not depend on {id}: {string.Join(", ", dependencies.Keys)}");
            Assert.Equal(pins[id], v);
        }

        // Nothing only the CLI or the tests use.
        Assert.DoesNotContain(dependencies.Keys, id => id.StartsWith("Spectre.", StringComparison.Ordinal) || id is "ScottPlot" or "xunit");
    }

    private static void CheckSymbols(string snupkg)
    {
        Assert.True(File.Exists(snupkg), $"dotnet pack wrote no symbol package {snupkg}");
        using var zip = ZipFile.OpenRead(snupkg);
        Assert.Contains("lib/net10.0/RepLKNet.Core.pdb", zip.Entries.Select(e => e.FullName));
    }

    private void CheckGlibcxxFix(string library)
    {
        Assert.True(File.Exists(library), $"the sample's build output has no {library}");
        string? libstdcxx = ElfSymbolVersions.FindSystemLibStdCxx();
        bool systemHasIt = libstdcxx is not null && ElfSymbolVersions.LibraryDefinesVersion(libstdcxx, ElfSymbolVersions.TorchSharpGlibcxxVersion);
        var need = ElfSymbolVersions.ReadVersionNeeds(library).Single(n => n.Version == ElfSymbolVersions.TorchSharpGlibcxxVersion);
        output.WriteLine($"system libstdc++ {libstdcxx ?? "not found"} {(systemHasIt ? "has" : "lacks")} {need.Version}; the sample's copy: {(need.IsWeak ? "weak" : "required")}");
        // The package's buildTransitive targets patched the consumer's output copy exactly when this system needs it (the task skips otherwise).
        Assert.Equal(!systemHasIt, need.IsWeak);
        Assert.NotEqual(GlibcxxFixState.Missing, TorchRuntime.DiagnoseGlibcxx(library, libstdcxx));
        Assert.False(ElfSymbolVersions.ReadVersionNeeds(Paths.PackageTorchSharpNative).Single(n => n.Version == need.Version).IsWeak,
            "the NuGet cache copy must never be edited");
    }

    /// <summary>A 48×40 RGB PNG of coloured stripes.</summary>
    private static void WriteImage(string path)
    {
        using var bitmap = new SkiaSharp.SKBitmap(48, 40, SkiaSharp.SKColorType.Rgba8888, SkiaSharp.SKAlphaType.Opaque);
        for (int y = 0; y < 40; y++)
        {
            for (int x = 0; x < 48; x++)
            {
                bitmap.SetPixel(x, y, new SkiaSharp.SKColor((byte)(x * 5), (byte)((x + y) % 7 * 36), (byte)(y * 6)));
            }
        }

        using var encoded = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
        File.WriteAllBytes(path, encoded.ToArray());
    }

    private static void Dotnet(string workingDirectory, params string[] args)
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        // No MSBuild node left behind holding the output pipe; quiet output, errors and warnings still printed.
        var result = Run(workingDirectory, dotnet, [.. args, "-nodeReuse:false", "-v", "q", "--nologo"], TimeSpan.FromMinutes(4));
        Assert.True(result.ExitCode == 0, $"dotnet {string.Join(' ', args)} failed ({result.ExitCode}):\n{result.StdOut}\n{result.StdErr}");
    }

    private static (int ExitCode, string StdOut, string StdErr) Run(string workingDirectory, string file, string[] args, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(file)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        // The sample runs on the CPU, like the in-process comparison, with invariant number formatting.
        start.Environment.Remove(TorchRuntime.LibTorchEnvironmentVariable);
        start.Environment["DOTNET_SYSTEM_GLOBALIZATION_INVARIANT"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in {timeout.TotalMinutes} minutes");
        }

        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    private static byte[] Read(ZipArchive zip, string name)
    {
        using var stream = zip.GetEntry(name)!.Open();
        using var memory = new MemoryStream();
        stream.CopyTo(memory);
        return memory.ToArray();
    }

    private static string ReadText(ZipArchive zip, string name)
    {
        using var reader = new StreamReader(zip.GetEntry(name)!.Open()); // skips the byte-order mark NuGet writes
        return reader.ReadToEnd();
    }

    private static void CopyTree(string from, string to)
    {
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(from, file);
            if (relative.Split(Path.DirectorySeparatorChar).Any(part => part is "bin" or "obj"))
            {
                continue;
            }

            string target = Path.Combine(to, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
    }

    private static string GlobalPackagesFolder() =>
        Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } custom
            ? custom
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");

    [GeneratedRegex("<VersionPrefix>([^<]+)</VersionPrefix>")]
    private static partial Regex VersionPrefixPattern();
}
