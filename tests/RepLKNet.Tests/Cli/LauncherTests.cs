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
    [Fact]
    public async Task Launchers_started_together_build_the_cli_once_and_all_run_it()
    {
        using var dir = new TempDirectory();
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
        // The stand-in: "dotnet build … -o OUT" takes a second and writes OUT/replknet.dll; "dotnet DLL args" records the run.
        File.WriteAllText(Path.Combine(bin, "dotnet"), $$"""
            #!/usr/bin/env bash
            if [ "$1" = build ]; then
              echo "build $$" >> '{{log}}'
              sleep 1
              while [ $# -gt 0 ]; do if [ "$1" = -o ]; then mkdir -p "$2"; echo dll > "$2/replknet.dll"; fi; shift; done
              exit 0
            fi
            [ -f "$1" ] || { echo "run without $1" >> '{{log}}'; exit 3; }
            echo "run $3" >> '{{log}}'
            echo "stdout of $3"
            echo "stderr of $3" >&2
            """.Replace("\r", "", StringComparison.Ordinal));
        File.SetUnixFileMode(Path.Combine(bin, "dotnet"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);

        var launchers = Enumerable.Range(0, 4).Select(i =>
        {
            var start = new ProcessStartInfo("bash") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            start.ArgumentList.Add(Path.Combine(repo, "replknet"));
            start.ArgumentList.Add("info");
            start.ArgumentList.Add($"rank{i}");
            start.Environment["PATH"] = bin + ":" + Environment.GetEnvironmentVariable("PATH");
            return Process.Start(start)!;
        }).ToList();
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
        Assert.Equal(["run rank0", "run rank1", "run rank2", "run rank3"], calls.Where(c => c.StartsWith("run", StringComparison.Ordinal)).Order());
        Assert.DoesNotContain(calls, c => c.StartsWith("run without", StringComparison.Ordinal));
    }
}
