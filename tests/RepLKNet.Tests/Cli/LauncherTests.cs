using System.Diagnostics;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

/// <summary>
/// The <c>./replknet</c> launcher when several start at once (as <c>mpiexec -n N ./replknet …</c> starts them): a copy of
/// the script in a scratch repository, with a stand-in <c>dotnet</c> on PATH that records every build and run and writes
/// to both streams.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class LauncherTests
{
    // A scratch repository holding a copy of the launcher, and a stand-in "dotnet" on bin/: "dotnet build … -o OUT" takes a
    // second and writes OUT/replknet.dll; "dotnet DLL args" records "run <third argument> preload=<LD_PRELOAD>" and writes
    // to both streams.
    private static (string Repo, string Bin, string Log) Scratch(TempDirectory dir)
    {
        string repo = dir.File("repo");
        Directory.CreateDirectory(Path.Combine(repo, "src", "RepLKNet.Cli"));
        File.Copy(Path.Combine(Paths.RepositoryRoot(), "replknet"), Path.Combine(repo, "replknet"));
        foreach (var f in new[] { "global.json", "Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props" })
        {
            File.WriteAllText(Path.Combine(repo, f), "{}");
        }

        File.WriteAllText(Path.Combine(repo, "src", "RepLKNet.Cli", "Program.cs"), "// source");
        string bin = dir.File("bin");
        Directory.CreateDirectory(bin);
        string log = dir.File("calls.log");
        File.WriteAllText(Path.Combine(bin, "dotnet"), $$"""
            #!/usr/bin/env bash
            if [ "$1" = build ]; then
              echo "build $$" >> '{{log}}'
              sleep 1
              while [ $# -gt 0 ]; do if [ "$1" = -o ]; then mkdir -p "$2"; echo dll > "$2/replknet.dll"; fi; shift; done
              exit 0
            fi
            [ -f "$1" ] || { echo "run without $1" >> '{{log}}'; exit 3; }
            echo "run $3 preload=${LD_PRELOAD:-}" >> '{{log}}'
            echo "stdout of $3"
            echo "stderr of $3" >&2
            """.Replace("\r", "", StringComparison.Ordinal));
        File.SetUnixFileMode(Path.Combine(bin, "dotnet"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return (repo, bin, log);
    }

    private static Process Launch(string repo, string bin, IReadOnlyDictionary<string, string?> environment, params string[] args)
    {
        var start = new ProcessStartInfo("bash") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(repo, "replknet"));
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["PATH"] = bin + ":" + Environment.GetEnvironmentVariable("PATH");
        foreach (var name in new[] { "LD_PRELOAD", "REPLKNET_MALLOC", "REPLKNET_TCMALLOC" })
        {
            start.Environment.Remove(name);
        }

        foreach (var (k, v) in environment)
        {
            start.Environment[k] = v;
        }

        return Process.Start(start)!;
    }

    private static (int Exit, string Out, string Err) Finish(Process p)
    {
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(60_000), "a launcher did not finish");
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public async Task Launchers_started_together_build_the_cli_once_and_all_run_it()
    {
        using var dir = new TempDirectory();
        var (repo, bin, log) = Scratch(dir);

        // REPLKNET_MALLOC=default: no allocator is looked for (the machine may or may not have tcmalloc).
        var launchers = Enumerable.Range(0, 4)
            .Select(i => Launch(repo, bin, new Dictionary<string, string?> { ["REPLKNET_MALLOC"] = "default" }, "info", $"rank{i}")).ToList();
        for (int i = 0; i < launchers.Count; i++)
        {
            var p = launchers[i];
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            Assert.True(p.WaitForExit(60_000), "a launcher did not finish");
            string errors = await stderr;
            Assert.True(p.ExitCode == 0, errors);
            // The program's own output passes through the launcher (its error lines above all).
            Assert.Contains($"stdout of rank{i}", await stdout, StringComparison.Ordinal);
            Assert.Contains($"stderr of rank{i}", errors, StringComparison.Ordinal);
        }

        var calls = File.ReadAllLines(log);
        Assert.Single(calls, c => c.StartsWith("build", StringComparison.Ordinal));
        Assert.Equal(["run rank0 preload=", "run rank1 preload=", "run rank2 preload=", "run rank3 preload="],
            calls.Where(c => c.StartsWith("run", StringComparison.Ordinal)).Order());
        Assert.DoesNotContain(calls, c => c.StartsWith("run without", StringComparison.Ordinal));
    }

    [Fact]
    public void The_launcher_preloads_tcmalloc_ahead_of_an_existing_preload_and_glibc_turns_it_off()
    {
        using var dir = new TempDirectory();
        var (repo, bin, log) = Scratch(dir);
        // Stand-ins for the libraries (the loader skips a file it cannot preload, with a warning, and runs the program).
        string tcmalloc = dir.File("libtcmalloc_minimal.so.4");
        string other = dir.File("libother.so");
        File.WriteAllText(tcmalloc, "");
        File.WriteAllText(other, "");

        var (exit, _, err) = Finish(Launch(repo, bin, new Dictionary<string, string?> { ["REPLKNET_TCMALLOC"] = tcmalloc, ["LD_PRELOAD"] = other }, "info", "tc"));
        Assert.True(exit == 0, err);
        (exit, _, err) = Finish(Launch(repo, bin, new Dictionary<string, string?> { ["REPLKNET_TCMALLOC"] = tcmalloc, ["REPLKNET_MALLOC"] = "glibc" }, "info", "glibc"));
        Assert.True(exit == 0, err);
        (exit, _, err) = Finish(Launch(repo, bin, new Dictionary<string, string?> { ["REPLKNET_TCMALLOC"] = tcmalloc, ["REPLKNET_MALLOC"] = "default", ["LD_PRELOAD"] = other }, "info", "default"));
        Assert.True(exit == 0, err);

        var runs = File.ReadAllLines(log).Where(c => c.StartsWith("run", StringComparison.Ordinal)).ToList();
        Assert.Equal([$"run tc preload={tcmalloc}:{other}", "run glibc preload=", $"run default preload={other}"], runs);
    }

    [Theory]
    [InlineData("REPLKNET_MALLOC", "jemalloc", "REPLKNET_MALLOC='jemalloc' is not an allocator: use tcmalloc (the default), glibc or default")]
    [InlineData("REPLKNET_TCMALLOC", "/no/such/libtcmalloc.so", "REPLKNET_TCMALLOC='/no/such/libtcmalloc.so': no such file")]
    public void A_bad_allocator_setting_exits_2_with_one_line_and_runs_nothing(string variable, string value, string message)
    {
        using var dir = new TempDirectory();
        var (repo, bin, log) = Scratch(dir);

        var (exit, output, err) = Finish(Launch(repo, bin, new Dictionary<string, string?> { [variable] = value }, "info", "x"));

        Assert.Equal(2, exit);
        Assert.Empty(output);
        var line = Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("replknet: " + message, line, StringComparison.Ordinal);
        Assert.False(File.Exists(log), "the launcher built or ran something: " + (File.Exists(log) ? File.ReadAllText(log) : ""));
    }
}
