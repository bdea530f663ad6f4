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

    // A loadable stand-in for a library: a copy of glibc's small libdl under the given name (the loader preloads it
    // without a word, so the launcher's check accepts it).
    private static readonly string[] Libdl = ["/lib/x86_64-linux-gnu/libdl.so.2", "/usr/lib/x86_64-linux-gnu/libdl.so.2", "/lib64/libdl.so.2"];

    private static string StandIn(TempDirectory dir, string name)
    {
        string file = dir.File(name);
        File.Copy(Libdl.First(File.Exists), file);
        return file;
    }

    [Fact]
    public void The_launcher_preloads_tcmalloc_ahead_of_an_existing_preload_and_glibc_turns_it_off()
    {
        using var dir = new TempDirectory();
        var (repo, bin, log) = Scratch(dir);
        string tcmalloc = StandIn(dir, "libtcmalloc_minimal.so.4");
        string other = StandIn(dir, "libother.so");
        string jemalloc = StandIn(dir, "libjemalloc.so.2");

        void Run(string tag, Dictionary<string, string?> environment)
        {
            environment["REPLKNET_TCMALLOC"] = tcmalloc;
            var (exit, _, err) = Finish(Launch(repo, bin, environment, "info", tag));
            Assert.True(exit == 0, err);
        }

        Run("tc", new() { ["LD_PRELOAD"] = other });
        Run("glibc", new() { ["REPLKNET_MALLOC"] = "glibc" });
        Run("default", new() { ["REPLKNET_MALLOC"] = "default", ["LD_PRELOAD"] = other });
        // An allocator the caller preloads keeps its place; glibc drops a tcmalloc inherited from a parent.
        Run("theirs", new() { ["LD_PRELOAD"] = jemalloc });
        Run("inherited", new() { ["REPLKNET_MALLOC"] = "glibc", ["LD_PRELOAD"] = tcmalloc + ":" + other });

        var runs = File.ReadAllLines(log).Where(c => c.StartsWith("run", StringComparison.Ordinal)).ToList();
        Assert.Equal([$"run tc preload={tcmalloc}:{other}", "run glibc preload=", $"run default preload={other}", $"run theirs preload={jemalloc}",
            $"run inherited preload={other}"], runs);
    }

    [Fact]
    public void A_bad_allocator_setting_exits_2_with_one_line_and_builds_and_runs_nothing()
    {
        using var dir = new TempDirectory();
        string folder = dir.File("a folder");
        Directory.CreateDirectory(folder);
        string spaced = dir.File("lib tcmalloc.so");
        File.WriteAllText(spaced, "");
        string text = dir.File("not-a-library.so");
        File.WriteAllText(text, "not ELF");
        string broken = dir.File("libtcmalloc_minimal.so.4");
        File.WriteAllText(broken, "not ELF");
        (string Variable, string Value, string Message)[] cases =
        [
            ("REPLKNET_MALLOC", "jemalloc", "REPLKNET_MALLOC=jemalloc is not an allocator: use tcmalloc (the default), glibc or default"),
            ("REPLKNET_MALLOC", "GLIBC", "REPLKNET_MALLOC=GLIBC is not an allocator"),
            ("REPLKNET_MALLOC", " glibc", "is not an allocator"),
            ("REPLKNET_TCMALLOC", "/no/such/libtcmalloc.so", "REPLKNET_TCMALLOC=/no/such/libtcmalloc.so: no such file"),
            ("REPLKNET_TCMALLOC", dir.Path, ": not a regular file"),
            ("REPLKNET_TCMALLOC", spaced, ": contains a space or a colon"),
            ("REPLKNET_TCMALLOC", text, ": not a tcmalloc library (its name must start with libtcmalloc)"),
            ("REPLKNET_TCMALLOC", broken, ": the dynamic loader cannot preload it"),
        ];
        foreach (var (variable, value, message) in cases)
        {
            using var scratch = new TempDirectory();
            var (repo, bin, log) = Scratch(scratch);

            var (exit, output, err) = Finish(Launch(repo, bin, new Dictionary<string, string?> { [variable] = value }, "info", "x"));

            Assert.True(exit == 2, $"{variable}='{value}': exit {exit}, {err}");
            Assert.Empty(output);
            var line = Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.StartsWith("replknet: ", line, StringComparison.Ordinal);
            Assert.Contains(message, line, StringComparison.Ordinal);
            Assert.False(File.Exists(log), "the launcher built or ran something: " + (File.Exists(log) ? File.ReadAllText(log) : ""));
        }
    }
}
