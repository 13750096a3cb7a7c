using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>
/// Get Features and Set Features for every mandatory and commonly queried feature, with each value of Select
/// (current, default, saved, supported capabilities), as SPDK's host and nvme-cli ask for them.
/// </summary>
public sealed class FeaturesTests : IDisposable
{
    private readonly TestNode _node = new();
    private readonly NvmeHost _host;
    private readonly Guid _hostId = Guid.NewGuid();

    public FeaturesTests() => _host = _node.Connect(new NvmeHostOptions { HostId = _hostId });

    public void Dispose()
    {
        _host.Dispose();
        _node.Dispose();
    }

    private static readonly byte[] Dword0Features =
    [
        FeatureId.Arbitration, FeatureId.PowerManagement, FeatureId.TemperatureThreshold, FeatureId.ErrorRecovery,
        FeatureId.VolatileWriteCache, FeatureId.NumberOfQueues, FeatureId.InterruptCoalescing,
        FeatureId.InterruptVectorConfiguration, FeatureId.WriteAtomicityNormal, FeatureId.AsyncEventConfiguration,
        FeatureId.KeepAliveTimer,
    ];

    private ushort Fail(Action a)
    {
        var ex = Assert.Throws<NvmeCommandException>(a);
        return ex.Status.Code;
    }

    [Fact]
    public void EveryFeatureAnswersEverySelect()
    {
        foreach (byte fid in Dword0Features)
        {
            foreach (FeatureSelect sel in Enum.GetValues<FeatureSelect>())
            {
                try { _host.GetFeature(fid, sel); }
                catch (NvmeCommandException e) { Assert.Fail($"Get Features {fid:X2} select {sel}: {e.Message}"); }
            }
            // Changeable, not saveable, not namespace specific.
            Assert.Equal(FeatureCapabilities.Changeable, _host.GetFeature(fid, FeatureSelect.SupportedCapabilities));
        }
        foreach (FeatureSelect sel in Enum.GetValues<FeatureSelect>())
            _host.GetFeature(FeatureId.HostIdentifier, sel, cdw11: 1, data: new byte[16]);
        Assert.Equal(0u, _host.GetFeature(FeatureId.HostIdentifier, FeatureSelect.SupportedCapabilities, cdw11: 1, data: new byte[16]));
    }

