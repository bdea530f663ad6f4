using RepLKNet.Reparam;
using static TorchSharp.torch;

namespace RepLKNet.Models;

/// <summary>The topologies a RepLKNet can have; each has its own state_dict key set.</summary>
public enum ModelForm
{
    /// <summary>Training form: <c>lkb_origin</c> (+ <c>small_conv</c>) with BNs.</summary>
    Train,

    /// <summary>Deploy form (official <c>structural_reparam</c>): one biased <c>lkb_reparam</c> per large kernel.</summary>
    Deploy,

    /// <summary>Deploy form with every conv+BN pair also folded (official <c>deep_fuse_BN</c>): biased convs, no conv_bn BNs.</summary>
    Fused,
}

/// <summary>Building a model in a given form, and recognizing the form of a state dict.</summary>
public static class ModelForms
{
    /// <summary>The lower-case name used in metadata and JSON ("train", "deploy", "fused").</summary>
    public static string Name(this ModelForm form) => form.ToString().ToLowerInvariant();

    /// <summary>Parses "train", "deploy" or "fused".</summary>
    public static ModelForm Parse(string text) => text?.Trim().ToLowerInvariant() switch
    {
        "train" => ModelForm.Train,
        "deploy" => ModelForm.Deploy,
        "fused" => ModelForm.Fused,
        _ => throw new FormatException($"'{text}' is not a model form: use train, deploy or fused"),
    };

    /// <summary>Builds <paramref name="config"/> in <paramref name="form"/> (weights at their defaults), named <paramref name="name"/> (null: "RepLKNet").</summary>
    public static RepLKNetModel Create(RepLKNetConfig config, ModelForm form, Device? device = null, string? name = null)
    {
        var model = new RepLKNetModel(config, deploy: form != ModelForm.Train, device: device, name: name);
        if (form == ModelForm.Fused)
        {
            Reparameterizer.Reparameterize(model, fuseBn: true);
        }

        return model;
    }

    /// <summary>The form whose key set <paramref name="keys"/> belongs to.</summary>
    public static ModelForm Detect(IEnumerable<string> keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        var list = keys as ICollection<string> ?? keys.ToList();
        if (list.Any(k => k.EndsWith(".conv.bias", StringComparison.Ordinal) && !k.Contains(".large_kernel.", StringComparison.Ordinal)))
        {
            return ModelForm.Fused;
        }

        return list.Any(k => k.Contains(".large_kernel.lkb_reparam.", StringComparison.Ordinal)) ? ModelForm.Deploy : ModelForm.Train;
    }
}
