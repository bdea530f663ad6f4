using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests;

/// <summary>
/// The library's folders (namespaces <c>RepLKNet.X</c>, sub-namespaces included in X) and what each may use, read from
/// the compiled RepLKNet.Core.dll: any use of a type counts — base types, interfaces, constraints, attributes, fields,
/// signatures, locals, catch clauses and every type/member token in method bodies, generic arguments included — not
/// just <c>using</c> lines (see <see cref="TypeReferences"/>). Code the compiler generates (lambdas, iterators, async
/// state machines) counts for the type that encloses it.
/// </summary>
public sealed class ArchitectureTests
{
    private const string Root = "RepLKNet";

    private static readonly string[] Bottom = ["Runtime", "IO"];
    private static readonly string[] BelowTraining = [.. Bottom, "Distributed", "Ops", "Reparam", "Layers", "Models", "Data", "Checkpoints", "Inference", "Export"];

    /// <summary>
    /// The layering (docs/architecture.md, "Folders and their layering"): each folder and the folders it may use. A folder that is not here fails the
    /// test until it is added, with its place in the layering, here and in the document.
    /// </summary>
    internal static readonly IReadOnlyDictionary<string, string[]> Layering = new Dictionary<string, string[]>
    {
        // Native loading, Scalars, libtorch's log; raw tensor files and atomic writes.
        ["Runtime"] = [],
        ["IO"] = [],
        ["Ops"] = ["Runtime"],
        ["Reparam"] = ["Runtime"],
        // Process groups on MPI/NCCL, the collective watchdog, gradient averaging, SyncBN's autograd function.
        ["Distributed"] = ["Runtime"],
        ["Layers"] = ["Ops", "Reparam", "Distributed", "Runtime"],
        ["Models"] = ["Layers", "Reparam", "Ops", "Distributed", "Runtime"],
        ["Data"] = ["IO", "Runtime"],
        ["Checkpoints"] = ["Models", "Data", "IO", "Reparam", "Runtime"],
        // ImageClassifier: load a checkpoint, re-parameterize, preprocess, classify (ClassScore is shared with Export).
        ["Inference"] = ["Checkpoints", "Models", "Data", "Reparam", "Runtime"],
        ["Export"] = ["Inference", "Checkpoints", "Models", "Data", "Layers", "Reparam", "Ops", "Distributed", "IO", "Runtime"],
        ["Training"] = BelowTraining,
        ["Erf"] = [.. BelowTraining, "Training"],
        ["Experiments"] = [.. BelowTraining, "Training"],
        ["Benchmarks"] = [.. BelowTraining, "Training"],
        // Segmentation datasets, transforms and loader, the task, metric, evaluation and prediction (UperNet on RepLKNet).
        ["Segmentation"] = [.. BelowTraining, "Training"],
    };

    private static readonly Lazy<IReadOnlyList<TypeReference>> Library =
        new(() => TypeReferences.Read(Path.Combine(AppContext.BaseDirectory, "RepLKNet.Core.dll")));

    [Fact]
    public void The_library_folders_use_each_other_without_a_cycle()
    {
        var edges = FolderEdges(Library.Value, Root);
        var cycles = Cycles(edges.Keys);
        Assert.True(cycles.Count == 0, $"The library's folders use each other in a cycle:\n{DescribeCycles(cycles, edges)}");
    }

    [Fact]
    public void Each_library_folder_uses_only_the_folders_the_layering_allows()
    {
        var edges = FolderEdges(Library.Value, Root);
        var violations = Violations(edges, Layering);
        Assert.True(violations.Count == 0, $"The library's folders break the layering:\n{string.Join('\n', violations)}");
    }

