using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace RepLKNet.Ops.Cuda;

/// <summary>NVRTC could not be loaded or a program failed to compile; the message carries NVRTC's log.</summary>
public sealed class NvrtcException : Exception
{
    /// <summary>Creates the exception.</summary>
    public NvrtcException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public NvrtcException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public NvrtcException()
    {
    }
}

/// <summary>The result of one NVRTC compilation.</summary>
/// <param name="Cubin">The device code (a cubin for a real <c>sm_XX</c> target).</param>
/// <param name="Log">NVRTC's log (ptxas' resource report when <c>--ptxas-options=-v</c> was passed).</param>
public sealed record NvrtcOutput(byte[] Cubin, string Log);

/// <summary>
/// P/Invoke access to NVRTC, CUDA's run-time compiler. Whichever library exists is used: <c>libnvrtc.so</c>,
/// <c>.so.13</c>, <c>.so.12</c> or <c>.so.11.2</c> (Debian's <c>libnvrtc11.2</c> package from the non-free component
/// ships CUDA 11.8's NVRTC under that name, which is enough to compile for sm_80/sm_90 without a GPU).
/// </summary>
public static partial class Nvrtc
{
    private const string Library = "replknet-nvrtc";
    private static readonly string[] Candidates = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"];
    private static readonly Lazy<(IntPtr Handle, string? Name, string? Error)> Loaded = new(Load);

    static Nvrtc()
    {
        NativeLibrary.SetDllImportResolver(typeof(Nvrtc).Assembly, Resolve);
    }

    /// <summary>Whether an NVRTC library was found and loaded.</summary>
    public static bool IsAvailable => Loaded.Value.Handle != IntPtr.Zero;

    /// <summary>Why NVRTC is unavailable, or null.</summary>
    public static string? UnavailableReason => Loaded.Value.Error;

    /// <summary>The file name of the loaded library, e.g. <c>libnvrtc.so.13</c>.</summary>
    public static string? LibraryName => Loaded.Value.Name;

    /// <summary>NVRTC's version as "major.minor".</summary>
    public static string Version()
    {
        EnsureAvailable();
        Check(nvrtcVersion(out int major, out int minor), "nvrtcVersion", null);
        return $"{major}.{minor}";
    }

    /// <summary>The real architectures this NVRTC can compile for (e.g. 80, 90), or an empty list when it cannot say.</summary>
    public static IReadOnlyList<int> SupportedArchitectures()
    {
        EnsureAvailable();
        if (nvrtcGetNumSupportedArchs(out int count) != 0 || count <= 0)
        {
            return [];
        }

        var archs = new int[count];
        return nvrtcGetSupportedArchs(archs) == 0 ? archs : [];
    }

    /// <summary>
    /// Compiles <paramref name="source"/> (named <paramref name="name"/> in messages) to a cubin with
    /// <paramref name="options"/>, which must include <c>--gpu-architecture=sm_XX</c>. Throws
    /// <see cref="NvrtcException"/> with the compiler log on errors.
    /// </summary>
    public static NvrtcOutput Compile(string source, string name, IReadOnlyList<string> options)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(options);
        EnsureAvailable();
        Check(nvrtcCreateProgram(out IntPtr program, source, name, 0, null, null), "nvrtcCreateProgram", null);
        try
        {
            int result = nvrtcCompileProgram(program, options.Count, [.. options]);
            string log = ProgramLog(program);
            if (result != 0)
            {
                throw new NvrtcException($"NVRTC failed to compile {name} ({ErrorName(result)}) with options [{string.Join(' ', options)}]:\n{log}");
            }

            Check(nvrtcGetCUBINSize(program, out nuint size), "nvrtcGetCUBINSize", name);
            if (size == 0)
            {
                throw new NvrtcException($"NVRTC produced no cubin for {name}: options must name a real architecture (--gpu-architecture=sm_XX), not compute_XX");
            }

            var cubin = new byte[(int)size];
            Check(nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN", name);
            return new NvrtcOutput(cubin, log);
        }
        finally
        {
            nvrtcDestroyProgram(ref program);
        }
    }

    /// <summary>Reads an embedded CUDA source of this assembly (<c>Ops/Cuda/Kernels/NAME</c>).</summary>
    public static string EmbeddedSource(string fileName)
    {
        var assembly = typeof(Nvrtc).Assembly;
        string resource = $"RepLKNet.Ops.Cuda.Kernels.{fileName}";
        using var stream = assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"embedded CUDA source {resource} is missing from {assembly.GetName().Name}");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }

    private static string ProgramLog(IntPtr program)
    {
        if (nvrtcGetProgramLogSize(program, out nuint size) != 0 || size <= 1)
        {
            return string.Empty;
        }

        var buffer = new byte[(int)size];
        return nvrtcGetProgramLog(program, buffer) == 0 ? Encoding.UTF8.GetString(buffer, 0, buffer.Length - 1).Trim() : string.Empty;
    }

    private static void EnsureAvailable()
    {
        if (Loaded.Value.Error is { } reason)
        {
            throw new NvrtcException(reason);
        }
    }

    private static void Check(int result, string call, string? name)
    {
        if (result != 0)
        {
            throw new NvrtcException($"NVRTC call {call}{(name is null ? string.Empty : $" for {name}")} failed: {ErrorName(result)}");
        }
    }

    private static string ErrorName(int result)
    {
        IntPtr text = nvrtcGetErrorString(result);
        return text == IntPtr.Zero ? $"nvrtcResult {result}" : $"{Marshal.PtrToStringUTF8(text)} (nvrtcResult {result})";
    }

    private static (IntPtr Handle, string? Name, string? Error) Load()
    {
        foreach (string candidate in Candidates)
        {
            if (NativeLibrary.TryLoad(candidate, out IntPtr handle))
            {
                return (handle, candidate, null);
            }
        }

        return (IntPtr.Zero, null,
            $"no NVRTC library found (tried {string.Join(", ", Candidates)}); on the GPU machine it is in /usr/local/cuda/lib64, " +
            "on Debian install libnvrtc11.2 from the non-free component");
    }

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != Library)
        {
            return IntPtr.Zero;
        }

        var (handle, _, error) = Loaded.Value;
        return handle != IntPtr.Zero ? handle : throw new DllNotFoundException(error);
    }

    [LibraryImport(Library)]
    private static partial int nvrtcVersion(out int major, out int minor);

    [LibraryImport(Library)]
    private static partial int nvrtcGetNumSupportedArchs(out int count);

    [LibraryImport(Library)]
    private static partial int nvrtcGetSupportedArchs([Out] int[] archs);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int nvrtcCreateProgram(out IntPtr program, string source, string name, int numHeaders, string[]? headers, string[]? includeNames);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int nvrtcCompileProgram(IntPtr program, int numOptions, string[] options);

    [LibraryImport(Library)]
    private static partial int nvrtcGetProgramLogSize(IntPtr program, out nuint size);

    [LibraryImport(Library)]
    private static partial int nvrtcGetProgramLog(IntPtr program, [Out] byte[] log);

    [LibraryImport(Library)]
    private static partial int nvrtcGetCUBINSize(IntPtr program, out nuint size);

    [LibraryImport(Library)]
    private static partial int nvrtcGetCUBIN(IntPtr program, [Out] byte[] cubin);

    [LibraryImport(Library)]
    private static partial int nvrtcDestroyProgram(ref IntPtr program);

    [LibraryImport(Library)]
    private static partial IntPtr nvrtcGetErrorString(int result);
}
