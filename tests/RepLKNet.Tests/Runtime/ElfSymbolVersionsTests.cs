using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using static RepLKNet.Tests.Support.SyntheticElf;

namespace RepLKNet.Tests.Runtime;

public sealed class ElfSymbolVersionsTests
{
    private const string Target = ElfSymbolVersions.TorchSharpGlibcxxVersion;

    [Fact]
    public void Reads_every_requirement_of_a_synthetic_library()
    {
        using var dir = new TempDirectory();
        string path = dir.File("lib.so");
        File.WriteAllBytes(path, Build(new Need("libstdc++.so.6", "GLIBCXX_3.4.30", Target), new Need("libc.so.6", "GLIBC_2.2.5")));

        var needs = ElfSymbolVersions.ReadVersionNeeds(path);

        Assert.Equal(
            [("libstdc++.so.6", "GLIBCXX_3.4.30"), ("libstdc++.so.6", Target), ("libc.so.6", "GLIBC_2.2.5")],
            needs.Select(n => (n.Library, n.Version)).ToArray());
        Assert.All(needs, n => Assert.False(n.IsWeak));
    }

    [Fact]
    public void Weakening_flips_exactly_the_one_flag_and_is_idempotent()
    {
        using var dir = new TempDirectory();
        string path = dir.File("lib.so");
        byte[] original = Build(new Need("libstdc++.so.6", "GLIBCXX_3.4.30", Target, "CXXABI_1.3"), new Need("libm.so.6", "GLIBC_2.29"));
        File.WriteAllBytes(path, original);
        var stamp = new DateTime(2024, 1, 2, 3, 4, 5, DateTimeKind.Utc);
        File.SetLastWriteTimeUtc(path, stamp);

        Assert.Equal(WeakenResult.Patched, ElfSymbolVersions.MakeVersionNeedWeak(path, Target));
        byte[] patched = File.ReadAllBytes(path);
        var target = ElfSymbolVersions.ReadVersionNeeds(path).Single(n => n.Version == Target);
        Assert.True(target.IsWeak);
        Assert.All(ElfSymbolVersions.ReadVersionNeeds(path).Where(n => n.Version != Target), n => Assert.False(n.IsWeak));
        int[] changed = Enumerable.Range(0, original.Length).Where(i => original[i] != patched[i]).ToArray();
        Assert.Equal([(int)target.FlagsOffset], changed);
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(path));
        Assert.False(File.Exists(path + ".weak-tmp"));