    [Fact]
    public void The_layering_written_in_docs_architecture_is_the_one_tested()
    {
        // The table "| `Folder` | holds | uses |": uses is "—", a list of folders, "X and below" (X and all X may use) or
        // "everything above this row"; one row may name several folders.
        string doc = File.ReadAllText(Path.Combine(Paths.RepositoryRoot(), "docs", "architecture.md"));
        var written = new Dictionary<string, HashSet<string>>();
        var above = new List<string>();
        foreach (var line in doc.Split('\n').Where(l => l.StartsWith("| `", StringComparison.Ordinal)))
        {
            var cells = line.Split('|');
            var folders = Regex.Matches(cells[1], "`([A-Za-z]+)`").Select(m => m.Groups[1].Value).ToList();
            string uses = cells[3].Trim();
            HashSet<string> set = uses switch
            {
                "—" => [],
                "everything above this row" => [.. above],
                _ when uses.EndsWith(" and below", StringComparison.Ordinal) => Below(uses[..^" and below".Length].Trim()),
                _ => [.. uses.Split(',', StringSplitOptions.TrimEntries)],
            };
            foreach (var folder in folders)
            {
                written[folder] = set;
            }

            above.AddRange(folders);
        }

        HashSet<string> Below(string folder) => [folder, .. written[folder].SelectMany(f => Below(f))];

        Assert.Equal(Layering.Keys.Order(), written.Keys.Order());
        foreach (var (folder, uses) in Layering)
        {
            Assert.True(written[folder].SetEquals(uses), $"{folder}: docs/architecture.md says {string.Join(", ", written[folder].Order())}; the test allows {string.Join(", ", uses.Order())}");
        }
    }

    [Fact]
    public void The_reader_sees_every_kind_of_reference()
    {
        // The fixture (Support/ArchitectureFixture.cs) uses each Lower type from Upper through one kind of reference.
        const string fixture = "RepLKNet.Tests.ArchitectureFixture";
        var seen = TypeReferences.Read(typeof(ArchitectureTests).Assembly.Location)
            .Where(r => Folder(r.FromNamespace, fixture) == "Upper" && Folder(r.ToNamespace, fixture) == "Lower")
            .ToList();
        (string Type, string Via)[] expected =
        [
            ("BaseClass", "base type"), ("IInterface", "interface"), ("IConstraint", "constraint"),
            ("MarkerAttribute", "attribute"), ("TypeofArgument", "attribute"), ("FieldType", "field"),
            ("PropertyType", "property"), ("ParameterType", "signature"), ("ReturnGenericArgument", "signature"),
            ("CalledInBody", "body"), ("CalledInLambda", "body"), ("CalledInIterator", "body"), ("CalledAfterSwitch", "body"), ("FieldHolder", "body"),
            ("CaughtException", "catch"), ("LocalOnly", "local"), ("TypeofInBody", "body"), ("MethodGenericArgument", "body"),
        ];
        var missing = expected
            .Where(e => !seen.Any(r => r.To == $"{fixture}.Lower.{e.Type}" && r.Via == e.Via))
            .Select(e => $"{e.Type} ({e.Via})")
            .ToList();
        Assert.True(missing.Count == 0, $"Not seen: {string.Join(", ", missing)}\nSeen:\n{string.Join('\n', seen)}");

        // The lambda's and the iterator's code sits in compiler-generated types nested in Channels, and counts for Upper.
        Assert.Contains(seen, r => r.To.EndsWith(".CalledInLambda", StringComparison.Ordinal) && r.From.Contains("Channels+<", StringComparison.Ordinal));
        Assert.Contains(seen, r => r.To.EndsWith(".CalledInIterator", StringComparison.Ordinal) && r.From.Contains("Channels+<", StringComparison.Ordinal));
    }

    [Fact]
    public void The_il_walk_keeps_its_place_over_every_operand_size()
    {
        byte[] il =
        [
            0x45, 2, 0, 0, 0, 0, 0, 0, 0, 0x28, 7, 0, 0,   // switch (2 targets; the last reads as "call" if the count is skipped)
            0x72, 1, 0, 0, 0x70,                          // ldstr: a string token, not metadata
            0x21, 1, 2, 3, 4, 5, 6, 7, 8,                 // ldc.i8
            0x22, 0, 0, 0x80, 0x3F,                       // ldc.r4 1.0
            0x0E, 1,                                      // ldarg.s 1
            0xFE, 0x15, 3, 0, 0, 0x02,                    // initobj TypeDef 3
            0x28, 1, 0, 0, 0x0A,                          // call MemberRef 1
            0x2A,                                         // ret
        ];
        Assert.Equal([0x02000003, 0x0A000001], TypeReferences.IlTokens(il, "test"));
        Assert.Throws<InvalidDataException>(() => TypeReferences.IlTokens([0x28, 1, 0, 0, 0x0A, 0xF5], "test").ToList());
    }

