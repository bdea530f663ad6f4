using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Models;

/// <summary>Key lists, order, shapes, dtypes and sizes of the official variants, against the spec's rules (§6, §7).</summary>
public sealed class VariantTests
{
    public VariantTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData("RepLKNet-31B", false, 79_864_168L, 1171)]
    [InlineData("RepLKNet-31B", true, 79_527_272L, 931)]
    [InlineData("RepLKNet-31L", false, 172_671_016L, 1171)]
    [InlineData("RepLKNet-31L", true, 172_165_672L, 931)]
    [InlineData("RepLKNet-XL", false, 335_435_752L, 1027)]
    [InlineData("RepLKNet-XL", true, 335_399_656L, 931)]
    public void Variant_state_dict_follows_the_official_key_scheme_and_sizes(string name, bool deploy, long parameters, int keys)
    {
        var variant = ModelRegistry.Find(name)!;
        var model = new RepLKNetModel(variant.Config, deploy, device: new Device("meta"));

        var ours = StateDicts.Ordered(model).Select(kv => $"{kv.Key} [{string.Join(",", kv.Value.shape)}] {kv.Value.dtype}").ToList();
        var expected = ExpectedKeys(variant.Config, deploy).Select(e => $"{e.Key} [{string.Join(",", e.Shape)}] {e.DType}").ToList();
        Assert.Equal(expected, ours);
        Assert.Equal(keys, ours.Count);
        Assert.Equal(parameters, model.parameters().Sum(p => p.numel()));
    }

    [Fact]
    public void Backbone_with_intermediate_norms_has_stage_norm_keys_and_no_head()
    {
        var config = ModelRegistry.Find("XL")!.Config with { NumClasses = null, OutIndices = [0, 1, 2, 3], NormIntermediateFeatures = true };
        var model = new RepLKNetModel(config, device: new Device("meta"));
        var ours = StateDicts.Ordered(model).Select(kv => $"{kv.Key} [{string.Join(",", kv.Value.shape)}] {kv.Value.dtype}").ToList();
        var expected = ExpectedKeys(config, deploy: false).Select(e => $"{e.Key} [{string.Join(",", e.Shape)}] {e.DType}").ToList();
        Assert.Equal(expected, ours);
        Assert.Contains("stages.3.norm.running_var [2048] Float32", ours);
        Assert.DoesNotContain(ours, k => k.StartsWith("head.", StringComparison.Ordinal) || k.StartsWith("norm.", StringComparison.Ordinal));
        Assert.Equal([4, 8, 16, 32], model.FeatureInfo.Select(f => f.Reduction));
        Assert.Equal([256, 512, 1024, 2048], model.FeatureInfo.Select(f => f.Channels));
    }

    [Fact]
    public void Variant_names_resolve_case_insensitively_and_in_short_form()
    {
        Assert.Equal("RepLKNet-31B", ModelRegistry.Find("replknet-31b")!.Name);
        Assert.Equal("RepLKNet-31L", ModelRegistry.Find("31L")!.Name);
        Assert.Equal("RepLKNet-XL", ModelRegistry.Find("RepLKNet_XL")!.Name);
        Assert.Null(ModelRegistry.Find("RepLKNet-31XXL"));
        var e = Assert.Throws<ConfigException>(() => ModelRegistry.Resolve("RepLKNet-31XXL"));
        Assert.Contains("'RepLKNet-31XXL'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Drop_path_schedule_is_linear_over_all_pairs_and_starts_at_zero()
    {
        var config = ModelRegistry.Find("31B")!.Config with { DropPathRate = 0.5 };
        var rates = config.DropPathSchedule();
        Assert.Equal(24, rates.Count);
        Assert.Equal(0, rates[0]);
        Assert.Equal(0.5, rates[^1], 12);
        Assert.Equal(0.5 * 5 / 23, rates[5], 12);
    }

    /// <summary>The spec's §7 table, written out independently of the model code.</summary>
    internal static IEnumerable<(string Key, long[] Shape, string DType)> ExpectedKeys(RepLKNetConfig c, bool deploy)
    {
        IEnumerable<(string, long[], string)> Bn(string p, long n) =>
        [
            ($"{p}.weight", [n], "Float32"), ($"{p}.bias", [n], "Float32"), ($"{p}.running_mean", [n], "Float32"),
            ($"{p}.running_var", [n], "Float32"), ($"{p}.num_batches_tracked", [], "Int64"),
        ];
        IEnumerable<(string, long[], string)> ConvBn(string p, long outC, long inPerGroup, long k) =>
            new[] { ($"{p}.conv.weight", new[] { outC, inPerGroup, k, k }, "Float32") }.Concat(Bn($"{p}.bn", outC));

        long c0 = c.Channels[0];
        var keys = new List<(string, long[], string)>();
        keys.AddRange(ConvBn("stem.0", c0, c.InChannels, 3));
        keys.AddRange(ConvBn("stem.1", c0, 1, 3));
        keys.AddRange(ConvBn("stem.2", c0, c0, 1));
        keys.AddRange(ConvBn("stem.3", c0, 1, 3));
        for (int i = 0; i < c.NumStages; i++)
        {
            long ci = c.Channels[i], d = (long)(ci * c.DwRatio), f = (long)(ci * c.FfnRatio), k = c.LargeKernelSizes[i];
            for (int j = 0; j < c.Layers[i]; j++)
            {
                string b = $"stages.{i}.blocks.{2 * j}";
                keys.AddRange(ConvBn($"{b}.pw1", d, ci, 1));
                keys.AddRange(ConvBn($"{b}.pw2", ci, d, 1));
                if (deploy)
                {
                    keys.Add(($"{b}.large_kernel.lkb_reparam.weight", [d, 1, k, k], "Float32"));
                    keys.Add(($"{b}.large_kernel.lkb_reparam.bias", [d], "Float32"));
                }
                else
                {
                    keys.AddRange(ConvBn($"{b}.large_kernel.lkb_origin", d, 1, k));
                    if (c.SmallKernel is int s)
                    {
                        keys.AddRange(ConvBn($"{b}.large_kernel.small_conv", d, 1, s));
                    }
                }

                keys.AddRange(Bn($"{b}.prelkb_bn", ci));
                string ffn = $"stages.{i}.blocks.{2 * j + 1}";
                keys.AddRange(Bn($"{ffn}.preffn_bn", ci));
                keys.AddRange(ConvBn($"{ffn}.pw1", f, ci, 1));
                keys.AddRange(ConvBn($"{ffn}.pw2", ci, f, 1));
            }

            if (c.NormIntermediateFeatures)
            {
                keys.AddRange(Bn($"stages.{i}.norm", ci));
            }
        }

        for (int i = 0; i < c.NumStages - 1; i++)
        {
            long next = c.Channels[i + 1];
            keys.AddRange(ConvBn($"transitions.{i}.0", next, c.Channels[i], 1));
            keys.AddRange(ConvBn($"transitions.{i}.1", next, 1, 3));
        }

        if (c.NumClasses is int n)
        {
            keys.AddRange(Bn("norm", c.Channels[^1]));
            keys.Add(("head.weight", [n, c.Channels[^1]], "Float32"));
            keys.Add(("head.bias", [n], "Float32"));
        }

        return keys;
    }
}
