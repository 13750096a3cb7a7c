namespace StorageNode.Target;

/// <summary>
/// What the target needs from the HA pair to serve the partner on the interconnect listener: who may connect, the
/// pair's vendor-specific admin commands, and the partner's associations coming and going.
/// </summary>
public interface IInterconnectHandler
{
    /// <summary>Null when an interconnect Connect from this host and peer address may proceed, else why not (logged).</summary>
    string? RefusePartner(string hostNqn, Guid hostId, string peerAddress);

    /// <summary>True for the pair's vendor-specific admin opcodes (allowed only on interconnect associations).</summary>
    bool IsVendorCommand(byte opcode);

    /// <summary>Runs a vendor-specific admin command (reactor thread; it may complete the command later).</summary>
    void Execute(NvmfRequest req, Controller association);

    /// <summary>The partner connected an association (reactor thread; must not block).</summary>
    void OnAssociationCreated(Controller association);

    /// <summary>An association from the partner ended (any thread).</summary>
    void OnAssociationEnded(Controller association);
}
