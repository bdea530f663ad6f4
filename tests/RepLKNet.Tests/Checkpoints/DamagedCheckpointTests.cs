using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Checkpoints;

/// <summary>
/// A generator of damaged and crafted checkpoints, made from a valid small model's <c>.pth</c>, plain safetensors and
/// project-format (safetensors + metadata) files: truncations, bit flips, missing zip entries, short storages, garbage
/// and hostile pickles, 200,000-deep nesting, huge memo indices and lying safetensors headers. Every one must end in a
/// <see cref="CheckpointException"/> from <see cref="CheckpointFile.Read"/> whose one-line message names the file, in
/// bounded memory and time, without running any code; a subset of every kind goes through the real CLI as a child
/// process (exit 1, one <c>replknet: error:</c> line naming the file, no output written), so a stack overflow or an
/// unhandled exception shows as another exit code instead of killing the test host.
/// </summary>
/// <remarks>
/// Memory: <see cref="GC.GetAllocatedBytesForCurrentThread"/> counts every managed byte the read allocates on its
/// thread (exact, unaffected by other threads); <see cref="Environment.WorkingSet"/> and the process's peak working set
/// catch native (libtorch) allocations that are touched. The peak is monotonic over the process, so a spike below an
/// earlier peak would go unseen: the managed count and the reader's own size checks are the primary guard, the
/// working-set deltas a backstop. The class runs in the serial collection so no other test moves the working set.
/// Randomness (bit flips, garbage) uses fixed seeds; every assertion message names the case.
/// </remarks>
[Collection(SerialTests.Name)]
public sealed class DamagedCheckpointTests
{
    private const long MemoryBudget = 256L << 20;

    private static readonly RepLKNetConfig Tiny = new()
    {
        LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, NumClasses = 4,
    };

    private static readonly Lazy<Sources> Originals = new(Sources.Create);

    public DamagedCheckpointTests() => Torch.EnsureLoaded();

    /// <summary>The kinds of damage; each has at least one case and at least one CLI run.</summary>
    public enum Kind
    {
        Truncation,
        BitFlip,
        MissingEntry,
        ShortStorage,
        GarbagePickle,
        HostilePickle,
        DeepNesting,
        HugeMemo,
        CraftedSafetensors,
    }

    public static TheoryData<string> CaseNames => [.. Cases.Select(c => c.Name)];

    /// <summary>One case per kind (two for the deep nesting), run through the CLI.</summary>
    public static TheoryData<string> CliCaseNames => [.. CliCases];

    private static readonly string[] CliCases =
    [
        "pth-truncated-in-data.pkl", "st-truncated-in-header-json", "pth-bitflip-data.pkl-seed1", "pth-missing-data.pkl",
        "pth-missing-version", "pth-short-storage-entry", "pkl-binunicode-claims-1.5GiB", "pkl-reduce-os.system",
        "pkl-reduce-subprocess.Popen", "pkl-200k-nested-lists", "pkl-200k-nested-tuples", "pkl-long-binget-2^31",
        "st-shape-2^62-wraps-to-0-bytes", "st-duplicate-keys", "replknet-unknown-form",
    ];

    [Fact]
    public void The_generator_makes_at_least_36_distinct_cases_covering_every_kind_from_sources_that_read_cleanly()
    {
        Assert.True(Cases.Count >= 36, $"only {Cases.Count} cases");
        Assert.Equal(Cases.Count, Cases.Select(c => c.Name).Distinct().Count());
        foreach (var kind in Enum.GetValues<Kind>())
        {
            Assert.True(Cases.Any(c => c.Kind == kind), $"no case of kind {kind}");
            Assert.True(Cases.Where(c => c.Kind == kind).Any(c => CliCases.Contains(c.Name)), $"no CLI case of kind {kind}");
        }

        var src = Originals.Value;
        using var dir = new TempDirectory();
        foreach (var (name, bytes, format) in new[]
                 {
                     ("good.pth", src.Pth, CheckpointFormat.PyTorch), ("good.safetensors", src.Plain, CheckpointFormat.Safetensors),
                     ("good-ours.safetensors", src.Ours, CheckpointFormat.RepLKNet),
                 })
        {
            string path = dir.File(name);
            File.WriteAllBytes(path, bytes);
            using var back = CheckpointFile.Read(path);
            Assert.Equal(format, back.Format);
            Assert.Equal(src.Keys.Order(), back.State.Keys.Order());
        }

        // The zip layout the truncation and bit-flip cases aim at.
        Assert.Contains(src.Zip.Entries, e => e.Name == src.Prefix + "data.pkl");
        Assert.Contains(src.Zip.Entries, e => e.Name == src.Prefix + "version");
        Assert.True(src.Zip.Entries.Count(e => e.Name.StartsWith(src.Prefix + "data/", StringComparison.Ordinal)) >= 2);
        foreach (var c in Cases)
        {
            byte[] damaged = c.Make(src, dir.File("marker"));
            Assert.False(damaged.AsSpan().SequenceEqual(src.Pth) || damaged.AsSpan().SequenceEqual(src.Plain) || damaged.AsSpan().SequenceEqual(src.Ours),
                $"{c.Name}: the generator returned an undamaged file");
        }
    }

