using System.Runtime.InteropServices;

namespace RepLKNet.Runtime;

/// <summary>
/// Thin <c>dlopen</c>/<c>dlerror</c> access. .NET's own <see cref="NativeLibrary"/> hides the loader's message behind
/// a generic one; we want the real reason (e.g. "version `GLIBCXX_3.4.32' not found") in our errors.
/// </summary>
internal static partial class NativeLibraries
{
    private const int RtldNow = 0x2;
    private const int RtldGlobal = 0x100;

    /// <summary>Loads <paramref name="path"/> with RTLD_NOW | RTLD_GLOBAL; returns the handle, or zero and the loader's message.</summary>
    public static IntPtr TryLoadGlobal(string path, out string? error)
    {
        // A stale message from an earlier failure must not be mistaken for ours.
        _ = dlerror();
        IntPtr handle = dlopen(path, RtldNow | RtldGlobal);
        if (handle != IntPtr.Zero)
        {
            error = null;
            return handle;
        }

        IntPtr message = dlerror();
        error = message == IntPtr.Zero ? "dlopen failed without a message" : Marshal.PtrToStringUTF8(message);
        return IntPtr.Zero;
    }

    /// <summary>The full paths of the shared objects this process has mapped whose file name starts with <paramref name="prefix"/>.</summary>
    public static IReadOnlyList<string> MappedLibraries(string prefix)
    {
        var found = new List<string>();
        if (!File.Exists("/proc/self/maps"))
        {
            return found;
        }

        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            int slash = line.IndexOf('/', StringComparison.Ordinal);
            if (slash < 0)
            {
                continue;
            }

            string path = line[slash..].Trim();
            if (Path.GetFileName(path).StartsWith(prefix, StringComparison.Ordinal) && !found.Contains(path))
            {
                found.Add(path);
            }
        }

        return found;
    }

    // libdl.so.2 exports these on every glibc: before 2.34 they live there, after it is a forwarding stub.
    [LibraryImport("libdl.so.2", EntryPoint = "dlopen", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr dlopen(string fileName, int flags);

    [LibraryImport("libdl.so.2", EntryPoint = "dlerror")]
    private static partial IntPtr dlerror();
}