    [Fact]
    public void ASetValueIsCurrentAndTheSavedValueIsTheDefault()
    {
        Assert.Equal(0x7u, _host.GetFeature(FeatureId.Arbitration));
        const uint arbitration = 0x03_02_01_02; // HPW 3, MPW 2, LPW 1, AB 2
        _host.SetFeature(FeatureId.Arbitration, arbitration);
        Assert.Equal(arbitration, _host.GetFeature(FeatureId.Arbitration));
        Assert.Equal(0x7u, _host.GetFeature(FeatureId.Arbitration, FeatureSelect.Default));
        Assert.Equal(0x7u, _host.GetFeature(FeatureId.Arbitration, FeatureSelect.Saved)); // nothing is saveable

        _host.SetFeature(FeatureId.VolatileWriteCache, 0);
        Assert.Equal(0u, _host.GetFeature(FeatureId.VolatileWriteCache));
        Assert.Equal(1u, _host.GetFeature(FeatureId.VolatileWriteCache, FeatureSelect.Default));
        _host.SetFeature(FeatureId.WriteAtomicityNormal, 1);
        Assert.Equal(1u, _host.GetFeature(FeatureId.WriteAtomicityNormal));
        _host.SetFeature(FeatureId.InterruptCoalescing, 0x0A05);
        Assert.Equal(0x0A05u, _host.GetFeature(FeatureId.InterruptCoalescing));
        _host.SetFeature(FeatureId.ErrorRecovery, 30);
        Assert.Equal(30u, _host.GetFeature(FeatureId.ErrorRecovery));
        Assert.Equal(0u, _host.GetFeature(FeatureId.ErrorRecovery, FeatureSelect.Saved));

        // Saving is refused; a select value the specification reserves is an invalid field.
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.SetFeatures;
        sqe.Cdw10 = FeatureId.Arbitration | (1u << 31);
        Assert.Equal(CommandSpecificStatus.FeatureIdNotSaveable, _host.AdminCommand(sqe, default, DataDirection.None).StatusField.Code);
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.GetFeature(FeatureId.Arbitration, (FeatureSelect)4)));
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.GetFeature(0x55)));
    }

    [Fact]
    public void TemperatureThresholdsPerSelectorAndKind()
    {
        const uint under = 1u << 20;
        Assert.Equal(343u, _host.GetFeature(FeatureId.TemperatureThreshold) & 0xFFFF); // WCTEMP
        _host.SetFeature(FeatureId.TemperatureThreshold, 350);
        _host.SetFeature(FeatureId.TemperatureThreshold, under | 260);
        Assert.Equal(350u, _host.GetFeature(FeatureId.TemperatureThreshold) & 0xFFFF);
        Assert.Equal(under | 260, _host.GetFeature(FeatureId.TemperatureThreshold, cdw11: under));
        Assert.Equal(343u, _host.GetFeature(FeatureId.TemperatureThreshold, FeatureSelect.Default) & 0xFFFF);
        // Sensor 1 does not exist: its threshold reads 0. "All sensors" (Fh) sets the composite's too.
        Assert.Equal(0u, _host.GetFeature(FeatureId.TemperatureThreshold, cdw11: 1u << 16) & 0xFFFF);
        _host.SetFeature(FeatureId.TemperatureThreshold, (0xFu << 16) | 345);
        Assert.Equal(345u, _host.GetFeature(FeatureId.TemperatureThreshold) & 0xFFFF);
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.GetFeature(FeatureId.TemperatureThreshold, cdw11: 2u << 20)));
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.SetFeature(FeatureId.TemperatureThreshold, 9u << 16)));
    }

    [Fact]
    public void WhatCannotBeIsRefused()
    {
        // One power state; no DULBE; interrupt vectors only as many as queues.
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.SetFeature(FeatureId.PowerManagement, 1)));
        _host.SetFeature(FeatureId.PowerManagement, 0);
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.SetFeature(FeatureId.ErrorRecovery, 1u << 16)));
        _host.SetFeature(FeatureId.InterruptVectorConfiguration, 1 | (1u << 16));
        Assert.Equal(1 | (1u << 16), _host.GetFeature(FeatureId.InterruptVectorConfiguration, cdw11: 1));
        Assert.Equal(0u, _host.GetFeature(FeatureId.InterruptVectorConfiguration, cdw11: 0));
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.GetFeature(FeatureId.InterruptVectorConfiguration, cdw11: 0xFFFF)));
        // The Host Identifier is Connect's: read with EXHID set, never set.
        Assert.Equal(GenericStatus.InvalidField, Fail(() => _host.GetFeature(FeatureId.HostIdentifier, cdw11: 0, data: new byte[16])));
        Assert.Equal(GenericStatus.CommandSequenceError, Fail(() => _host.SetFeature(FeatureId.HostIdentifier, 1)));
    }

    [Fact]
    public void TheHostIdentifierIsTheOneConnectCarried()
    {
        var data = new byte[16];
        _host.GetFeature(FeatureId.HostIdentifier, cdw11: 1, data: data);
        Assert.Equal(_hostId, new Guid(data, bigEndian: true));
    }

    [Fact]
    public void ADiscoveryControllerHasOnlyItsFeatures()
    {
        using NvmeHost d = _node.Connect(new NvmeHostOptions { IoQueues = 0 }, WellKnownNqn.Discovery);
        Assert.Equal(FeatureCapabilities.Changeable, d.GetFeature(FeatureId.KeepAliveTimer, FeatureSelect.SupportedCapabilities));
        d.GetFeature(FeatureId.AsyncEventConfiguration, FeatureSelect.Saved);
        var ex = Assert.Throws<NvmeCommandException>(() => d.GetFeature(FeatureId.Arbitration));
        Assert.Equal(GenericStatus.InvalidField, ex.Status.Code);
    }
}