    [Fact]
    public void A_pth_whose_crcs_are_zero_still_loads_as_torch_load_reads_it()
    {
        // torch.save writes CRC 0 under torch.serialization.set_crc32_options(False); the CRC check must skip those.
        var src = Originals.Value;
        byte[] bytes = [.. src.Pth];
        foreach (var e in src.Zip.Entries)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan((int)e.CentralRecord + 16), 0);
            long local = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan((int)e.CentralRecord + 42));
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan((int)local + 14), 0);
        }

        using var dir = new TempDirectory();
        string path = dir.File("no-crc.pth");
        File.WriteAllBytes(path, bytes);
        using var back = CheckpointFile.Read(path);
        Assert.Equal(src.Keys.Order(), back.State.Keys.Order());

        // A non-zero CRC that does not match the data is still refused.
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan((int)src.Storages[0].CentralRecord + 16), 0x12345678);
        File.WriteAllBytes(path, bytes);
        var error = Assert.Throws<CheckpointException>(() => CheckpointFile.Read(path));
        Assert.Contains("CRC-32 mismatch", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void Read_fails_with_one_line_naming_the_file_in_bounded_memory_and_runs_no_code(string name)
    {
        var c = Cases.Single(x => x.Name == name);
        using var dir = new TempDirectory();
        string marker = dir.File("pwned");
        string path = dir.File($"{name}{c.Extension}");
        File.WriteAllBytes(path, c.Make(Originals.Value, marker));
        if (c.Kind == Kind.DeepNesting)
        {
            // A stack overflow cannot be caught: prove in a child process first that the read survives, so a regression
            // fails this case instead of killing the test host.
            var probe = RunCli(dir, path);
            Assert.True(probe.ExitCode == 1, $"{name}: the CLI exited {probe.ExitCode} (crash?); stderr: {probe.StdErr}");
        }

        using var process = Process.GetCurrentProcess();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        process.Refresh();
        long peakBefore = process.PeakWorkingSet64;
        long workingBefore = Environment.WorkingSet;
        long allocated = 0;
        Exception? thrown = null;
        var read = new Thread(() =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                using var checkpoint = CheckpointFile.Read(path);
            }
            catch (Exception e)
            {
                thrown = e;
            }

            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        });
        read.Start();
        Assert.True(read.Join(TimeSpan.FromSeconds(30)), $"{name}: the read did not finish in 30 s");
        process.Refresh();
        long peakGrowth = process.PeakWorkingSet64 - peakBefore;
        long workingGrowth = Environment.WorkingSet - workingBefore;

        Assert.True(thrown is not null, $"{name}: CheckpointFile.Read accepted the damaged file");
        Assert.True(thrown is CheckpointException, $"{name}: expected a CheckpointException, got {thrown}");
        string message = thrown.Message;
        Assert.True(!message.Contains('\n', StringComparison.Ordinal) && !message.Contains('\r', StringComparison.Ordinal), $"{name}: the message has several lines: {message}");
        Assert.True(message.Contains($"'{path}'", StringComparison.Ordinal), $"{name}: the message does not name the file: {message}");
        Assert.True(message.Contains(c.Expected, StringComparison.Ordinal), $"{name}: expected '{c.Expected}' in: {message}");
        Assert.True(allocated < MemoryBudget, $"{name}: the read allocated {allocated >> 20} MiB of managed memory");
        Assert.True(peakGrowth < MemoryBudget, $"{name}: the peak working set grew by {peakGrowth >> 20} MiB");
        Assert.True(workingGrowth < MemoryBudget, $"{name}: the working set grew by {workingGrowth >> 20} MiB");
        Assert.False(File.Exists(marker), $"{name}: the pickle's payload ran (marker file exists)");
    }

    [Theory]
    [MemberData(nameof(CliCaseNames))]
    public void The_cli_exits_1_with_one_error_line_naming_the_file_and_writes_nothing(string name)
    {
        var c = Cases.Single(x => x.Name == name);
        using var dir = new TempDirectory();
        string marker = dir.File("pwned");
        string path = dir.File($"{name}{c.Extension}");
        File.WriteAllBytes(path, c.Make(Originals.Value, marker));

        var result = RunCli(dir, path);

        Assert.True(result.ExitCode == 1, $"{name}: exit code {result.ExitCode}; stderr: {result.StdErr}");
        string[] lines = result.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"{name}: expected one stderr line, got {lines.Length}: {result.StdErr}");
        Assert.True(lines[0].StartsWith("replknet: error: ", StringComparison.Ordinal), $"{name}: {lines[0]}");
        Assert.True(lines[0].Contains(Path.GetFileName(path), StringComparison.Ordinal), $"{name}: the error does not name the file: {lines[0]}");
        Assert.True(lines[0].Contains(c.Expected, StringComparison.Ordinal), $"{name}: expected '{c.Expected}' in: {lines[0]}");
        Assert.False(File.Exists(dir.File("out.safetensors")), $"{name}: an output checkpoint was written");
        Assert.True(Directory.GetFiles(dir.Path).Order().SequenceEqual(new[] { dir.File("tiny.json"), path }.Order()),
            $"{name}: unexpected files: {string.Join(", ", Directory.GetFiles(dir.Path))}");
        Assert.False(File.Exists(marker), $"{name}: the pickle's payload ran (marker file exists)");
    }

    private static CliRunner.Result RunCli(TempDirectory dir, string weights)
    {
        string config = dir.File("tiny.json");
        File.WriteAllText(config, Tiny.ToJson());
        return CliRunner.Run("reparam", "--arch", config, "--weights", weights, "--out", dir.File("out.safetensors"), "--input-size", "32");
    }

    // ---------------------------------------------------------------- the generator

    /// <summary>One damaged checkpoint: <see cref="Make"/> gets the valid sources and the path a hostile payload would create.</summary>
    private sealed record Case(string Name, Kind Kind, string Expected, Func<Sources, string, byte[]> Make, string Extension = ".pth");

    private static readonly List<Case> Cases = BuildCases();

    private static List<Case> BuildCases()
    {
        const string Unreadable = "not a readable PyTorch checkpoint";
        const string Corrupt = "is corrupt";
        var cases = new List<Case>();
        void Add(string name, Kind kind, string expected, Func<Sources, string, byte[]> make, string ext = ".pth") =>
            cases.Add(new Case(name, kind, expected, make, ext));

        // Truncation: the zip's central directory is at the end, so every cut loses it.
        Add("pth-truncated-in-local-header", Kind.Truncation, Unreadable, (s, _) => s.Pth[..12]);
        Add("pth-truncated-in-data.pkl", Kind.Truncation, Unreadable, (s, _) => s.Pth[..(int)(s.Pkl.DataStart + s.Pkl.Size / 2)]);
        Add("pth-truncated-in-first-storage", Kind.Truncation, Unreadable, (s, _) => s.Pth[..(int)(s.Storages[0].DataStart + s.Storages[0].Size / 2)]);
        Add("pth-truncated-in-last-storage", Kind.Truncation, Unreadable, (s, _) => s.Pth[..(int)(s.Storages[^1].DataStart + s.Storages[^1].Size - 1)]);
        Add("pth-truncated-in-central-directory", Kind.Truncation, Unreadable, (s, _) => s.Pth[..(int)(s.Zip.CentralDirectory + 50)]);
        Add("pth-truncated-in-end-record", Kind.Truncation, Unreadable, (s, _) => s.Pth[..^7]);
        Add("st-truncated-in-length", Kind.Truncation, "is not a checkpoint", (s, _) => s.Plain[..5], ".safetensors");
        Add("st-truncated-in-header-json", Kind.Truncation, "truncated", (s, _) => s.Plain[..(8 + s.PlainHeader / 2)], ".safetensors");
        Add("st-truncated-after-header", Kind.Truncation, "truncated", (s, _) => s.Plain[..(8 + s.PlainHeader)], ".safetensors");
        Add("st-truncated-in-data", Kind.Truncation, "truncated", (s, _) => s.Plain[..^1000], ".safetensors");
        Add("replknet-truncated-last-byte", Kind.Truncation, "truncated", (s, _) => s.Ours[..^1], ".safetensors");

        // Bit flips at seeded positions in regions where a flip must be detected: zip entry contents are CRC-32
        // protected (torch.load checks it), the zip's offsets must point at headers, and the safetensors header is
        // self-describing. (A flip in safetensors tensor data cannot be detected: the format has no checksum.)
        Add("pth-bitflip-data.pkl-seed1", Kind.BitFlip, Unreadable, (s, _) => Flip(s.Pth, s.Pkl.DataStart, s.Pkl.Size, seed: 1));
        Add("pth-bitflip-data.pkl-seed2", Kind.BitFlip, Unreadable, (s, _) => Flip(s.Pth, s.Pkl.DataStart, s.Pkl.Size, seed: 2));
        Add("pth-bitflip-storage-seed3", Kind.BitFlip, "cannot be read", (s, _) => Flip(s.Pth, s.Storages[0].DataStart, s.Storages[0].Size, seed: 3));
        Add("pth-bitflip-storage-seed4", Kind.BitFlip, "cannot be read", (s, _) => Flip(s.Pth, s.Storages[^1].DataStart, s.Storages[^1].Size, seed: 4));
        Add("pth-bitflip-local-header-offset-seed5", Kind.BitFlip, Unreadable, (s, _) => Flip(s.Pth, s.Pkl.CentralRecord + 42 + 1, 2, seed: 5));
        Add("pth-bitflip-central-directory-offset-seed6", Kind.BitFlip, Unreadable, (s, _) => Flip(s.Pth, s.Zip.EndRecord + 16, 2, seed: 6));
        Add("st-bitflip-length-seed7", Kind.BitFlip, Corrupt, (s, _) => FlipBit(s.Plain, 0, new Random(7).Next(6)), ".safetensors");
        Add("st-bitflip-dtype-seed8", Kind.BitFlip, "unsupported dtype", (s, _) =>
            Flip(s.Plain, IndexOf(s.Plain, "\"F32\"") + 1, 3, seed: 8), ".safetensors");

        // Missing zip entries.
        Add("pth-missing-data.pkl", Kind.MissingEntry, "no data.pkl", (s, _) => s.Rezip(drop: s.Prefix + "data.pkl"));
        Add("pth-missing-first-storage", Kind.MissingEntry, "which the archive does not contain", (s, _) => s.Rezip(drop: s.Storages[0].Name));
        Add("pth-missing-last-storage", Kind.MissingEntry, "which the archive does not contain", (s, _) => s.Rezip(drop: s.Storages[^1].Name));
        Add("pth-missing-version", Kind.MissingEntry, "version", (s, _) => s.Rezip(drop: s.Prefix + "version"));

        // Short storages.
        Add("pth-short-storage-entry", Kind.ShortStorage, "should hold", (s, _) =>
            s.Rezip(replace: (s.Storages[0].Name, s.Entry(s.Storages[0].Name)[..(int)(s.Storages[0].Length / 2)])));
        Add("pth-empty-storage-entry", Kind.ShortStorage, "should hold", (s, _) => s.Rezip(replace: (s.Storages[^1].Name, [])));
        Add("pth-view-past-its-storage", Kind.ShortStorage, "reads outside its storage", (_, _) =>
            WritePth(new PthFile().AddView("stem.0.conv.weight", 0, 0, [8, 3, 3, 3], [27, 9, 3, 1]), storage: new float[200]));
        Add("pth-storage-offset-past-end", Kind.ShortStorage, "reads outside its storage", (_, _) =>
            WritePth(new PthFile().AddView("w", 0, int.MaxValue, [2], [1]), storage: new float[16]));

        // Garbage pickles (data.pkl replaced; the storages stay).
        Add("pkl-random-bytes-seed9", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle(Random(9, 4096)));
        Add("pkl-proto2-then-random-seed10", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle([0x80, 0x02, .. Random(10, 4096)]));
        Add("pkl-empty", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle([]));
        Add("pkl-valid-prefix-without-stop", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle(s.Entry(s.Prefix + "data.pkl")[..^1]));
        Add("pkl-binunicode-claims-1.5GiB", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle(new Pickle().Op(0x80, 2).Op('X').U32(0x6000_0000).Ascii("abc").Bytes));
        Add("pkl-binbytes-claims-4GiB", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle(new Pickle().Op(0x80, 3).Op('B').U32(0xFFFF_FFFF).Ascii("abc").Bytes));
        Add("pkl-binunicode8-claims-2^62", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle(new Pickle().Op(0x80, 4).Op(0x8d).U64(1UL << 62).Ascii("abc").Bytes));
        Add("pkl-long4-claims-1.5GiB", Kind.GarbagePickle, Unreadable, (s, _) => s.WithPickle(new Pickle().Op(0x80, 2).Op(0x8b).U32(0x6000_0000).Ascii("abc").Bytes));
        Add("pkl-frame-claims-2^62", Kind.GarbagePickle, "not a state dict or a known checkpoint container", (s, _) => s.WithPickle(new Pickle().Op(0x80, 4).Op(0x95).U64(1UL << 62).Op('}').Op('.').Bytes));

        // Hostile pickles: a payload that would create the marker file if anything executed it.
        Add("pkl-reduce-os.system", Kind.HostilePickle, Unreadable, (s, m) => s.WithPickle(Hostile("os", "system", $"touch '{m}'")));
        Add("pkl-reduce-posix.system", Kind.HostilePickle, Unreadable, (s, m) => s.WithPickle(Hostile("posix", "system", $"touch '{m}'")));
        Add("pkl-reduce-builtins.eval", Kind.HostilePickle, Unreadable, (s, m) => s.WithPickle(Hostile("builtins", "eval", $"open('{m}', 'w').write('x')")));
        Add("pkl-reduce-subprocess.Popen", Kind.HostilePickle, Unreadable, (s, m) => s.WithPickle(new Pickle().Op(0x80, 2)
            .Global("subprocess", "Popen").Op(']').Op('(').Unicode("touch").Unicode(m).Op('e').Op(0x85).Op('R').Op('.').Bytes));
        Add("pkl-stack-global-os.system", Kind.HostilePickle, Unreadable, (s, m) => s.WithPickle(new Pickle().Op(0x80, 4)
            .Op(0x8c).Short("os").Op(0x8c).Short("system").Op(0x93).Unicode($"touch '{m}'").Op(0x85).Op('R').Op('.').Bytes));
        Add("pkl-inst-os.system", Kind.HostilePickle, "holds a ClassDict", (s, m) => s.WithPickle(new Pickle().Op(0x80, 2)
            .Op('(').Unicode($"touch '{m}'").Op('i').Ascii("os\nsystem\n").Op('.').Bytes));
        Add("pkl-os.system-without-arguments-in-a-dict", Kind.HostilePickle, "not a state dict or a known checkpoint container", (s, m) => s.WithPickle(new Pickle()
            .Op(0x80, 2).Op('}').Unicode("model").Global("os", "system").Op(')').Op('R').Op('s').Op('.').Bytes));

        // 200,000-deep nesting: the unpickler must not recurse per level.
        const int Deep = 200_000;
        Add("pkl-200k-nested-lists", Kind.DeepNesting, "holds a ArrayList", (s, _) => s.WithPickle(new Pickle().Op(0x80, 2)
            .Repeat(']', Deep).Repeat('a', Deep - 1).Op('.').Bytes));
        Add("pkl-200k-nested-tuples", Kind.DeepNesting, "holds a Object[]", (s, _) => s.WithPickle(new Pickle().Op(0x80, 2)
            .Repeat('(', Deep).Op(')').Repeat('t', Deep).Op('.').Bytes));
        Add("pkl-200k-nested-dicts-under-model", Kind.DeepNesting, "holds no tensors", (s, _) =>
        {
            var p = new Pickle().Op(0x80, 2).Op('}').Unicode("model");
            for (int i = 0; i < Deep; i++)
            {
                p.Op('}').Unicode("x");
            }

            return s.WithPickle(p.Op('}').Repeat('s', Deep + 1).Op('.').Bytes);
        });
        Add("st-200k-nested-json", Kind.DeepNesting, Corrupt, (_, _) => Safetensors(
            Encoding.ASCII.GetBytes("{\"a\":" + new string('[', Deep) + new string(']', Deep) + "}"), []), ".safetensors");

        // Huge memo indices: the memo must be sparse, never sized by an index.
        Add("pkl-long-binput-2^31-then-binget-missing", Kind.HugeMemo, Unreadable, (s, _) => s.WithPickle(new Pickle().Op(0x80, 2)
            .Op('}').Op('r').U32(0x7FFF_FFFF).Op('j').U32(0x7FFF_FFFE).Op('.').Bytes));
        Add("pkl-long-binget-2^31", Kind.HugeMemo, Unreadable, (s, _) => s.WithPickle(new Pickle().Op(0x80, 2)
            .Op('}').Op('0').Op('j').U32(0x8000_0000).Op('.').Bytes));
        Add("pkl-long-binput-4G-state-dict", Kind.HugeMemo, "not a state dict or a known checkpoint container", (s, _) => s.WithPickle(new Pickle().Op(0x80, 2)
            .Op('}').Op('r').U32(0xFFFF_FFFF).Op('j').U32(0xFFFF_FFFF).Op('0').Op('.').Bytes));

        // Crafted safetensors (plain, and the project's format with metadata).
        string st = ".safetensors";
        Add("st-header-length-2^40", Kind.CraftedSafetensors, "is not a checkpoint", (s, _) => WithLength(s.Plain, 1UL << 40), st);
        Add("st-header-length-file-plus-one", Kind.CraftedSafetensors, "truncated", (s, _) => WithLength(s.Plain, (ulong)(s.Plain.Length - 8 + 1)), st);
        Add("st-shape-2^31x2^31", Kind.CraftedSafetensors, Corrupt, (_, _) => Tensor("F32", "[2147483648, 2147483648]", 0, 16, 16), st);
        Add("st-shape-2^62-wraps-to-0-bytes", Kind.CraftedSafetensors, Corrupt, (_, _) => Tensor("F32", "[4611686018427387904]", 0, 0, 0), st);
        Add("st-shape-numel-overflows", Kind.CraftedSafetensors, Corrupt, (_, _) => Tensor("F32", "[2147483648, 2147483648, 2147483648]", 0, 16, 16), st);
        Add("st-shape-negative", Kind.CraftedSafetensors, Corrupt, (_, _) => Tensor("F32", "[-4]", 0, 16, 16), st);
        Add("st-offsets-past-end", Kind.CraftedSafetensors, "truncated", (_, _) => Tensor("F32", "[1048576]", 0, 4 << 20, 16), st);
        Add("st-offsets-end-before-begin", Kind.CraftedSafetensors, Corrupt, (_, _) => Tensor("F32", "[4]", 16, 0, 16), st);
        Add("st-offsets-overlapping", Kind.CraftedSafetensors, Corrupt, (_, _) => Safetensors(Encoding.ASCII.GetBytes(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}"), new byte[24]), st);
        Add("st-dtype-mismatches-length", Kind.CraftedSafetensors, Corrupt, (_, _) => Tensor("F64", "[4]", 0, 16, 16), st);
        Add("st-header-not-json", Kind.CraftedSafetensors, Corrupt, (_, _) => Safetensors("{this is not json at all}"u8.ToArray(), new byte[16]), st);
        Add("st-header-invalid-utf8", Kind.CraftedSafetensors, Corrupt, (_, _) => Safetensors([(byte)'{', (byte)'"', 0xff, 0xfe, (byte)'"', (byte)':', (byte)'1', (byte)'}'], new byte[16]), st);
        Add("st-duplicate-keys", Kind.CraftedSafetensors, Corrupt, (_, _) => Safetensors(Encoding.ASCII.GetBytes(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}"), new byte[32]), st);
        Add("st-trailing-bytes-after-data", Kind.CraftedSafetensors, Corrupt, (s, _) => [.. s.Plain, .. new byte[64]], st);
        Add("replknet-damaged-config", Kind.CraftedSafetensors, "damaged RepLKNet metadata", (s, _) =>
            ReplaceInHeader(s.Ours, "\"config\":\"{", "\"config\":\"[{"), st);
        Add("replknet-unknown-form", Kind.CraftedSafetensors, "damaged RepLKNet metadata", (s, _) => ReplaceInHeader(s.Ours, "\"form\":\"train\"", "\"form\":\"bogus\""), st);
        return cases;
    }

    private static byte[] Hostile(string module, string name, string argument) =>
        new Pickle().Op(0x80, 2).Global(module, name).Unicode(argument).Op(0x85).Op('R').Op('.').Bytes;

    /// <summary>
    /// Flips one seeded bit in [start, start + length − 1): the last byte of a deflated entry is left alone, since its
    /// padding bits after the end-of-block code carry nothing and a flip there is harmless.
    /// </summary>
    private static byte[] Flip(byte[] data, long start, long length, int seed)
    {
        length = Math.Max(length - 1, 1);
        var random = new Random(seed);
        return FlipBit(data, start + random.NextInt64(length), random.Next(8));
    }

    private static byte[] FlipBit(byte[] data, long position, int bit)
    {
        byte[] copy = [.. data];
        copy[position] ^= (byte)(1 << bit);
        return copy;
    }

    private static byte[] Random(int seed, int n)
    {
        var bytes = new byte[n];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static int IndexOf(byte[] data, string text)
    {
        int i = data.AsSpan().IndexOf(Encoding.ASCII.GetBytes(text));
        Assert.True(i >= 0, $"'{text}' not in the source");
        return i;
    }

    private static byte[] WithLength(byte[] data, ulong length)
    {
        byte[] copy = [.. data];
        BinaryPrimitives.WriteUInt64LittleEndian(copy, length);
        return copy;
    }

    private static byte[] Safetensors(byte[] header, byte[] data)
    {
        byte[] file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)header.Length);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Length);
        return file;
    }

    private static byte[] Tensor(string dtype, string shape, long begin, long end, int dataBytes) => Safetensors(Encoding.ASCII.GetBytes(
        $"{{\"w\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{begin},{end}]}}}}"), new byte[dataBytes]);

    private static byte[] ReplaceInHeader(byte[] file, string from, string to)
    {
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(file);
        string header = Encoding.UTF8.GetString(file, 8, headerLength);
        Assert.Contains(from, header, StringComparison.Ordinal);
        return Safetensors(Encoding.UTF8.GetBytes(header.Replace(from, to, StringComparison.Ordinal)), file[(8 + headerLength)..]);
    }

    private static byte[] WritePth(PthFile pth, float[] storage)
    {
        Assert.Equal(0, pth.AddStorage(storage));
        string path = Path.Combine(Path.GetTempPath(), $"replknet-damaged-{Guid.NewGuid():N}.pth");
        try
        {
            pth.Write(path);
            return File.ReadAllBytes(path);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A pickle written opcode by opcode.</summary>
    private sealed class Pickle
    {
        private readonly List<byte> _s = [];

        public byte[] Bytes => [.. _s];

        public Pickle Op(int opcode, params byte[] args)
        {
            _s.Add((byte)opcode);
            _s.AddRange(args);
            return this;
        }

        public Pickle Repeat(char opcode, int count)
        {
            for (int i = 0; i < count; i++)
            {
                _s.Add((byte)opcode);
            }

            return this;
        }

        public Pickle U32(uint value)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, value);
            _s.AddRange(b);
            return this;
        }

        public Pickle U64(ulong value)
        {
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(b, value);
            _s.AddRange(b);
            return this;
        }

        public Pickle Ascii(string text)
        {
            _s.AddRange(Encoding.ASCII.GetBytes(text));
            return this;
        }

        public Pickle Unicode(string text)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(text);
            Op('X').U32((uint)bytes.Length);
            _s.AddRange(bytes);
            return this;
        }

        public Pickle Short(string text) => Op((byte)text.Length, Encoding.ASCII.GetBytes(text));

        public Pickle Global(string module, string name) => Op('c').Ascii($"{module}\n{name}\n");
    }

    /// <summary>Where an entry lies in a zip: its central-directory record, its (compressed) data and its uncompressed length.</summary>
    private sealed record ZipEntryLayout(string Name, long CentralRecord, long DataStart, long Size, long Length);

    private sealed record ZipLayout(List<ZipEntryLayout> Entries, long CentralDirectory, long EndRecord)
    {
        /// <summary>Reads the layout from the end record and the central directory (no zip64: the sources are small).</summary>
        public static ZipLayout Parse(byte[] zip)
        {
            int end = zip.AsSpan().LastIndexOf(new byte[] { 0x50, 0x4b, 0x05, 0x06 });
            Assert.True(end >= 0, "no zip end record");
            int count = BinaryPrimitives.ReadUInt16LittleEndian(zip.AsSpan(end + 10));
            long directory = BinaryPrimitives.ReadUInt32LittleEndian(zip.AsSpan(end + 16));
            var entries = new List<ZipEntryLayout>();
            long at = directory;
            for (int i = 0; i < count; i++)
            {
                var r = zip.AsSpan((int)at);
                Assert.Equal(0x02014b50u, BinaryPrimitives.ReadUInt32LittleEndian(r));
                long size = BinaryPrimitives.ReadUInt32LittleEndian(r[20..]);
                long length = BinaryPrimitives.ReadUInt32LittleEndian(r[24..]);
                int nameLength = BinaryPrimitives.ReadUInt16LittleEndian(r[28..]);
                int extra = BinaryPrimitives.ReadUInt16LittleEndian(r[30..]);
                int comment = BinaryPrimitives.ReadUInt16LittleEndian(r[32..]);
                long local = BinaryPrimitives.ReadUInt32LittleEndian(r[42..]);
                string name = Encoding.UTF8.GetString(r.Slice(46, nameLength));
                var l = zip.AsSpan((int)local);
                long data = local + 30 + BinaryPrimitives.ReadUInt16LittleEndian(l[26..]) + BinaryPrimitives.ReadUInt16LittleEndian(l[28..]);
                entries.Add(new ZipEntryLayout(name, at, data, size, length));
                at += 46 + nameLength + extra + comment;
            }

            return new ZipLayout(entries, directory, end);
        }
    }

    /// <summary>The valid files every case starts from, and where their parts lie.</summary>
    private sealed record Sources(byte[] Pth, byte[] Plain, byte[] Ours, ZipLayout Zip, string Prefix, List<string> Keys)
    {
        public int PlainHeader => (int)BinaryPrimitives.ReadUInt64LittleEndian(Plain);

        public ZipEntryLayout Pkl => Zip.Entries.Single(e => e.Name == Prefix + "data.pkl");

        /// <summary>Storage entries in archive order, non-empty only.</summary>
        public List<ZipEntryLayout> Storages => [.. Zip.Entries.Where(e => e.Name.StartsWith(Prefix + "data/", StringComparison.Ordinal) && e.Length > 8)];

        public static Sources Create()
        {
            Torch.EnsureLoaded();
            string dir = Path.Combine(Path.GetTempPath(), $"replknet-damaged-{Guid.NewGuid():N}");
            Directory.CreateDirectory(dir);
            try
            {
                using var scope = NewDisposeScope();
                var model = new RepLKNetModel(Tiny);
                var state = StateDicts.Ordered(model);
                var generator = new Generator(42);
                using (no_grad())
                {
                    // Every value from a fixed seed: the files, their compressed sizes and so every flip position reproduce.
                    foreach (var (_, tensor) in state.Where(kv => kv.Value.is_floating_point()))
                    {
                        tensor.copy_(randn(tensor.shape, generator: generator));
                    }
                }

                string pth = Path.Combine(dir, "a.pth"), plain = Path.Combine(dir, "b.safetensors"), ours = Path.Combine(dir, "c.safetensors");
                CheckpointFile.WritePyTorch(pth, state);
                SafetensorsFile.Write(plain, state, metadata: null);
                CheckpointFile.WriteRepLKNet(ours, state, new CheckpointMetadata("tiny", Tiny, ModelForm.Train, ["a", "b", "c", "d"]));
                byte[] bytes = File.ReadAllBytes(pth);
                var zip = ZipLayout.Parse(bytes);
                string pkl = zip.Entries.Select(e => e.Name).Single(n => n.EndsWith("/data.pkl", StringComparison.Ordinal));
                return new Sources(bytes, File.ReadAllBytes(plain), File.ReadAllBytes(ours), zip, pkl[..^"data.pkl".Length], [.. state.Select(kv => kv.Key)]);
            }
            finally
            {
                Directory.Delete(dir, recursive: true);
            }
        }

        public byte[] Entry(string name)
        {
            var e = Zip.Entries.Single(x => x.Name == name);
            using var zip = new ZipArchive(new MemoryStream(Pth), ZipArchiveMode.Read);
            using var s = zip.GetEntry(name)!.Open();
            using var copy = new MemoryStream();
            s.CopyTo(copy);
            Assert.Equal(e.Length, copy.Length);
            return copy.ToArray();
        }

        /// <summary>The archive rewritten (stored, valid CRCs) without <paramref name="drop"/> and with <paramref name="replace"/>.</summary>
        public byte[] Rezip(string? drop = null, (string Name, byte[] Data)? replace = null)
        {
            Assert.True(drop is null || Zip.Entries.Any(e => e.Name == drop), $"no entry {drop}");
            using var output = new MemoryStream();
            using (var target = new ZipArchive(output, ZipArchiveMode.Create, leaveOpen: true))
            {
                foreach (var e in Zip.Entries.Where(e => e.Name != drop))
                {
                    using var s = target.CreateEntry(e.Name, CompressionLevel.NoCompression).Open();
                    s.Write(replace is { } r && r.Name == e.Name ? r.Data : Entry(e.Name));
                }
            }

            return output.ToArray();
        }

        public byte[] WithPickle(byte[] pickle) => Rezip(replace: (Prefix + "data.pkl", pickle));
    }
}
