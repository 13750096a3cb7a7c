using System.Diagnostics;
using Microsoft.Extensions.Configuration;
using StorageNode.Config;
using StorageNode.Reactors;

namespace StorageNode.Tests;

public class ConfigTests
{
    internal static Dictionary<string, string?> Valid() => new()
    {
        ["Node:Name"] = "A",
        ["Listeners:0:Address"] = "127.0.0.1",
        ["Listeners:0:Port"] = "4420",
        ["Bdevs:0:Name"] = "Malloc0",
        ["Bdevs:0:Type"] = "malloc",
        ["Bdevs:0:SizeMiB"] = "8",
        ["Subsystems:0:Nqn"] = "nqn.2026-11.io.storagenode:cfg",
        ["Subsystems:0:Namespaces:0:Bdev"] = "Malloc0",
    };

    internal static NodeConfig Load(Dictionary<string, string?> d) => NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(d).Build());

    private static ConfigException Bad(string key, string? value, Dictionary<string, string?>? start = null)
    {
        var d = start ?? Valid();
        d[key] = value;
        return Assert.Throws<ConfigException>(() => Load(d));
    }

    [Fact]
    public void ValidConfigurationWithDefaults()
    {
        NodeConfig c = Load(Valid());
        Assert.Equal("A", c.Name);
        Assert.Equal(PollMode.Adaptive, c.PollMode);
        Assert.Equal(1, c.ReactorCount);
        SubsystemConfig s = Assert.Single(c.Subsystems);
        NamespaceConfig ns = Assert.Single(s.Namespaces);
        Assert.Equal(1u, ns.Nsid);
        Assert.Equal(1u, ns.AnaGroup);
        // Identifiers derive from NQN + NSID, so two nodes configured alike report the same ones.
        NamespaceConfig again = Load(Valid()).Subsystems[0].Namespaces[0];
        Assert.Equal(ns.Nguid, again.Nguid);
        Assert.Equal(ns.Uuid, again.Uuid);
        Assert.Equal(s.SerialNumber, Load(Valid()).Subsystems[0].SerialNumber);
    }

    [Theory]
    [InlineData("Node:Nmae", "x", "Node:Nmae")]
    [InlineData("Bogus", "1", "Bogus")]
    [InlineData("Subsystems:0:Namespaces:0:Colour", "red", "Subsystems:0:Namespaces:0:Colour")]
    [InlineData("Target:MaxQueueDepth", "1", "Target:MaxQueueDepth")]
    [InlineData("Target:MaxQueueDepth", "lots", "Target:MaxQueueDepth")]
    [InlineData("Target:MaxIoSize", "3000000", "Target:MaxIoSize")]
    [InlineData("Node:PollMode", "sometimes", "Node:PollMode")]
    [InlineData("Node:Reactors", "0", "Node:Reactors")]
    [InlineData("Listeners:0:Address", "not-an-ip", "Listeners:0:Address")]
    [InlineData("Listeners:0:Port", "70000", "Listeners:0:Port")]
    [InlineData("Listeners:0:Transport", "fc", "Listeners:0:Transport")]
    [InlineData("Bdevs:0:Type", "tape", "Bdevs:0:Type")]
    [InlineData("Bdevs:0:BlockSize", "1000", "Bdevs:0:BlockSize")]
    [InlineData("Bdevs:0:SizeMiB", null, "Bdevs:0:SizeMiB")]
    [InlineData("Subsystems:0:Nqn", "iqn.bad", "Subsystems:0:Nqn")]
    [InlineData("Subsystems:0:Nqn", "nqn.2014-08.org.nvmexpress.discovery", "Subsystems:0:Nqn")]
    [InlineData("Subsystems:0:SerialNumber", "012345678901234567890", "Subsystems:0:SerialNumber")]
    [InlineData("Subsystems:0:ControllerIdMax", "65535", "Subsystems:0:ControllerIdMax")]
    [InlineData("Subsystems:0:Namespaces:0:Bdev", "Missing", "Subsystems:0:Namespaces:0:Bdev")]
    [InlineData("Subsystems:0:Namespaces:0:Nsid", "0", "Subsystems:0:Namespaces:0:Nsid")]
    [InlineData("Subsystems:0:Namespaces:0:Nguid", "1234", "Subsystems:0:Namespaces:0:Nguid")]
    [InlineData("Subsystems:0:Namespaces:0:Uuid", "not-a-uuid", "Subsystems:0:Namespaces:0:Uuid")]
    [InlineData("Subsystems:0:AllowAnyHost", "maybe", "Subsystems:0:AllowAnyHost")]
    public void InvalidSettingNamesItsKey(string key, string? value, string expectedKey)
    {
        ConfigException e = Bad(key, value);
        Assert.Equal(expectedKey, e.Key, ignoreCase: true);
        Assert.Contains(expectedKey, e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void CrossChecks()
    {
        var d = Valid();
        d["Subsystems:0:Namespaces:1:Nsid"] = "1";
        d["Subsystems:0:Namespaces:1:Bdev"] = "Malloc0";
        ConfigException e = Assert.Throws<ConfigException>(() => Load(d));
        Assert.Equal("Subsystems:0:Namespaces:1:Nsid", e.Key);

        d = Valid();
        d["Subsystems:0:ControllerIdMin"] = "10";
        d["Subsystems:0:ControllerIdMax"] = "5";
        Assert.Equal("Subsystems:0:ControllerIdMax", Assert.Throws<ConfigException>(() => Load(d)).Key);

        d = Valid();
        d["Listeners:1:Address"] = "127.0.0.1";
        d["Listeners:1:Port"] = "4420";
        Assert.Equal("Listeners:1:Port", Assert.Throws<ConfigException>(() => Load(d)).Key);

        d = Valid();
        d["Target:MaxIoSize"] = "2097152";
        Assert.Equal("Target:MaxIoSize", Assert.Throws<ConfigException>(() => Load(d)).Key);

        d = Valid();
        d["Subsystems:0:AllowAnyHost"] = "false";
        Assert.Equal("Subsystems:0:Hosts", Assert.Throws<ConfigException>(() => Load(d)).Key);
    }

    [Fact]
    public void ExecutableStopsWithOneMessageNamingTheKey()
    {
        (int exitCode, string stdout, string err) = NodeExecutable.RunWithConfig("""{ "Node": { "Name": "A", "Reactors": 99999 } }""");
        Assert.Equal(2, exitCode);
        Assert.Equal("storagenode: invalid configuration: Node:Reactors: 99999 is outside 1..64", err.Trim());
        Assert.Equal("", stdout.Trim());
    }
}
