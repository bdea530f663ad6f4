namespace RepLKNet.Reparam;

/// <summary>A module with a training form and an equivalent, faster deploy form.</summary>
public interface IReparameterizable
{
    /// <summary>Whether the module is already in its deploy form.</summary>
    bool IsDeploy { get; }

    /// <summary>Converts the module to its deploy form in place, keeping its eval-mode outputs. Idempotent.</summary>
    void SwitchToDeploy();
}
