using System.Diagnostics;
using System.Text;

namespace RepLKNet.Tests.Support;

/// <summary>A fact that runs jobs under MPICH's <c>mpiexec.mpich</c> (CI installs Debian's <c>mpich</c>; skipped elsewhere with the reason).</summary>
public sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute()
    {
        if (MpiRunner.Mpiexec is null)
        {
            Skip = "MPICH's mpiexec.mpich is not installed (Debian: apt install mpich)";
        }
    }
}

/// <summary>Runs the real <c>replknet</c> CLI as an N-process job under <c>mpiexec.mpich</c>.</summary>
internal static class MpiRunner
{
    /// <summary>The launcher, or null when MPICH is not installed.</summary>
    public static string? Mpiexec { get; } = new[] { "/usr/bin/mpiexec.mpich", "/usr/local/bin/mpiexec.mpich" }.FirstOrDefault(File.Exists);

    /// <summary>Runs <c>mpiexec.mpich -n <paramref name="ranks"/> dotnet replknet.dll args</c> to its end (at most 4 minutes).</summary>
    public static CliRunner.Result Run(int ranks, params string[] args)
    {
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var job = Start(ranks, stdout, stderr, args);
        if (!job.WaitForExit(TimeSpan.FromMinutes(4)))
        {
            job.Kill(entireProcessTree: true);
            throw new TimeoutException($"mpiexec -n {ranks} replknet {string.Join(' ', args)} did not finish in 4 minutes:\n{stderr}");
        }

        job.WaitForExit();
        return new CliRunner.Result(job.ExitCode, Text(stdout), Text(stderr));
    }

    /// <summary>Starts the job without waiting, collecting its output.</summary>
    public static Process Start(int ranks, StringBuilder stdout, StringBuilder stderr, params string[] args)
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        var start = new ProcessStartInfo(Mpiexec ?? throw new InvalidOperationException("mpiexec.mpich is not installed"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in (string[])["-n", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture), dotnet, Paths.CliAssembly, .. args])
        {
            start.ArgumentList.Add(a);
        }

        start.Environment.Remove("REPLKNET_LIBTORCH");
        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start mpiexec");
        process.OutputDataReceived += (_, e) =>
        {
            lock (stdout)
            {
                stdout.AppendLine(e.Data);
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>The process id of rank <paramref name="rank"/> of the job whose arguments contain <paramref name="marker"/> (its PMI_RANK), or null.</summary>
    public static int? RankProcess(int rank, string marker)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
            {
                continue;
            }

            try
            {
                string cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                if (!cmdline.Contains("replknet.dll", StringComparison.Ordinal) || !cmdline.Contains(marker, StringComparison.Ordinal))
                {
                    continue;
                }

                var environ = File.ReadAllText(Path.Combine(dir, "environ")).Split('\0');
                if (environ.Contains($"PMI_RANK={rank}"))
                {
                    return pid;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // the process ended meanwhile
            }
        }

        return null;
    }

    private static string Text(StringBuilder b)
    {
        lock (b)
        {
            return b.ToString();
        }
    }
}
