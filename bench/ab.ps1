#!/usr/bin/env pwsh
# A/B comparison of two builds of StorageNode on this machine: the tree this script is in ("after") against another
# built checkout ("before", e.g. a git worktree of an earlier commit built with build.ps1 build). Each scenario runs as
# interleaved pairs (before-after, after-before, ...), each run a fresh node with its own sn-perf, pinned as
# run-bench.ps1 pins them (target on CPU 0, load on CPU 1); the report is the median of the per-pair ratios
# after / before, so that the machine's drift between pairs cancels out. Also the HA pair's proxied path (adaptive
# polling, two nodes, as run-bench.ps1 measures it). Writes artifacts/bench/ab.md.
#   dotnet pwsh bench/ab.ps1 -Before /tmp/before [-Pairs 5] [-Seconds 3]
[CmdletBinding()]
param(
    [Parameter(Mandatory)][string]$Before,
    # Only the scenarios whose name contains this (default: all).
    [string]$Only = '',
    [int]$Pairs = 5,
    [double]$Seconds = 3,
    [string]$Configuration = 'Release'
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$After = Split-Path -Parent $PSScriptRoot
$Before = (Resolve-Path $Before).Path
$Out = Join-Path $After 'artifacts/bench'
New-Item -ItemType Directory -Force $Out | Out-Null

function Tree([string]$root) {
    $t = @{
        Root = $root
        Node = Join-Path $root "src/StorageNode/bin/$Configuration/net10.0/storagenode.dll"
        Perf = Join-Path $root "src/Perf/bin/$Configuration/net10.0/sn-perf.dll"
        Commit = (& git -C $root rev-parse --short HEAD).Trim()
    }
    if (& git -C $root status --porcelain --untracked-files=no) { $t.Commit += '+uncommitted' }
    foreach ($f in $t.Node, $t.Perf) { if (-not (Test-Path $f)) { throw "$f is missing: build $root first (build.ps1 build)" } }
    return $t
}
$trees = [ordered]@{ before = (Tree $Before); after = (Tree $After) }

. (Join-Path $PSScriptRoot 'common.ps1')

function Perf([int]$cpu, $tree, [string[]]$perfArgs) { return Run-Json $cpu (@('dotnet', $tree.Perf) + $perfArgs + @('--json')) }

# One measured run of a single node (bench/config/bench-node.json of the tree), after a 1 s warm-up.
function Single-Run($tree, [string[]]$load) {
    $node = Start-Pinned 0 @('dotnet', $tree.Node, '--config', (Join-Path $tree.Root 'bench/config/bench-node.json'))
    try {
        Wait-Port 4460
        $base = @('-a', '127.0.0.1', '-s', '4460', '-n', 'nqn.2026-11.io.storagenode:bench', '--poll', 'busy')
        $null = Perf 1 $tree ($base + $load + @('-t', '1'))
        return Perf 1 $tree ($base + $load + @('-t', "$Seconds"))
    } finally { Stop-Proc $node }
}

# One measured run through the HA pair (config/node-a.json, node-b.json of the tree): NSID 2 is relayed by A to B.
function Pair-Run($tree, [int]$nsid, [int]$qd) {
    $a = Start-Process -FilePath 'dotnet' -ArgumentList (@($tree.Node) + (Pair-NodeArgs (Join-Path $tree.Root 'config/node-a.json'))) -PassThru -RedirectStandardOutput (Join-Path $Out 'ab-node-a.log') -RedirectStandardError (Join-Path $Out 'ab-node-a.err')
    $b = Start-Process -FilePath 'dotnet' -ArgumentList (@($tree.Node) + (Pair-NodeArgs (Join-Path $tree.Root 'config/node-b.json'))) -PassThru -RedirectStandardOutput (Join-Path $Out 'ab-node-b.log') -RedirectStandardError (Join-Path $Out 'ab-node-b.err')
    try {
        Wait-Port 4420; Wait-Port 4421; Start-Sleep -Seconds 2
        $base = @('-a', '127.0.0.1', '-s', '4420', '-n', 'nqn.2026-11.io.storagenode:pair', '--nsid', "$nsid", '-w', 'randread', '-b', '4k', '-q', "$qd", '--poll', 'adaptive')
        $null = Perf -1 $tree ($base + @('-t', '1'))
        return Perf -1 $tree ($base + @('-t', "$Seconds"))
    } finally { Stop-Proc $a; Stop-Proc $b }
}

$scenarios = @(
    @{ Name = '4 KiB random read, QD1'; Run = { param($t) Single-Run $t @('-w', 'randread', '-b', '4k', '-q', '1') } },
    @{ Name = '4 KiB random read, QD32'; Run = { param($t) Single-Run $t @('-w', 'randread', '-b', '4k', '-q', '32') } },
    @{ Name = '4 KiB random read, QD128, 1 MiB working set'; Run = { param($t) Single-Run $t @('-w', 'randread', '-b', '4k', '-q', '128', '--size', '1m') } },
    @{ Name = '4 KiB random write, QD32'; Run = { param($t) Single-Run $t @('-w', 'randwrite', '-b', '4k', '-q', '32') } },
    @{ Name = '128 KiB sequential write, QD8 (R2T)'; Run = { param($t) Single-Run $t @('-w', 'write', '-b', '128k', '-q', '8') } },
    @{ Name = '128 KiB sequential read, QD8'; Run = { param($t) Single-Run $t @('-w', 'read', '-b', '128k', '-q', '8') } },
    @{ Name = 'HA pair, proxied 4 KiB random read, QD1'; Run = { param($t) Pair-Run $t 2 1 } },
    @{ Name = 'HA pair, proxied 4 KiB random read, QD32'; Run = { param($t) Pair-Run $t 2 32 } }
)

$rows = @()
foreach ($sc in @($scenarios | Where-Object { $_.Name -like "*$Only*" })) {
    Write-Host "==> $($sc.Name): $Pairs interleaved pairs of $Seconds s"
    $iopsRatios = @(); $latRatios = @(); $b = @(); $a = @()
    for ($i = 0; $i -lt $Pairs; $i++) {
        # ABBA order: even pairs run before first, odd pairs after first, so that a bias of the first or second run
        # of a pair (a port in TIME_WAIT, caches, the other process's exit) cancels out.
        if ($i % 2 -eq 0) { $rb = & $sc.Run $trees.before; $ra = & $sc.Run $trees.after }
        else { $ra = & $sc.Run $trees.after; $rb = & $sc.Run $trees.before }
        $b += $rb; $a += $ra
        $iopsRatios += $ra.iops / $rb.iops
        $latRatios += $ra.mean_us / $rb.mean_us
        Write-Host ("    pair {0}: before {1:N0} IOPS {2:0.0} us | after {3:N0} IOPS {4:0.0} us" -f ($i + 1), $rb.iops, $rb.mean_us, $ra.iops, $ra.mean_us)
    }
    $rows += [ordered]@{
        name = $sc.Name
        before_iops = Median ($b | ForEach-Object { $_.iops }); after_iops = Median ($a | ForEach-Object { $_.iops })
        before_mean_us = Median ($b | ForEach-Object { $_.mean_us }); after_mean_us = Median ($a | ForEach-Object { $_.mean_us })
        iops_ratio = Median $iopsRatios; iops_ratio_min = ($iopsRatios | Measure-Object -Minimum).Minimum; iops_ratio_max = ($iopsRatios | Measure-Object -Maximum).Maximum
        latency_ratio = Median $latRatios
    }
}

$md = @("# A/B: $($trees.after.Commit) (after) against $($trees.before.Commit) (before)", '',
    "Medians of $Pairs interleaved pairs of $Seconds s runs, $Cpus CPUs; ratio = after / before per pair, then the median (min-max).", '',
    '| workload | before IOPS | after IOPS | IOPS ratio | mean latency ratio |', '|---|---|---|---|---|')
foreach ($r in $rows) {
    $md += ('| {0} | {1:N0} | {2:N0} | {3:0.00} ({4:0.00}-{5:0.00}) | {6:0.00} |' -f $r.name, $r.before_iops, $r.after_iops, $r.iops_ratio, $r.iops_ratio_min, $r.iops_ratio_max, $r.latency_ratio)
}
$md | Set-Content (Join-Path $Out 'ab.md')
$md | ForEach-Object { Write-Host $_ }
