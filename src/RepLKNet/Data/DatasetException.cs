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
}