        Assert.Equal(WeakenResult.AlreadyWeak, ElfSymbolVersions.MakeVersionNeedWeak(path, Target));
        Assert.Equal(patched, File.ReadAllBytes(path));
    }

    [Fact]
    public void A_library_that_does_not_need_the_version_stays_byte_identical()
    {
        using var dir = new TempDirectory();
        string path = dir.File("lib.so");
        byte[] original = Build(new Need("libstdc++.so.6", "GLIBCXX_3.4.26", "GLIBCXX_3.4.30"));
        File.WriteAllBytes(path, original);
        var stamp = File.GetLastWriteTimeUtc(path).AddMinutes(-5);
        File.SetLastWriteTimeUtc(path, stamp);

        Assert.Equal(WeakenResult.NotRequired, ElfSymbolVersions.MakeVersionNeedWeak(path, Target));

        Assert.Equal(original, File.ReadAllBytes(path));
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(path));
    }

    [Theory]
    [InlineData(new byte[0], "is not an ELF file")]
    [InlineData(new byte[] { (byte)'#', (byte)'!', (byte)'/', (byte)'b', (byte)'i', (byte)'n' }, "is not an ELF file")]
    [InlineData(new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F', 2, 1 }, "is truncated")]
    public void Rejects_files_that_are_not_ELF_with_a_clear_error(byte[] content, string expected)
    {
        using var dir = new TempDirectory();
        string path = dir.File("not-a-library.so");
        File.WriteAllBytes(path, content);

        var e = Assert.Throws<ElfFormatException>(() => ElfSymbolVersions.MakeVersionNeedWeak(path, Target));

        Assert.Contains(path, e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Equal(content, File.ReadAllBytes(path));
    }

    [Fact]
    public void Rejects_a_text_file_and_a_32_bit_or_big_endian_ELF()
    {
        using var dir = new TempDirectory();
        string text = dir.File("readme.so");
        File.WriteAllText(text, "this is a text file, not a shared library\n");
        Assert.Contains("is not an ELF file", Assert.Throws<ElfFormatException>(() => ElfSymbolVersions.ReadVersionNeeds(text)).Message,
            StringComparison.Ordinal);

        byte[] elf = Build(new Need("libstdc++.so.6", Target));
        byte[] elf32 = (byte[])elf.Clone();
        elf32[4] = 1;
        Assert.Contains("not a 64-bit", Assert.Throws<ElfFormatException>(() => ElfSymbolVersions.ReadVersionNeeds(elf32, "x.so")).Message,
            StringComparison.Ordinal);
        byte[] bigEndian = (byte[])elf.Clone();
        bigEndian[5] = 2;
        Assert.Contains("not a little-endian", Assert.Throws<ElfFormatException>(() => ElfSymbolVersions.ReadVersionNeeds(bigEndian, "x.so")).Message,
            StringComparison.Ordinal);
    }

    [Fact]
    public void Every_truncation_of_a_valid_library_is_rejected_not_misread()
    {
        byte[] elf = Build(new Need("libstdc++.so.6", "GLIBCXX_3.4.30", Target));
        for (int length = 0; length < elf.Length; length++)
        {
            byte[] cut = elf[..length];
            var e = Assert.Throws<ElfFormatException>(() => ElfSymbolVersions.ReadVersionNeeds(cut, "cut.so"));
            Assert.StartsWith("'cut.so' ", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void A_missing_file_is_reported_by_name()
    {
        using var dir = new TempDirectory();
        string path = dir.File("absent.so");
        var e = Assert.Throws<FileNotFoundException>(() => ElfSymbolVersions.MakeVersionNeedWeak(path, Target));
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Real_TorchSharp_library_copy_is_patched_in_one_byte_and_the_package_stays_pristine()
    {
        using var dir = new TempDirectory();
        string package = Paths.PackageTorchSharpNative;
        byte[] pristine = File.ReadAllBytes(package);
        var packageNeed = ElfSymbolVersions.ReadVersionNeeds(package).Single(n => n.Version == Target);
        Assert.Equal("libstdc++.so.6", packageNeed.Library);
        Assert.False(packageNeed.IsWeak, "the NuGet cache copy must never be edited");

        string copy = dir.File("libLibTorchSharp.so");
        File.Copy(package, copy);
        Assert.Equal(WeakenResult.Patched, ElfSymbolVersions.MakeVersionNeedWeak(copy, Target));
        byte[] patched = File.ReadAllBytes(copy);
        int[] changed = Enumerable.Range(0, pristine.Length).Where(i => pristine[i] != patched[i]).ToArray();
        Assert.Equal([(int)packageNeed.FlagsOffset], changed);
        Assert.Equal(pristine[packageNeed.FlagsOffset] | ElfSymbolVersions.VerFlagWeak, patched[packageNeed.FlagsOffset]);
        Assert.Equal(WeakenResult.AlreadyWeak, ElfSymbolVersions.MakeVersionNeedWeak(copy, Target));
        Assert.Equal(patched, File.ReadAllBytes(copy));
    }

    [Fact]
    public void The_build_patched_the_test_output_copy_exactly_when_the_system_needs_it()
    {
        string? libstdcxx = ElfSymbolVersions.FindSystemLibStdCxx();
        Assert.NotNull(libstdcxx);
        bool systemHasIt = ElfSymbolVersions.LibraryDefinesVersion(libstdcxx, Target);
        var outputNeed = ElfSymbolVersions.ReadVersionNeeds(Paths.OutputTorchSharpNative).Single(n => n.Version == Target);

        // The build step only touches output copies, and only where the system libstdc++ lacks the version.
        Assert.Equal(!systemHasIt, outputNeed.IsWeak);
        Assert.Equal(systemHasIt ? GlibcxxFixState.NotNeeded : GlibcxxFixState.Applied,
            TorchRuntime.DiagnoseGlibcxx(Paths.OutputTorchSharpNative, libstdcxx));
    }

    [Fact]
    public void Reads_the_version_definitions_of_the_system_libstdcxx()
    {
        string? libstdcxx = ElfSymbolVersions.FindSystemLibStdCxx();
        Assert.NotNull(libstdcxx);
        var versions = ElfSymbolVersions.ReadVersionDefinitions(libstdcxx);
        Assert.Contains("GLIBCXX_3.4", versions);
        Assert.Contains("GLIBCXX_3.4.26", versions);
        Assert.Contains("CXXABI_1.3", versions);
        Assert.DoesNotContain(versions, v => v.Length == 0);
    }
}