    [Fact]
    public void The_fixture_cycle_is_reported_with_an_example_per_edge()
    {
        const string fixture = "RepLKNet.Tests.ArchitectureFixture";
        var edges = FolderEdges(TypeReferences.Read(typeof(ArchitectureTests).Assembly.Location), fixture);
        var cycles = Cycles(edges.Keys);
        Assert.Equal(["Lower", "Upper"], Assert.Single(cycles));
        string report = DescribeCycles(cycles, edges);
        Assert.Contains("Lower -> Upper -> Lower", report, StringComparison.Ordinal);
        Assert.Contains($"{fixture}.Lower.Back.Up -> {fixture}.Upper.Channels (body)", report, StringComparison.Ordinal);
        Assert.Contains($"Upper -> Lower: {fixture}.Upper.", report, StringComparison.Ordinal);
    }

    [Fact]
    public void The_cycle_finder_finds_planted_cycles_and_only_those()
    {
        Assert.Empty(Cycles([("A", "B"), ("B", "C"), ("A", "C"), ("C", "D")]));

        var one = Cycles([("A", "B"), ("B", "C"), ("C", "A"), ("C", "D"), ("D", "E")]);
        Assert.Equal(["A", "B", "C"], Assert.Single(one));

        var two = Cycles([("Models", "Layers"), ("Layers", "Reparam"), ("Reparam", "Layers"), ("Reparam", "Models"), ("Data", "Runtime")]);
        Assert.Equal(2, two.Count);
        Assert.Contains(two, c => c.SequenceEqual(["Layers", "Reparam"]));
        Assert.Contains(two, c => c.SequenceEqual(["Layers", "Reparam", "Models"]));
    }

    [Fact]
    public void The_layering_check_reports_forbidden_edges_and_unknown_folders()
    {
        var table = new Dictionary<string, string[]> { ["Low"] = [], ["High"] = ["Low"] };
        TypeReference Use(string from, string to) => new($"RepLKNet.{from}.A.M", $"RepLKNet.{from}", $"RepLKNet.{to}.B", $"RepLKNet.{to}", "body");
        var edges = FolderEdges([Use("High", "Low"), Use("Low", "High"), Use("New", "Low"), Use("Low.Sub", "Low")], Root);

        var violations = Violations(edges, table);

        Assert.Equal(2, violations.Count);
        Assert.Contains(violations, v => v.StartsWith("Low -> High: not in the layering (Low may use: nothing)", StringComparison.Ordinal)
            && v.Contains("RepLKNet.Low.A.M -> RepLKNet.High.B (body)", StringComparison.Ordinal));
        Assert.Contains(violations, v => v.StartsWith("New: a folder the layering does not list", StringComparison.Ordinal));
    }

    /// <summary>The folder of a namespace under <paramref name="root"/> (its first segment after it), or null outside it.</summary>
    internal static string? Folder(string ns, string root) =>
        ns == root ? "(root)"
        : ns.StartsWith(root + ".", StringComparison.Ordinal) ? ns[(root.Length + 1)..].Split('.')[0]
        : null;

    /// <summary>The uses of one folder by another (a folder's use of itself left out), each edge with its references.</summary>
    internal static Dictionary<(string From, string To), List<TypeReference>> FolderEdges(IEnumerable<TypeReference> references, string root)
    {
        var edges = new Dictionary<(string, string), List<TypeReference>>();
        foreach (var r in references)
        {
            string? from = Folder(r.FromNamespace, root);
            string? to = Folder(r.ToNamespace, root);
            if (from is null || to is null)
            {
                continue; // code outside the library's namespaces: compiler-generated helpers and attributes
            }

            if (from == to)
            {
                edges.TryAdd((from, from), []); // keeps a folder with no outside uses visible to the layering check
                continue;
            }

            if (!edges.TryGetValue((from, to), out var list))
            {
                edges[(from, to)] = list = [];
            }

            list.Add(r);
        }

        return edges;
    }

