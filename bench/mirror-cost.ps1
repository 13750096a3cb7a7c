#!/usr/bin/env pwsh
# The mirror's cost alone (the section of run-bench.ps1 that build.ps1 bench reports): 4 KiB random writes through
# node A to the namespace it owns, the default pair with Cluster:Mirror against without, alternately, and the
# machine's loopback round trip (bench/limit's QD1, when built) interleaved with them.
#   dotnet pwsh bench/mirror-cost.ps1 [-Pairs 5] [-Seconds 3] [-Depths 1,32] [-NodeArgs --Node:PollMode=interrupt]   (after build.ps1 build)
[CmdletBinding()]
param([int]$Pairs = 5, [double]$Seconds = 3, [int[]]$Depths = @(1, 32), [string]$Configuration = 'Release',
    # Configuration overrides for both nodes, e.g. --Node:PollMode=interrupt
    [string[]]$NodeArgs = @())
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$Root = Split-Path -Parent $PSScriptRoot
$Out = Join-Path $Root 'artifacts/bench'
New-Item -ItemType Directory -Force $Out | Out-Null
. (Join-Path $PSScriptRoot 'common.ps1')
$NodeDll = Join-Path $Root "src/StorageNode/bin/$Configuration/net10.0/storagenode.dll"
$PerfDll = Join-Path $Root "src/Perf/bin/$Configuration/net10.0/sn-perf.dll"
$r = Measure-MirrorCost $Root $NodeDll $PerfDll $Out $Pairs $Seconds $Depths $NodeArgs
Write-Host ("loopback round trip (limit, QD1): {0:0.0} us" -f $r.rtt_us)
foreach ($k in @($r.Keys | Where-Object { $_ -like 'qd*' })) {
    $x = $r[$k]
    $rtts = if ($r.rtt_us -gt 0) { " = {0:0.0} round trips" -f ($x.added_us / $r.rtt_us) } else { "" }
    Write-Host ("{0}: unmirrored {1:N0} IOPS {2:0.0} us | mirrored {3:N0} IOPS {4:0.0} us | IOPS ratio {5:0.00}, added {6:0.0} us{7} (medians of {8} pairs)" -f
        $k.ToUpper(), $x.plain_iops, $x.plain_mean_us, $x.mirrored_iops, $x.mirrored_mean_us, $x.iops_ratio, $x.added_us, $rtts, $Pairs)
    if ($x.Contains('floor_added_us')) {
        Write-Host ("{0} floor (bench/limit, a relay with no work of its own in place of node A, yielding when idle): IOPS ratio {1:0.00}, added {2:0.0} us" -f
            $k.ToUpper(), $x.floor_iops_ratio, $x.floor_added_us)
    }
}
