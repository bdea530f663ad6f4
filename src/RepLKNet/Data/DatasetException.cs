namespace RepLKNet.Data;

/// <summary>A dataset is missing, unreadable or malformed; the message names the file or folder and what to do.</summary>
public sealed class DatasetException : Exception
{
    /// <summary>Creates the exception.</summary>
    public DatasetException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    public DatasetException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public DatasetException()
    {
    }

    /// <summary>
    /// Creates the exception for one argument: <paramref name="paramName"/> is the library's name for it (a method parameter
    /// or an options property, e.g. <c>InitialWeights</c>), and the message starts with that name, so a front end can put
    /// its own name for the argument (a CLI flag) in its place.
    /// </summary>
    public DatasetException(string message, string? paramName)
        : base(message)
    {
        ParamName = paramName;
    }

    /// <summary>The library's name of the argument the error is about (as in <see cref="ArgumentException.ParamName"/>), or null.</summary>
    public string? ParamName { get; }
}
