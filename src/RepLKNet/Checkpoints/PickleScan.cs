using System.Buffers.Binary;

namespace RepLKNet.Checkpoints;

/// <summary>
/// Walks a pickle's opcodes (protocols 0–5) without building anything and rejects one whose length-prefixed
/// arguments claim more bytes than remain, or that has an unknown opcode or no STOP. Razorvine's unpickler allocates a
/// string, bytes or long by its declared length before reading it, so without this walk a 30-byte <c>data.pkl</c>
/// claiming a 2 GB string makes it allocate 2 GB (or throw <see cref="OutOfMemoryException"/>, which nothing above
/// may catch). After the walk every allocation the unpickler makes is bounded by the pickle's own size.
/// </summary>
internal static class PickleScan
{
    /// <summary>Throws <see cref="InvalidDataException"/> when <paramref name="pickle"/> is not a well-formed opcode stream.</summary>
    public static void Validate(ReadOnlySpan<byte> pickle)
    {
        int at = 0;
        while (at < pickle.Length)
        {
            int start = at;
            byte op = pickle[at++];
            long argument = op switch
            {
                // No argument.
                (byte)'(' or (byte)'0' or (byte)'1' or (byte)'2' or (byte)'N' or (byte)'Q' or (byte)'R' or (byte)'a' or (byte)'b' or
                    (byte)'d' or (byte)'}' or (byte)'e' or (byte)'l' or (byte)']' or (byte)'o' or (byte)'s' or (byte)'t' or (byte)')' or
                    (byte)'u' or 0x81 or 0x85 or 0x86 or 0x87 or 0x88 or 0x89 or 0x8f or 0x90 or 0x91 or 0x92 or 0x93 or 0x94 or
                    0x97 or 0x98 => 0,
                (byte)'.' => -1,

                // Fixed-size arguments.
                0x80 or (byte)'K' or (byte)'h' or (byte)'q' or 0x82 => 1,
                (byte)'M' or 0x83 => 2,
                (byte)'J' or (byte)'j' or (byte)'r' or 0x84 => 4,
                (byte)'G' or 0x95 => 8,

                // Newline-terminated arguments (GLOBAL and INST have two lines).
                (byte)'I' or (byte)'L' or (byte)'F' or (byte)'S' or (byte)'V' or (byte)'P' or (byte)'g' or (byte)'p' => Line(pickle, at, 1),
                (byte)'c' or (byte)'i' => Line(pickle, at, 2),

                // Length-prefixed arguments: the prefix, then that many bytes.
                (byte)'U' or (byte)'C' or 0x8c or 0x8a => Prefixed(pickle, at, 1, op),
                (byte)'T' or (byte)'X' or (byte)'B' or 0x8b => Prefixed(pickle, at, 4, op),
                0x8d or 0x8e or 0x96 => Prefixed(pickle, at, 8, op),
                _ => throw new InvalidDataException($"data.pkl has an unknown pickle opcode 0x{op:x2} at byte {start}"),
            };

            if (argument < 0)
            {
                return;
            }

            if (argument > pickle.Length - at)
            {
                throw new InvalidDataException($"data.pkl ends inside the argument of opcode 0x{op:x2} at byte {start}");
            }

            at += (int)argument;
        }

        throw new InvalidDataException("data.pkl ends without a STOP opcode");
    }

    private static long Line(ReadOnlySpan<byte> pickle, int at, int lines)
    {
        int end = at;
        for (int i = 0; i < lines; i++)
        {
            int newline = pickle[end..].IndexOf((byte)'\n');
            if (newline < 0)
            {
                return long.MaxValue;
            }

            end += newline + 1;
        }

        return end - at;
    }

    private static long Prefixed(ReadOnlySpan<byte> pickle, int at, int width, byte op)
    {
        if (pickle.Length - at < width)
        {
            return long.MaxValue;
        }

        var prefix = pickle.Slice(at, width);
        long length = width switch
        {
            1 => prefix[0],
            4 => op is (byte)'T' or 0x8b ? BinaryPrimitives.ReadInt32LittleEndian(prefix) : BinaryPrimitives.ReadUInt32LittleEndian(prefix),
            _ => (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(prefix), long.MaxValue),
        };

        if (length < 0)
        {
            throw new InvalidDataException($"data.pkl has a negative length ({length}) for opcode 0x{op:x2} at byte {at - 1}");
        }

        if (length > pickle.Length - at - width)
        {
            throw new InvalidDataException($"data.pkl's opcode 0x{op:x2} at byte {at - 1} claims {length} bytes but only {pickle.Length - at - width} remain");
        }

        return width + length;
    }
}
