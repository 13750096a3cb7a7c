using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace StorageNode.Interop;

/// <summary>libsnshim: the project's C shim (native/), found next to this assembly.</summary>
public static unsafe partial class Shim
{
    internal const string Lib = "snshim";

    public const uint FeatureUring = 0x1;
    public const uint FeatureVerbs = 0x2;

    private static readonly Lazy<(bool Loaded, uint Features, string Reason)> State = new(Probe);

    /// <summary>True when libsnshim could be loaded.</summary>
    public static bool IsAvailable => State.Value.Loaded;

    /// <summary>Why the shim (or a feature) is unavailable, for start-up messages.</summary>
    public static string UnavailableReason => State.Value.Reason;

    public static bool Has(uint feature) => State.Value.Loaded && (State.Value.Features & feature) != 0;

    // The resolver must be in place before the first call into libsnshim from this assembly.
#pragma warning disable CA2255
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void RegisterResolver()
    {
        NativeLibrary.SetDllImportResolver(typeof(Shim).Assembly, Resolve);
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name != Lib && name != Verbs.Lib) return IntPtr.Zero;
        string file = $"lib{name}.so";
        foreach (string dir in new[] { AppContext.BaseDirectory, Path.GetDirectoryName(assembly.Location) ?? "" })
        {
            string candidate = Path.Combine(dir, file);
            if (File.Exists(candidate) && NativeLibrary.TryLoad(candidate, out IntPtr h)) return h;
        }
        return NativeLibrary.TryLoad(file, assembly, path, out IntPtr handle) ? handle : IntPtr.Zero;
    }

    private static (bool, uint, string) Probe()
    {
        try
        {
            return (true, sn_features(), "");
        }
        catch (DllNotFoundException e)
        {
            return (false, 0, $"libsnshim.so not found next to {AppContext.BaseDirectory} ({e.Message}); build it with 'build.ps1 build'");
        }
        catch (EntryPointNotFoundException e)
        {
            return (false, 0, $"libsnshim.so is out of date: {e.Message}");
        }
    }

    [LibraryImport(Lib)]
    public static partial uint sn_version();

    [LibraryImport(Lib)]
    private static partial uint sn_features();
}

/// <summary>One io_uring completion (layout of struct sn_cqe in native/shim/sn_shim.h).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SnCompletion
{
    public ulong UserData;
    public int Result;
    public uint Flags;
}

/// <summary>io_uring entry points of libsnshim.</summary>
public static unsafe partial class Uring
{
    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_create")]
    public static partial IntPtr Create(uint entries, uint flags, out int error);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_destroy")]
    public static partial void Destroy(IntPtr ring);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_register_buffers")]
    public static partial int RegisterBuffers(IntPtr ring, Libc.IoVec* iov, uint count);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_register_eventfd")]
    public static partial int RegisterEventFd(IntPtr ring, int fd);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_sq_space_left")]
    public static partial uint SqSpaceLeft(IntPtr ring);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_prep_read")]
    public static partial int PrepRead(IntPtr ring, int fd, void* buf, uint len, ulong offset, int bufIndex, ulong userData);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_prep_write")]
    public static partial int PrepWrite(IntPtr ring, int fd, void* buf, uint len, ulong offset, int bufIndex, int rwFlags, ulong userData);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_prep_fsync")]
    public static partial int PrepFsync(IntPtr ring, int fd, uint fsyncFlags, ulong userData);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_prep_fallocate")]
    public static partial int PrepFallocate(IntPtr ring, int fd, int mode, ulong offset, ulong length, ulong userData);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_submit")]
    public static partial int Submit(IntPtr ring);

    [LibraryImport(Shim.Lib, EntryPoint = "sn_uring_reap")]
    public static partial int Reap(IntPtr ring, SnCompletion* completions, uint max);

    public const uint FsyncDataSync = 1;           // IORING_FSYNC_DATASYNC
    public const int FallocKeepSize = 0x01;        // FALLOC_FL_KEEP_SIZE
    public const int FallocPunchHole = 0x02;       // FALLOC_FL_PUNCH_HOLE
    public const int FallocZeroRange = 0x10;       // FALLOC_FL_ZERO_RANGE
    public const int RwfDsync = 0x2;               // RWF_DSYNC
}

/// <summary>File entry points used by the File bdev.</summary>
public static unsafe partial class FileIo
{
    public const int O_RDONLY = 0x0;
    public const int O_RDWR = 0x2;
    public const int O_DIRECTORY = 0x10000;
    public const int O_CREAT = 0x40;
    public const int O_DIRECT = 0x4000;
    public const int O_CLOEXEC = 0x80000;
    public const int EINVAL = 22;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "pread", SetLastError = true)]
    public static partial nint PRead(int fd, void* buf, nuint count, long offset);

    [LibraryImport("libc", EntryPoint = "pwrite", SetLastError = true)]
    public static partial nint PWrite(int fd, void* buf, nuint count, long offset);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(int fd);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    public static partial int FSync(int fd);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    public static partial int FAllocate(int fd, int mode, long offset, long length);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int FTruncate(int fd, long length);
}
