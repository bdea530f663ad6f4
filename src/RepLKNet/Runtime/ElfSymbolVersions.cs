// Reads and edits the GNU symbol-versioning tables of ELF64 shared libraries.
//
// Why this exists: TorchSharp 0.107's libLibTorchSharp.so asks for GLIBCXX_3.4.32 (GCC 13's libstdc++) for a single
// symbol that no relocation uses (_ZSt21ios_base_library_initv). Debian 12 and Ubuntu 22.04 stop at GLIBCXX_3.4.30, so
// glibc refuses to load the library. Marking that one version requirement weak (VER_FLG_WEAK) makes glibc accept it.
// See docs/engineering notes §2 and docs/runtime.md.
//
// This file is compiled twice: into the RepLKNet library (REPLKNET_LIBRARY defined), where the runtime uses it for
// diagnostics, and by MSBuild's RoslynCodeTaskFactory (Directory.Build.targets), where the task class at the end patches
// the build and publish output copies after every build. Keep it to netstandard2.0 APIs and C# 7.3 syntax for that reason.
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace RepLKNet.Runtime
{
    /// <summary>A file is not a well-formed little-endian ELF64 object; the message names the file and the problem.</summary>
    public sealed class ElfFormatException : Exception
    {
        /// <summary>Creates the exception for <paramref name="path"/> with a description of what is wrong.</summary>
        public ElfFormatException(string path, string problem)
            : base("'" + path + "' " + problem)
        {
            FilePath = path;
        }

        /// <summary>The file that was rejected.</summary>
        public string FilePath { get; }
    }

    /// <summary>One version requirement (an <c>Elf64_Vernaux</c> entry) of a shared library.</summary>
    public sealed class ElfVersionNeed
    {
        internal ElfVersionNeed(string library, string version, ushort flags, long flagsOffset)
        {
            Library = library;
            Version = version;
            Flags = flags;
            FlagsOffset = flagsOffset;
        }

        /// <summary>The needed library (e.g. <c>libstdc++.so.6</c>).</summary>
        public string Library { get; }

        /// <summary>The version name (e.g. <c>GLIBCXX_3.4.32</c>).</summary>
        public string Version { get; }

        /// <summary>The <c>vna_flags</c> field.</summary>
        public ushort Flags { get; }

        /// <summary>Whether the requirement is weak (glibc tolerates its absence).</summary>
        public bool IsWeak => (Flags & ElfSymbolVersions.VerFlagWeak) != 0;

        /// <summary>File offset of the 16-bit <c>vna_flags</c> field.</summary>
        public long FlagsOffset { get; }
    }

    /// <summary>What <see cref="ElfSymbolVersions.MakeVersionNeedWeak"/> did to a file.</summary>
    public enum WeakenResult
    {
        /// <summary>The library does not require that version: the file was left untouched.</summary>
        NotRequired,

        /// <summary>The requirement was already weak: the file was left untouched.</summary>
        AlreadyWeak,

        /// <summary>The requirement was marked weak and the file rewritten atomically.</summary>
        Patched,
    }

    /// <summary>GNU symbol-version tables of ELF64 little-endian files: read requirements and definitions, weaken one.</summary>
    public static class ElfSymbolVersions
    {
        /// <summary>The version TorchSharp 0.107's native library asks for and Debian 12's libstdc++ lacks.</summary>
        public const string TorchSharpGlibcxxVersion = "GLIBCXX_3.4.32";

        /// <summary><c>VER_FLG_WEAK</c>.</summary>
        public const ushort VerFlagWeak = 2;

        private const uint ShtGnuVerdef = 0x6ffffffd;
        private const uint ShtGnuVerneed = 0x6ffffffe;

        /// <summary>Reads every version requirement of the ELF file at <paramref name="path"/>.</summary>
        public static IReadOnlyList<ElfVersionNeed> ReadVersionNeeds(string path)
        {
            return ReadVersionNeeds(ReadFile(path), path);
        }

        /// <summary>Reads every version requirement of an ELF image; <paramref name="path"/> only names it in errors.</summary>
        public static IReadOnlyList<ElfVersionNeed> ReadVersionNeeds(byte[] elf, string path)
        {
            var result = new List<ElfVersionNeed>();
            var image = new ElfImage(elf, path);
            foreach (var section in image.Sections)
            {
                if (section.Type != ShtGnuVerneed)
                {
                    continue;
                }

                var strings = image.Section((int)section.Link, "the version-needs string table");
                long entry = section.Offset;
                for (uint i = 0; i < section.Info; i++)
                {
                    image.Require(entry, 16, "version-needs record");
                    ushort count = image.U16(entry + 2);
                    string library = image.CString(strings, image.U32(entry + 4));
                    long aux = entry + image.U32(entry + 8);
                    for (int j = 0; j < count; j++)
                    {
                        image.Require(aux, 16, "version-needs auxiliary record");
                        string version = image.CString(strings, image.U32(aux + 8));
                        result.Add(new ElfVersionNeed(library, version, image.U16(aux + 4), aux + 4));
                        uint nextAux = image.U32(aux + 12);
                        if (nextAux == 0)
                        {
                            break;
                        }

                        aux += nextAux;
                    }

                    uint next = image.U32(entry + 12);
                    if (next == 0)
                    {
                        break;
                    }

                    entry += next;
                }
            }

            return result;
        }

        /// <summary>Reads the version names an ELF library defines (for libstdc++: GLIBCXX_3.4, …).</summary>
        public static IReadOnlyList<string> ReadVersionDefinitions(string path)
        {
            byte[] elf = ReadFile(path);
            var result = new List<string>();
            var image = new ElfImage(elf, path);
            foreach (var section in image.Sections)
            {
                if (section.Type != ShtGnuVerdef)
                {
                    continue;
                }

                var strings = image.Section((int)section.Link, "the version-definitions string table");
                long entry = section.Offset;
                for (uint i = 0; i < section.Info; i++)
                {
                    image.Require(entry, 20, "version-definition record");
                    ushort count = image.U16(entry + 6);
                    long aux = entry + image.U32(entry + 12);
                    if (count > 0)
                    {
                        image.Require(aux, 8, "version-definition auxiliary record");
                        result.Add(image.CString(strings, image.U32(aux)));
                    }

                    uint next = image.U32(entry + 16);
                    if (next == 0)
                    {
                        break;
                    }

                    entry += next;
                }
            }

            return result;
        }

        /// <summary>
        /// Marks the requirement on <paramref name="version"/> weak in the file at <paramref name="path"/>. Idempotent:
        /// the file is rewritten (atomically, keeping its timestamp) only when a flag actually changes.
        /// </summary>
        public static WeakenResult MakeVersionNeedWeak(string path, string version)
        {
            byte[] elf = ReadFile(path);
            bool found = false;
            bool changed = false;
            foreach (var need in ReadVersionNeeds(elf, path))
            {
                if (need.Version != version)
                {
                    continue;
                }

                found = true;
                if (!need.IsWeak)
                {
                    ushort flags = (ushort)(need.Flags | VerFlagWeak);
                    elf[need.FlagsOffset] = (byte)(flags & 0xff);
                    elf[need.FlagsOffset + 1] = (byte)(flags >> 8);
                    changed = true;
                }
            }

            if (!found)
            {
                return WeakenResult.NotRequired;
            }

            if (!changed)
            {
                return WeakenResult.AlreadyWeak;
            }

            // Write beside the target, then rename over it: a reader never sees a half-written library, and a target
            // that is a hard link into a package cache is replaced rather than edited in place.
            DateTime stamp = File.GetLastWriteTimeUtc(path);
            string temp = path + ".weak-tmp";
            File.WriteAllBytes(temp, elf);
            File.SetLastWriteTimeUtc(temp, stamp);
            File.Replace(temp, path, null);
            return WeakenResult.Patched;
        }

        /// <summary>Whether the libstdc++ at <paramref name="libstdcxxPath"/> defines <paramref name="version"/>.</summary>
        public static bool LibraryDefinesVersion(string libstdcxxPath, string version)
        {
            foreach (var name in ReadVersionDefinitions(libstdcxxPath))
            {
                if (name == version)
                {
                    return true;
                }
            }

            return false;
        }

        /// <summary>
        /// Finds the system's libstdc++.so.6: the copy this process has mapped (the .NET host links it), else the usual
        /// multiarch locations. Null when none is found.
        /// </summary>
        public static string? FindSystemLibStdCxx()
        {
            try
            {
                if (File.Exists("/proc/self/maps"))
                {
                    foreach (var line in File.ReadAllLines("/proc/self/maps"))
                    {
                        int slash = line.IndexOf('/');
                        bool isLibStdCxx = line.EndsWith("/libstdc++.so.6", StringComparison.Ordinal) ||
                            line.Contains("/libstdc++.so.6.");
                        if (slash >= 0 && isLibStdCxx)
                        {
                            string candidate = line.Substring(slash).Trim();
                            if (File.Exists(candidate))
                            {
                                return candidate;
                            }
                        }
                    }
                }
            }
            catch (IOException)
            {
                // Fall through to the fixed locations.
            }
            catch (UnauthorizedAccessException)
            {
                // Fall through to the fixed locations.
            }

            string[] candidates =
            {
                "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
            };
            foreach (var candidate in candidates)
            {
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }

            return null;
        }

        private static byte[] ReadFile(string path)
        {
            if (!File.Exists(path))
            {
                throw new FileNotFoundException("'" + path + "' does not exist", path);
            }

            return File.ReadAllBytes(path);
        }

        private struct SectionHeader
        {
            public uint Type;
            public long Offset;
            public long Size;
            public uint Link;
            public uint Info;
        }

        /// <summary>Bounds-checked little-endian view of an ELF64 image.</summary>
        private sealed class ElfImage
        {
            private readonly byte[] _bytes;
            private readonly string _path;

            public ElfImage(byte[] bytes, string path)
            {
                _bytes = bytes;
                _path = path;
                if (bytes.Length < 4 || bytes[0] != 0x7f || bytes[1] != (byte)'E' || bytes[2] != (byte)'L' || bytes[3] != (byte)'F')
                {
                    throw new ElfFormatException(path, "is not an ELF file (it does not start with the bytes 7F 45 4C 46)");
                }

                if (bytes.Length < 64)
                {
                    throw new ElfFormatException(path, "is truncated: " + bytes.Length + " bytes, shorter than an ELF64 header");
                }

                if (bytes[4] != 2)
                {
                    throw new ElfFormatException(path, "is not a 64-bit ELF file (EI_CLASS=" + bytes[4] + ")");
                }

                if (bytes[5] != 1)
                {
                    throw new ElfFormatException(path, "is not a little-endian ELF file (EI_DATA=" + bytes[5] + ")");
                }

                long shoff = (long)U64(0x28);
                int shentsize = U16(0x3A);
                int shnum = U16(0x3C);
                if (shnum == 0)
                {
                    throw new ElfFormatException(path, "has no section headers, so its symbol versions cannot be read");
                }

                if (shentsize < 64)
                {
                    throw new ElfFormatException(path, "has a section header size of " + shentsize + " bytes (expected 64)");
                }

                Sections = new SectionHeader[shnum];
                for (int i = 0; i < shnum; i++)
                {
                    long h = shoff + (long)i * shentsize;
                    Require(h, 64, "section header " + i);
                    var s = new SectionHeader
                    {
                        Type = U32(h + 4),
                        Offset = (long)U64(h + 24),
                        Size = (long)U64(h + 32),
                        Link = U32(h + 40),
                        Info = U32(h + 44),
                    };
                    if (s.Type != 8 /* SHT_NOBITS */)
                    {
                        Require(s.Offset, s.Size, "section " + i + "'s contents");
                    }

                    Sections[i] = s;
                }
            }

            public SectionHeader[] Sections { get; }

            public SectionHeader Section(int index, string what)
            {
                if (index <= 0 || index >= Sections.Length)
                {
                    throw new ElfFormatException(_path, "is corrupt: " + what + " points at section " + index + " of " + Sections.Length);
                }

                return Sections[index];
            }

            public void Require(long offset, long length, string what)
            {
                if (offset < 0 || length < 0 || offset + length > _bytes.Length)
                {
                    throw new ElfFormatException(_path, "is truncated or corrupt: " + what + " lies at bytes " + offset + "…" +
                        (offset + length) + " but the file has " + _bytes.Length);
                }
            }

            public ushort U16(long offset)
            {
                Require(offset, 2, "a 16-bit field");
                return BitConverter.ToUInt16(_bytes, (int)offset);
            }

            public uint U32(long offset)
            {
                Require(offset, 4, "a 32-bit field");
                return BitConverter.ToUInt32(_bytes, (int)offset);
            }

            public ulong U64(long offset)
            {
                Require(offset, 8, "a 64-bit field");
                return BitConverter.ToUInt64(_bytes, (int)offset);
            }

            public string CString(SectionHeader table, uint index)
            {
                long start = table.Offset + index;
                if (index >= table.Size)
                {
                    throw new ElfFormatException(_path, "is corrupt: a string index (" + index + ") lies outside its string table");
                }

                long end = start;
                long limit = table.Offset + table.Size;
                while (end < limit && _bytes[end] != 0)
                {
                    end++;
                }

                return Encoding.UTF8.GetString(_bytes, (int)start, (int)(end - start));
            }
        }
    }
}

