using Spectre.Console;
using Spectre.Console.Rendering;

namespace RepLKNet.Cli;

/// <summary>
/// Writing text that is not markup through Spectre.Console. Spectre parses every <c>string</c> it is handed as markup
/// (<c>MarkupLine</c>, table cells, progress descriptions, help descriptions), so a file name, class name or message
/// with <c>[</c> in it either fails ("Could not find color or style") or is restyled. Text that did not come from our
/// own literals goes through <see cref="Markup.Escape"/> or, for table cells, <see cref="AddPlainRow"/>.
/// </summary>
internal static class ConsoleText
{
    /// <summary>Adds a row whose cells are shown literally (as <see cref="Text"/>, never parsed as markup).</summary>
    public static Table AddPlainRow(this Table table, params IEnumerable<string> cells)
    {
        ArgumentNullException.ThrowIfNull(table);
        return table.AddRow(cells.Select(c => (IRenderable)new Text(c)));
    }
}