    /// <summary>
    /// Every elementary cycle of the directed graph <paramref name="edges"/> (self-loops ignored), each listed once from
    /// its smallest node (ordinal order): <c>[A, B, C]</c> is A → B → C → A.
    /// </summary>
    internal static IReadOnlyList<IReadOnlyList<string>> Cycles(IEnumerable<(string From, string To)> edges)
    {
        var next = new SortedDictionary<string, SortedSet<string>>(StringComparer.Ordinal);
        foreach (var (from, to) in edges)
        {
            if (from == to)
            {
                continue;
            }

            if (!next.TryGetValue(from, out var set))
            {
                next[from] = set = new SortedSet<string>(StringComparer.Ordinal);
            }

            set.Add(to);
        }

        var cycles = new List<IReadOnlyList<string>>();
        var path = new List<string>();
        foreach (string start in next.Keys)
        {
            path.Add(start);
            Walk(start);
            path.Clear();

            void Walk(string node)
            {
                if (!next.TryGetValue(node, out var targets))
                {
                    return;
                }

                foreach (string target in targets)
                {
                    if (target == start)
                    {
                        cycles.Add([.. path]);
                    }
                    else if (string.CompareOrdinal(target, start) > 0 && !path.Contains(target))
                    {
                        path.Add(target);
                        Walk(target);
                        path.RemoveAt(path.Count - 1);
                    }
                }
            }
        }

        return cycles;
    }

    /// <summary>Each cycle as <c>A -> B -> A</c>, then each of its edges with one reference that makes it.</summary>
    internal static string DescribeCycles(IReadOnlyList<IReadOnlyList<string>> cycles, Dictionary<(string From, string To), List<TypeReference>> edges)
    {
        var text = new StringBuilder();
        foreach (var cycle in cycles)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"{string.Join(" -> ", cycle)} -> {cycle[0]}");
            for (int i = 0; i < cycle.Count; i++)
            {
                var edge = (cycle[i], cycle[(i + 1) % cycle.Count]);
                var uses = edges[edge];
                text.AppendLine(CultureInfo.InvariantCulture, $"  {edge.Item1} -> {edge.Item2}: {uses[0]}{(uses.Count > 1 ? $" (and {uses.Count - 1} more)" : "")}");
            }
        }

        return text.ToString();
    }

    /// <summary>Each use of a folder the layering does not allow (with up to three references), and each folder it does not list.</summary>
    internal static List<string> Violations(Dictionary<(string From, string To), List<TypeReference>> edges, IReadOnlyDictionary<string, string[]> layering)
    {
        var violations = new List<string>();
        foreach (string unknown in edges.Keys.SelectMany(e => new[] { e.From, e.To }).Distinct().Where(f => !layering.ContainsKey(f)).Order(StringComparer.Ordinal))
        {
            violations.Add($"{unknown}: a folder the layering does not list; add it to ArchitectureTests.Layering (and docs/architecture.md) with the folders it may use");
        }

        foreach (var ((from, to), uses) in edges.OrderBy(e => e.Key.From, StringComparer.Ordinal).ThenBy(e => e.Key.To, StringComparer.Ordinal))
        {
            if (from == to || !layering.TryGetValue(from, out var allowed) || !layering.ContainsKey(to) || allowed.Contains(to))
            {
                continue;
            }

            string may = allowed.Length == 0 ? "nothing" : string.Join(", ", allowed);
            violations.Add($"{from} -> {to}: not in the layering ({from} may use: {may}); {uses.Count} reference(s), e.g.\n" +
                string.Join('\n', uses.Take(3).Select(u => $"    {u}")));
        }

        return violations;
    }
}
