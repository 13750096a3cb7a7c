using System.Buffers.Binary;
using StorageNode.Nvme.Spec;

namespace StorageNode.Nvme.Host;

/// <summary>One registrant in a Reservation Report (extended format).</summary>
public readonly record struct Registrant(ushort Cntlid, bool HoldsReservation, ulong Key, Guid HostId);

/// <summary>A Reservation Report's data (extended format: 128-bit host identifiers), parsed.</summary>
public sealed record ReservationStatus(uint Generation, ReservationType Type, int RegisteredControllers, bool Ptpl, IReadOnlyList<Registrant> Registrants)
{
    public static ReservationStatus Parse(ReadOnlySpan<byte> data)
    {
        int count = BinaryPrimitives.ReadUInt16LittleEndian(data[ReservationReport.RegisteredControllers..]);
        var list = new List<Registrant>();
        for (int i = 0; i < count; i++)
        {
            int off = ReservationReport.ExtendedHeaderSize + i * ReservationReport.ExtendedEntrySize;
            if (off + ReservationReport.ExtendedEntrySize > data.Length) break;
            ReadOnlySpan<byte> e = data.Slice(off, ReservationReport.ExtendedEntrySize);
            list.Add(new Registrant(BinaryPrimitives.ReadUInt16LittleEndian(e[ReservationReport.Cntlid..]),
                (e[ReservationReport.Status] & ReservationReport.HoldsReservation) != 0,
                BinaryPrimitives.ReadUInt64LittleEndian(e[ReservationReport.Key..]),
                new Guid(e.Slice(ReservationReport.HostId, 16), bigEndian: true)));
        }
        return new ReservationStatus(BinaryPrimitives.ReadUInt32LittleEndian(data[ReservationReport.Generation..]),
            (ReservationType)data[ReservationReport.Type], count, data[ReservationReport.PtplState] != 0, list);
    }
}
