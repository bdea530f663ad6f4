namespace RepLKNet.Training;

/// <summary>The one range check of the training options: a failure names the option in its message and ParamName.</summary>
internal static class OptionCheck
{
    /// <summary>Throws <see cref="ArgumentException"/> "<paramref name="name"/> <paramref name="problem"/>" (ParamName <paramref name="name"/>) unless <paramref name="ok"/>.</summary>
    public static void That(bool ok, string name, string problem)
    {
        if (!ok)
        {
            throw new ArgumentException($"{name} {problem}", name);
        }
    }
}
