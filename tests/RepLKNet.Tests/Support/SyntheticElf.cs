using System.Text;

namespace RepLKNet.Tests.Support;

/// <summary>
/// Builds minimal little-endian ELF64 files with a string table and a GNU version-needs section, so the ELF patcher can be
/// tested on inputs whose every byte we know.
/// </summary>
internal static class SyntheticElf
{
    /// <summary>One needed library with its required versions.</summary>
    public sealed record Need(string Library, params string[] Versions);

    public static byte[] Build(params Need[] needs)
    {
        // .dynstr: index 0 is the empty string.
        var dynstr = new List<byte> { 0 };
        var offsets = new Dictionary<string, int>();
        int Str(string s)
        {
            if (!offsets.TryGetValue(s, out int at))
            {
                at = dynstr.Count;
                dynstr.AddRange(Encoding.ASCII.GetBytes(s));
                dynstr.Add(0);
                offsets[s] = at;
            }

            return at;
        }

        // .gnu.version_r: Elf64_Verneed (16 bytes) followed by its Elf64_Vernaux entries (16 bytes each).
        var verneed = new List<byte>();
        ushort versionIndex = 2;
        for (int n = 0; n < needs.Length; n++)
        {
            var need = needs[n];
            int recordSize = 16 + 16 * need.Versions.Length;
            verneed.AddRange(U16(1));
            verneed.AddRange(U16((ushort)need.Versions.Length));
            verneed.AddRange(U32((uint)Str(need.Library)));
            verneed.AddRange(U32(16));
            verneed.AddRange(U32(n == needs.Length - 1 ? 0u : (uint)recordSize));
            for (int v = 0; v < need.Versions.Length; v++)
            {
                verneed.AddRange(U32(0x0eadbeef));
                verneed.AddRange(U16(0));
                verneed.AddRange(U16(versionIndex++));
                verneed.AddRange(U32((uint)Str(need.Versions[v])));
                verneed.AddRange(U32(v == need.Versions.Length - 1 ? 0u : 16u));
            }
        }

        byte[] shstrtab = Encoding.ASCII.GetBytes("\0.dynstr\0.gnu.version_r\0.shstrtab\0");
        const int headerSize = 64;
        int dynstrOffset = headerSize;
        int verneedOffset = dynstrOffset + dynstr.Count;
        int shstrOffset = verneedOffset + verneed.Count;
        int shoff = (shstrOffset + shstrtab.Length + 7) / 8 * 8;

        var file = new byte[shoff + 4 * 64];
        file[0] = 0x7f; file[1] = (byte)'E'; file[2] = (byte)'L'; file[3] = (byte)'F';
        file[4] = 2; file[5] = 1; file[6] = 1;
        Put(file, 0x10, U16(3));            // ET_DYN
        Put(file, 0x12, U16(62));           // EM_X86_64
        Put(file, 0x28, BitConverter.GetBytes((ulong)shoff));
        Put(file, 0x34, U16(headerSize));
        Put(file, 0x3A, U16(64));
        Put(file, 0x3C, U16(4));
        Put(file, 0x3E, U16(3));
        Put(file, dynstrOffset, [.. dynstr]);
        Put(file, verneedOffset, [.. verneed]);
        Put(file, shstrOffset, shstrtab);

        Section(file, shoff, 1, name: 1, type: 3, offset: dynstrOffset, size: dynstr.Count, link: 0, info: 0);
        Section(file, shoff, 2, name: 9, type: 0x6ffffffe, offset: verneedOffset, size: verneed.Count, link: 1, info: (uint)needs.Length);
        Section(file, shoff, 3, name: 24, type: 3, offset: shstrOffset, size: shstrtab.Length, link: 0, info: 0);
        return file;
    }

    private static void Section(byte[] file, int shoff, int index, uint name, uint type, int offset, int size, uint link, uint info)
    {
        int h = shoff + 64 * index;
        Put(file, h, U32(name));
        Put(file, h + 4, U32(type));
        Put(file, h + 24, BitConverter.GetBytes((ulong)offset));
        Put(file, h + 32, BitConverter.GetBytes((ulong)size));
        Put(file, h + 40, U32(link));
        Put(file, h + 44, U32(info));
    }

    private static void Put(byte[] file, int at, byte[] bytes) => bytes.CopyTo(file, at);

    private static byte[] U16(ushort v) => BitConverter.GetBytes(v);

    private static byte[] U32(uint v) => BitConverter.GetBytes(v);
}
