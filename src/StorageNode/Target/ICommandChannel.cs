namespace StorageNode.Target;

/// <summary>
/// A bdev channel that takes whole NVMe commands (see <see cref="Bdevs.Bdev.TakesWholeCommands"/>): the HA pair's
/// relay of a partner-owned namespace. It completes the command through <see cref="NvmfRequest.OnBdevComplete"/>.
/// </summary>
public interface ICommandChannel
{
    void Submit(NvmfRequest req);
}