#if !REPLKNET_LIBRARY
namespace RepLKNet.Build
{
    /// <summary>
    /// MSBuild task: marks GLIBCXX_3.4.32 weak in the given copies of libLibTorchSharp.so when the system libstdc++
    /// lacks it. Runs after every build and publish (Directory.Build.targets), on output copies only.
    /// </summary>
    public sealed class WeakenGlibcxxRequirement : Microsoft.Build.Utilities.Task
    {
        /// <summary>The library copies to patch.</summary>
        [Microsoft.Build.Framework.Required]
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = new Microsoft.Build.Framework.ITaskItem[0];

        /// <inheritdoc />
        public override bool Execute()
        {
            if (Files.Length == 0)
            {
                return true;
            }

            string version = RepLKNet.Runtime.ElfSymbolVersions.TorchSharpGlibcxxVersion;
            string? libstdcxx = RepLKNet.Runtime.ElfSymbolVersions.FindSystemLibStdCxx();
            if (libstdcxx != null && RepLKNet.Runtime.ElfSymbolVersions.LibraryDefinesVersion(libstdcxx, version))
            {
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low,
                    libstdcxx + " provides " + version + ": libLibTorchSharp.so needs no patch.");
                return true;
            }

            foreach (var item in Files)
            {
                string path = item.ItemSpec;
                try
                {
                    var result = RepLKNet.Runtime.ElfSymbolVersions.MakeVersionNeedWeak(path, version);
                    Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Normal,
                        "RepLKNet: " + path + ": " + version + " requirement " + result);
                }
                catch (Exception e) when (e is IOException || e is UnauthorizedAccessException || e is RepLKNet.Runtime.ElfFormatException)
                {
                    Log.LogError("RepLKNet: could not mark " + version + " weak in '" + path + "': " + e.Message);
                }
            }

            return !Log.HasLoggedErrors;
        }
    }
}
#endif
