using System.Diagnostics;

namespace RepLKNet.Tests.Support;

/// <summary>Runs the real <c>replknet</c> CLI (the assembly built beside the tests) as a child process.</summary>
internal static class CliRunner
{
    public sealed record Result(int ExitCode, string StdOut, string StdErr);

    public static Result Run(params string[] args) => Run(new Dictionary<string, string?>(), args);

    /// <summary>Starts the CLI without waiting (output drained and discarded), for tests that stop it themselves.</summary>
    public static Process Start(params string[] args)
    {
        var process = Process.Start(StartInfo(new Dictionary<string, string?>(), args)) ?? throw new InvalidOperationException("could not start the CLI");
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>Starts the CLI without waiting, collecting its output into <paramref name="stdout"/> and <paramref name="stderr"/>.</summary>
    public static Process StartCapturing(System.Text.StringBuilder stdout, System.Text.StringBuilder stderr, params string[] args)
    {
        var process = Process.Start(StartInfo(new Dictionary<string, string?>(), args)) ?? throw new InvalidOperationException("could not start the CLI");
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

    public static Result Run(IReadOnlyDictionary<string, string?> environment, params string[] args)
    {
        var start = StartInfo(environment, args);
        string dotnet = start.FileName;
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {dotnet}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"replknet {string.Join(' ', args)} did not finish in 3 minutes");
        }

        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }

    private static ProcessStartInfo StartInfo(IReadOnlyDictionary<string, string?> environment, string[] args)
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        var start = new ProcessStartInfo(dotnet)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Paths.CliAssembly);
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        // The child must not inherit a CUDA libtorch from the developer's shell unless a test asks for one.
        start.Environment.Remove("REPLKNET_LIBTORCH");
        foreach (var (key, value) in environment)
        {
            if (value is null)
            {
                start.Environment.Remove(key);
            }
            else
            {
                start.Environment[key] = value;
            }
        }

        return start;
    }
}
