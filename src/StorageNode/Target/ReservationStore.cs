using System.Text.Json;
using Microsoft.Extensions.Logging;
using StorageNode.Support;

namespace StorageNode.Target;

/// <summary>
/// Persist Through Power Loss: the reservation state of every namespace this node owns, kept as one small JSON file per
/// namespace in the node's state directory (<c>Node:StateDirectory</c>) while its PTPL is set, and removed when it is
/// cleared. Written whole to a temporary file, flushed to the device, then renamed over the old one, so a crash leaves
/// either the old state or the new.
/// </summary>
public sealed class ReservationStore(string directory, string nodeName, ILogger log)
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public string Directory { get; } = directory;

    /// <summary>The file of one namespace: the node, the subsystem NQN (made safe for a file name) and the NSID.</summary>
    public string PathFor(Subsystem s, uint nsid) => StateFile.PathOf(Directory, nodeName, s.Nqn, nsid, "reservation.json");

    /// <summary>Makes the namespace's PTPL settable, restores what was kept for it, and keeps it from now on.</summary>
    public void Attach(Subsystem s, Namespace ns)
    {
        ReservationState state = ns.Reservations;
        string path = PathFor(s, ns.Nsid);
        string nguid = Convert.ToHexString(ns.Nguid);
        state.PtplCapable = true;
        if (File.Exists(path))
        {
            try
            {
                ReservationState.Saved? saved = JsonSerializer.Deserialize<ReservationState.Saved>(File.ReadAllBytes(path), Json);
                if (saved is { Nguid: string kept } && kept != nguid)
                {
                    // The NSID was removed at run time and given to another namespace: the kept state is not its own.
                    log.LogWarning("{Nqn} namespace {Nsid}: the kept reservation state in {Path} belongs to another namespace (NGUID {Kept}, this one {Nguid}); starting without it",
                        s.Nqn, ns.Nsid, path, kept, nguid);
                }
                else if (saved is { Ptpl: true })
                {
                    state.Restore(saved);
                    log.LogInformation("{Nqn} namespace {Nsid}: reservation state restored from {Path} ({Count} registrants, type {Type})",
                        s.Nqn, ns.Nsid, path, saved.Registrants.Length, saved.Type);
                }
            }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
            {
                log.LogError("{Nqn} namespace {Nsid}: the kept reservation state in {Path} cannot be read ({Error}); starting without it",
                    s.Nqn, ns.Nsid, path, e.Message);
            }
        }
        state.Changed += st => Save(st, path, nguid);
    }

    private void Save(ReservationState state, string path, string nguid)
    {
        try
        {
            ReservationState.Saved saved = state.Snapshot() with { Nguid = nguid };
            if (!saved.Ptpl)
            {
                StateFile.Delete(path);
                return;
            }
            StateFile.Replace(path, JsonSerializer.SerializeToUtf8Bytes(saved, Json));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log.LogError("the reservation state cannot be kept in {Path}: {Error}", path, e.Message);
        }
    }
}
