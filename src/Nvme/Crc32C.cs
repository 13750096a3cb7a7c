using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using ArmCrc = System.Runtime.Intrinsics.Arm.Crc32;

namespace StorageNode.Nvme;

/// <summary>
/// CRC32C (Castagnoli) as NVMe/TCP uses it for header and data digests: initial value FFFFFFFFh,
/// final XOR FFFFFFFFh, stored little-endian. Uses the SSE4.2 / ARMv8 CRC instructions.
/// </summary>
public static class Crc32C
{
    public const uint Seed = 0xFFFFFFFF;

    public static uint Compute(ReadOnlySpan<byte> data) => Finish(Update(Seed, data));

    public static uint Finish(uint crc) => crc ^ 0xFFFFFFFF;

    /// <summary>Continues a running CRC (start from <see cref="Seed"/>, end with <see cref="Finish"/>).</summary>
    public static uint Update(uint crc, ReadOnlySpan<byte> data)
    {
        ref byte p = ref MemoryMarshal.GetReference(data);
        nuint len = (nuint)data.Length;
        nuint i = 0;
        if (Sse42.X64.IsSupported)
        {
            // Three independent streams hide the instruction's 3-cycle latency: each chunk is three
            // adjacent blocks whose CRCs are combined with precomputed shift tables.
            if (len >= ChunkBytes)
            {
                uint c0 = crc;
                for (; i + ChunkBytes <= len; i += ChunkBytes)
                {
                    ulong a = c0, b = 0, d = 0;
                    ref byte q = ref Unsafe.Add(ref p, i);
                    for (nuint j = 0; j < StreamBytes; j += 8)
                    {
                        a = Sse42.X64.Crc32(a, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref q, j)));
                        b = Sse42.X64.Crc32(b, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref q, j + StreamBytes)));
                        d = Sse42.X64.Crc32(d, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref q, j + 2 * StreamBytes)));
                    }
                    c0 = Shift((uint)a) ^ (uint)b;
                    c0 = Shift(c0) ^ (uint)d;
                }
                crc = c0;
            }
            ulong c = crc;
            for (; i + 8 <= len; i += 8)
                c = Sse42.X64.Crc32(c, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
            crc = (uint)c;
            for (; i < len; i++)
                crc = Sse42.Crc32(crc, Unsafe.Add(ref p, i));
            return crc;
        }
        if (ArmCrc.Arm64.IsSupported)
        {
            for (; i + 8 <= len; i += 8)
                crc = ArmCrc.Arm64.ComputeCrc32C(crc, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
            for (; i < len; i++)
                crc = ArmCrc.ComputeCrc32C(crc, Unsafe.Add(ref p, i));
            return crc;
        }
        for (; i + 8 <= len; i += 8)
            crc = BitOperations.Crc32C(crc, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
        for (; i < len; i++)
            crc = BitOperations.Crc32C(crc, Unsafe.Add(ref p, i));
        return crc;
    }

    public static unsafe uint Update(uint crc, byte* data, int length) => Update(crc, new ReadOnlySpan<byte>(data, length));

    private const nuint StreamBytes = 512;
    private const nuint ChunkBytes = 3 * StreamBytes;
    private const uint Poly = 0x82F63B78; // reflected Castagnoli polynomial

    // The raw CRC register is linear: crc(s, B) = crc(s, zeros(|B|)) ^ crc(0, B), and crc(s, zeros(n)) is
    // s * x^(8n) mod P. ShiftTable holds that map for n = StreamBytes, one 256-entry table per input byte.
    private static readonly uint[] ShiftTable = BuildShiftTable(StreamBytes);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Shift(uint crc)
    {
        uint[] t = ShiftTable;
        return t[crc & 0xFF] ^ t[256 + ((crc >> 8) & 0xFF)] ^ t[512 + ((crc >> 16) & 0xFF)] ^ t[768 + (crc >> 24)];
    }

    private static uint[] BuildShiftTable(nuint bytes)
    {
        uint k = XPow8N(bytes);
        var t = new uint[1024];
        for (int b = 0; b < 4; b++)
            for (uint v = 1; v < 256; v++)
                t[b * 256 + v] = MultiplyModP(k, v << (8 * b));
        return t;
    }

    // Reflected polynomial multiplication modulo P (bit 31 is x^0); 'a' must be non-zero.
    private static uint MultiplyModP(uint a, uint b)
    {
        uint m = 1u << 31, p = 0;
        for (; ; )
        {
            if ((a & m) != 0)
            {
                p ^= b;
                if ((a & (m - 1)) == 0) break;
            }
            m >>= 1;
            b = (b & 1) != 0 ? (b >> 1) ^ Poly : b >> 1;
        }
        return p;
    }

    // x^(8n) mod P, by square-and-multiply over the bits of n.
    private static uint XPow8N(nuint n)
    {
        uint result = 1u << 31; // x^0
        uint power = 1u << 23;  // x^8
        while (n != 0)
        {
            if ((n & 1) != 0) result = MultiplyModP(result, power);
            power = MultiplyModP(power, power);
            n >>= 1;
        }
        return result;
    }
}
