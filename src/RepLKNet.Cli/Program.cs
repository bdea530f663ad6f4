using Spectre.Console;

namespace RepLKNet.Cli;

/// <summary>Entry point of the <c>replknet</c> tool.</summary>
internal static class Program
{
    private static int Main(string[] args)
    {
        var console = AnsiConsole.Console;
        if (Console.IsOutputRedirected)
        {
            // Spectre assumes 80 columns when output goes to a file or pipe; wrapped paths are hard to read and grep.
            console.Profile.Width = Math.Max(console.Profile.Width, 200);
        }

        return ReplknetApp.Run(args, console, Console.Error);
    }
}
