namespace RepLKNet.Reparam;

/// <summary>
/// A convolution followed by a BatchNorm that can fold the BN into the convolution (the official <c>deep_fuse_BN</c> step
/// for one conv+BN pair), so the walker can fuse pairs without knowing the layer that holds them.
/// </summary>
public interface IBatchNormFoldable
{
    /// <summary>Whether the BN has already been folded into the convolution.</summary>
    bool IsFused { get; }

    /// <summary>Folds the BN into a biased convolution in place, keeping eval-mode outputs. No-op when already fused.</summary>
    void FuseBn();
}
