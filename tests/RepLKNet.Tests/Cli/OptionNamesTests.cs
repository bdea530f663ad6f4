using RepLKNet.Checkpoints;
using RepLKNet.Cli;
using RepLKNet.Models;

namespace RepLKNet.Tests.Cli;

public sealed class OptionNamesTests
{
    [Fact]
    public void The_library_name_becomes_the_flag_where_it_leads_or_is_mentioned_but_not_inside_a_path()
    {
        var leading = new ConfigException("arch 'x' is neither a model variant", "arch");
        Assert.Equal("--arch 'x' is neither a model variant", OptionNames.Rewrite(leading, leading.Message));
        var mentioned = new CheckpointException("'a.pth' does not record its architecture: pass Arch (a variant name)", "Arch");
        Assert.Equal("'a.pth' does not record its architecture: pass --arch (a variant name)", OptionNames.Rewrite(mentioned, mentioned.Message));
        var path = new CheckpointException("'/tmp/weights.pth' is unreadable", "weights");
        Assert.Equal(path.Message, OptionNames.Rewrite(path, path.Message));
        var argument = new ArgumentException("weights 'w' does not fit", "weights");
        Assert.Equal("--weights 'w' does not fit", OptionNames.Rewrite(argument, argument.Message));
        var unknown = new ConfigException("arch 'x' is bad", "somethingElse");
        Assert.Equal(unknown.Message, OptionNames.Rewrite(unknown, unknown.Message));
    }
}
