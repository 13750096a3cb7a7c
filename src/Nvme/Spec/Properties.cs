namespace StorageNode.Nvme.Spec;

/// <summary>Controller properties (registers) reached with Fabrics Property Get/Set.</summary>
public static class Property
{
    public const uint Cap = 0x00;   // 8 bytes
    public const uint Vs = 0x08;    // 4 bytes
    public const uint Intms = 0x0C; // not used over fabrics
    public const uint Intmc = 0x10; // not used over fabrics
    public const uint Cc = 0x14;    // 4 bytes
    public const uint Csts = 0x1C;  // 4 bytes
    public const uint Nssr = 0x20;  // 4 bytes

    public static int Size(uint offset) => offset switch
    {
        Cap => 8,
        Vs or Cc or Csts or Nssr => 4,
        _ => 0,
    };
}

/// <summary>Controller Capabilities.</summary>
public static class CapRegister
{
    /// <param name="mqes">Maximum queue entries supported, 0-based.</param>
    /// <param name="timeout500ms">Worst-case time to ready, in 500 ms units.</param>
    public static ulong Make(ushort mqes, byte timeout500ms)
    {
        ulong v = mqes;
        v |= 1UL << 16;                       // CQR: contiguous queues required
        v |= (ulong)timeout500ms << 24;        // TO
        v |= 1UL << 37;                        // CSS: NVM command set
        // DSTRD = 0, MPSMIN = 0 (4 KiB), MPSMAX = 0.
        return v;
    }

    public static ushort Mqes(ulong cap) => (ushort)cap;
    public static byte Timeout(ulong cap) => (byte)(cap >> 24);
}

public static class CcRegister
{
    public const uint Enable = 1u << 0;
    public static uint Css(uint cc) => (cc >> 4) & 0x7;
    public static uint Mps(uint cc) => (cc >> 7) & 0xF;
    public static uint Ams(uint cc) => (cc >> 11) & 0x7;
    public static uint Shn(uint cc) => (cc >> 14) & 0x3;
    public static uint Iosqes(uint cc) => (cc >> 16) & 0xF;
    public static uint Iocqes(uint cc) => (cc >> 20) & 0xF;

    public static uint Make(bool enable, uint shn = 0) =>
        (enable ? Enable : 0) | (shn << 14) | (6u << 16) | (4u << 20);
}

public static class CstsRegister
{
    public const uint Ready = 1u << 0;
    public const uint Fatal = 1u << 1;
    public const uint ShutdownMask = 3u << 2;
    public const uint ShutdownOccurring = 1u << 2;
    public const uint ShutdownComplete = 2u << 2;
}

public static class NvmeVersion
{
    public static uint Make(int major, int minor, int tertiary = 0) => (uint)((major << 16) | (minor << 8) | tertiary);
    public static readonly uint V1_4 = Make(1, 4);
}
