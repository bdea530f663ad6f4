using System.Xml.Linq;
using RepLKNet.Cli;
using RepLKNet.Tests.Support;
using Spectre.Console;

namespace RepLKNet.Tests.Cli;

public sealed class HelpAndMarkupTests
{
    [Fact]
    public void Every_registered_command_and_branch_renders_its_help()
    {
        // The command tree comes from the app itself (Spectre's built-in 'cli xmldoc' dump of the configured model),
        // so a command added later is covered without editing this test.
        var (code, model, error) = RunInProcess("cli", "xmldoc");
        Assert.True(code == 0, error);
        var commands = XDocument.Parse(model).Descendants("Command")
            .Select(c => c.AncestorsAndSelf("Command").Reverse().Select(a => (string)a.Attribute("Name")!).ToArray())
            .ToList();
        Assert.Contains(commands, c => c.SequenceEqual(["describe"]));
        Assert.Contains(commands, c => c.SequenceEqual(["experiment", "train"]));
        Assert.True(commands.Count >= 20, $"only {commands.Count} commands in the model");

        var failures = new List<string>();
        foreach (var path in commands.Prepend([]))
        {
            var (exit, stdout, stderr) = RunInProcess([.. path, "--help"]);
            string name = string.Join(' ', path);
            if (exit != 0 || !stdout.Contains("USAGE:", StringComparison.Ordinal) || stderr.Length > 0)
            {
                failures.Add($"'replknet {name} --help' exited {exit}: {stderr.Trim()}");
            }
        }

        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));
    }

    [Fact]
    public void File_names_with_markup_characters_come_out_literally()
    {
        using var dir = new TempDirectory();
        string json = dir.File($"dw [red]{Guid.NewGuid():N}[ [/].json");
        var result = CliRunner.Run("bench", "dwconv", "--device", "cpu", "--batch", "1", "--channels", "2", "--sizes", "8",
            "--kernels", "3", "--layers", "1", "--reps", "1", "--pass", "fwd", "--impl", "ours", "--json", json);

        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.True(File.Exists(json));
        Assert.Contains($"wrote {json}", result.StdOut, StringComparison.Ordinal);

        string missing = dir.File($"[red]no such[ file {Guid.NewGuid():N}.pth");
        var failed = CliRunner.Run("forward", "--device", "cpu", "--arch", "RepLKNet-31B", "--weights", missing, "--input", json, "--input-shape", "1,3,8,8");

        Assert.Equal(1, failed.ExitCode);
        Assert.Contains($"'{missing}'", failed.StdErr, StringComparison.Ordinal);
        Assert.StartsWith("replknet: error:", failed.StdErr, StringComparison.Ordinal);
    }

    private static (int Code, string Out, string Error) RunInProcess(params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 10_000;
        int code = ReplknetApp.Run(args, console, error);
        return (code, output.ToString(), error.ToString());
    }
}
