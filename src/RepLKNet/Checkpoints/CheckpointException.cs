namespace RepLKNet.Checkpoints;

/// <summary>A checkpoint file cannot be read or does not fit the model; the message names the file and the problem.</summary>
public sealed class CheckpointException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CheckpointException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    public CheckpointException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public CheckpointException()
    {
    }

    /// <summary>
    /// Creates the exception for one argument: <paramref name="paramName"/> is the library's name for it (a method parameter
    /// or an options property, e.g. <c>InitialWeights</c>), and the message starts with that name, so a front end can put
    /// its own name for the argument (a CLI flag) in its place.
    /// </summary>
    public CheckpointException(string message, string? paramName)
        : base(message)
    {
        ParamName = paramName;
    }

    /// <summary>The library's name of the argument the error is about (as in <see cref="ArgumentException.ParamName"/>), or null.</summary>
    public string? ParamName { get; }
}
