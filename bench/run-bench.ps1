#!/usr/bin/env pwsh
# The perf comparison of build.ps1 bench: StorageNode against the machine's limit (bench/limit), as medians
# of interleaved pairs (limit run, our run, limit run, ...), each run pinned: target on CPU 0, load on CPU 1.
# Then the HA pair's proxied path against its direct path, interleaved the same way. Writes
# artifacts/bench/report.md, results.json and latency.png (gnuplot).
[CmdletBinding()]
param(
    [int]$Pairs = 5,
    [double]$Seconds = 3,
    [double]$GcSeconds = 30,
    [string]$Configuration = 'Release'
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$Root = Split-Path -Parent $PSScriptRoot
$Out = Join-Path $Root 'artifacts/bench'
New-Item -ItemType Directory -Force $Out | Out-Null
$Limit = Join-Path $Root 'artifacts/native/limit'
$NodeDll = Join-Path $Root "src/StorageNode/bin/$Configuration/net10.0/storagenode.dll"
$PerfDll = Join-Path $Root "src/Perf/bin/$Configuration/net10.0/sn-perf.dll"
$BenchNode = Join-Path $PSScriptRoot 'config/bench-node.json'
$Nqn = 'nqn.2026-11.io.storagenode:bench'
$Commit = (& git -C $Root rev-parse --short HEAD).Trim()
if (& git -C $Root status --porcelain --untracked-files=no) { $Commit += "+uncommitted" }

. (Join-Path $PSScriptRoot 'common.ps1')

function Limit-Run([int]$qd) {
    $srv = Start-Pinned 0 @($Limit, 'server', '5599')
    try {
        Wait-Port 5599
        return Run-Json 1 @($Limit, 'client', '5599', "$qd", "$Seconds")
    } finally { Stop-Proc $srv }
}

function Node-Run([string]$rw, [string]$bs, [int]$qd, [string[]]$extra) {
    $node = Start-Pinned 0 @('dotnet', $NodeDll, '--config', $BenchNode)
    try {
        Wait-Port 4460
        # Warm-up (JIT tiering of a freshly started node and sn-perf), not measured.
        $null = Run-Json 1 (Perf-Args $rw $bs $qd 1 $extra)
        return Run-Json 1 (Perf-Args $rw $bs $qd $Seconds $extra)
    } finally { Stop-Proc $node }
}

function Rss-KiB([int]$procId) {
    $line = Get-Content "/proc/$procId/status" | Where-Object { $_ -like 'VmRSS:*' }
    return [long](($line -split '\s+')[1])
}

function Perf-Args([string]$rw, [string]$bs, [int]$qd, [double]$t, [string[]]$extra) {
    return @('dotnet', $PerfDll, '-a', '127.0.0.1', '-s', '4460', '-n', $Nqn, '-w', $rw, '-b', $bs, '-q', "$qd", '-t', "$t", '--poll', 'busy', '--json') + @($extra | Where-Object { $_ })
}

$results = [ordered]@{ commit = $Commit; pairs = $Pairs; seconds = $Seconds; cpus = $Cpus; scenarios = @() }
$scenarios = @(
    @{ Name = '4 KiB random read, QD1'; Rw = 'randread'; Bs = '4k'; Qd = 1; LimitQd = 1 },
    @{ Name = '4 KiB random read, QD32'; Rw = 'randread'; Bs = '4k'; Qd = 32; LimitQd = 32 },
    @{ Name = '4 KiB random read, QD128'; Rw = 'randread'; Bs = '4k'; Qd = 128; LimitQd = 128 },
    # The limit sends the same 4 KiB from cache every time; these read a 1 MiB region (cache-resident) so the
    # ratio shows the target's path without the namespace's DRAM misses (profile: docs/benchmarks.md).
    @{ Name = '4 KiB random read, QD32, 1 MiB working set'; Rw = 'randread'; Bs = '4k'; Qd = 32; LimitQd = 32; Extra = @('--size', '1m') },
    @{ Name = '4 KiB random read, QD128, 1 MiB working set'; Rw = 'randread'; Bs = '4k'; Qd = 128; LimitQd = 128; Extra = @('--size', '1m') },
    @{ Name = '4 KiB random write, QD32'; Rw = 'randwrite'; Bs = '4k'; Qd = 32; LimitQd = 32 },
    @{ Name = '128 KiB sequential read, QD8'; Rw = 'read'; Bs = '128k'; Qd = 8; LimitQd = 32 }
)
foreach ($sc in $scenarios) {
    Write-Host "==> $($sc.Name): $Pairs interleaved pairs of $Seconds s"
    $lim = @(); $ours = @()
    for ($i = 0; $i -lt $Pairs; $i++) {
        $l = Limit-Run $sc.LimitQd
        $o = Node-Run $sc.Rw $sc.Bs $sc.Qd $(if ($sc.ContainsKey('Extra')) { $sc.Extra } else { @() })
        $lim += $l; $ours += $o
        Write-Host ("    pair {0}: limit {1:N0} ops/s {2:0.0} us | StorageNode {3:N0} IOPS {4:0.0} us" -f ($i + 1), $l.iops, $l.mean_us, $o.iops, $o.mean_us)
    }
    $bwRatios = @(for ($i = 0; $i -lt $Pairs; $i++) { $ours[$i].bytes_per_s / ($lim[$i].iops * 4096) })
    $latRatios = @(for ($i = 0; $i -lt $Pairs; $i++) { $ours[$i].mean_us / $lim[$i].mean_us })
    $results.scenarios += [ordered]@{
        name = $sc.Name; qd = $sc.Qd
        limit_iops = Median ($lim | ForEach-Object { $_.iops }); limit_mean_us = Median ($lim | ForEach-Object { $_.mean_us })
        iops = Median ($ours | ForEach-Object { $_.iops }); mean_us = Median ($ours | ForEach-Object { $_.mean_us })
        p50_us = Median ($ours | ForEach-Object { $_.p50_us }); p99_us = Median ($ours | ForEach-Object { $_.p99_us }); p999_us = Median ($ours | ForEach-Object { $_.p999_us })
        limit_p50_us = Median ($lim | ForEach-Object { $_.p50_us }); limit_p99_us = Median ($lim | ForEach-Object { $_.p99_us }); limit_p999_us = Median ($lim | ForEach-Object { $_.p999_us })
        ratio = Median $bwRatios; ratio_min = ($bwRatios | Measure-Object -Minimum).Minimum; ratio_max = ($bwRatios | Measure-Object -Maximum).Maximum
        latency_ratio = Median $latRatios
    }
}

# The HA pair: proxied (NSID 2 through node A, relayed to B) against direct (NSID 1 on A), adaptive polling.
Write-Host "==> HA pair: proxied vs direct, $Pairs interleaved pairs"
$pa = Start-Process -FilePath 'dotnet' -ArgumentList (@($NodeDll) + (Pair-NodeArgs (Join-Path $Root 'config/node-a.json'))) -PassThru -RedirectStandardOutput (Join-Path $Out 'node-a.log') -RedirectStandardError (Join-Path $Out 'node-a.err')
$pb = Start-Process -FilePath 'dotnet' -ArgumentList (@($NodeDll) + (Pair-NodeArgs (Join-Path $Root 'config/node-b.json'))) -PassThru -RedirectStandardOutput (Join-Path $Out 'node-b.log') -RedirectStandardError (Join-Path $Out 'node-b.err')
try {
    Wait-Port 4420; Wait-Port 4421; Start-Sleep -Seconds 2
    $pair = [ordered]@{}
    foreach ($qd in 1, 32) {
        $d = @(); $p = @()
        for ($i = 0; $i -lt $Pairs; $i++) {
            $d += Run-Json -1 @('dotnet', $PerfDll, '-a', '127.0.0.1', '-s', '4420', '-n', 'nqn.2026-11.io.storagenode:pair', '--nsid', '1', '-w', 'randread', '-b', '4k', '-q', "$qd", '-t', "$Seconds", '--poll', 'adaptive', '--json')
            $p += Run-Json -1 @('dotnet', $PerfDll, '-a', '127.0.0.1', '-s', '4420', '-n', 'nqn.2026-11.io.storagenode:pair', '--nsid', '2', '-w', 'randread', '-b', '4k', '-q', "$qd", '-t', "$Seconds", '--poll', 'adaptive', '--json')
            Write-Host ("    QD{0} pair {1}: direct {2:N0} IOPS {3:0.0} us | proxied {4:N0} IOPS {5:0.0} us" -f $qd, ($i + 1), $d[-1].iops, $d[-1].mean_us, $p[-1].iops, $p[-1].mean_us)
        }
        $pair["qd$qd"] = [ordered]@{
            direct_iops = Median ($d | ForEach-Object { $_.iops }); proxied_iops = Median ($p | ForEach-Object { $_.iops })
            direct_mean_us = Median ($d | ForEach-Object { $_.mean_us }); proxied_mean_us = Median ($p | ForEach-Object { $_.mean_us })
            iops_ratio = Median (0..($Pairs - 1) | ForEach-Object { $p[$_].iops / $d[$_].iops })
            added_us = Median (0..($Pairs - 1) | ForEach-Object { $p[$_].mean_us - $d[$_].mean_us })
        }
    }
    $results.pair = $pair
} finally {
    Stop-Proc $pa; Stop-Proc $pb
}

# The mirror's cost: 4 KiB random writes to NSID 1 through A, the pair with Cluster:Mirror against without (bench/common.ps1).
Write-Host "==> HA pair: mirrored vs unmirrored writes, $Pairs alternating pairs"
$results.mirror = Measure-MirrorCost $Root $NodeDll $PerfDll $Out $Pairs $Seconds @(1, 32)

# Scaling: IOPS and the node's resident memory with 1, 8 and 64 connections at queue depths 1 to 128
# (4 KiB random read, one reactor, busy polling; one run each, sn-perf drives all connections from one thread).
Write-Host "==> scaling: connections x queue depth"
$scaling = @()
foreach ($conns in 1, 8, 64) {
    foreach ($qd in 1, 8, 32, 128) {
        $node = Start-Pinned 0 @('dotnet', $NodeDll, '--config', $BenchNode)
        try {
            Wait-Port 4460
            Start-Sleep -Milliseconds 500
            $base = Rss-KiB $node.Id
            $perf = Start-Pinned 1 (Perf-Args 'randread' '4k' $qd $Seconds @('-c', "$conns"))
            # Sample the node's RSS in the middle of the run (connections are made in the first ~0.5 s).
            Start-Sleep -Milliseconds ([int](500 + $Seconds * 500))
            $during = Rss-KiB $node.Id
            $text = $perf.StandardOutput.ReadToEnd()
            $perf.WaitForExit()
            if ($perf.ExitCode -ne 0) { throw "sn-perf -c $conns -q $qd failed ($($perf.ExitCode)): $text $($perf.StandardError.ReadToEnd())" }
            $r = ($text -split "`n" | Where-Object { $_ -like '{*' } | Select-Object -Last 1 | ConvertFrom-Json)
            $scaling += [ordered]@{ connections = $conns; qd = $qd; iops = $r.iops; mean_us = $r.mean_us; p99_us = $r.p99_us; rss_base_kib = $base; rss_kib = $during; rss_delta_kib = $during - $base }
            Write-Host ("    {0,2} connections QD{1,-3}: {2,9:N0} IOPS {3,8:0.0} us  node RSS +{4:N0} KiB" -f $conns, $qd, $r.iops, $r.mean_us, ($during - $base))
        } finally { Stop-Proc $node }
    }
}
$results.scaling = $scaling
$c64q1 = $scaling | Where-Object { $_.connections -eq 64 -and $_.qd -eq 1 }
$c64q128 = $scaling | Where-Object { $_.connections -eq 64 -and $_.qd -eq 128 }
$c1q1 = $scaling | Where-Object { $_.connections -eq 1 -and $_.qd -eq 1 }
$results.memory = [ordered]@{
    per_connection_kib = [Math]::Round(($c64q1.rss_kib - $c1q1.rss_kib) / 63.0, 1)
    per_queue_slot_bytes = [Math]::Round(($c64q128.rss_kib - $c64q1.rss_kib) * 1024.0 / (64 * 127), 0)
}

# No GC in steady state: 30 s of 4 KiB random reads at QD32 against a warmed-up node; the node prints its
# collection counts on SIGUSR1 before and after.
Write-Host "==> GC check: $GcSeconds s run"
$node = Start-Pinned 0 @('dotnet', $NodeDll, '--config', $BenchNode)
try {
    Wait-Port 4460
    $null = Run-Json 1 (Perf-Args 'randread' '4k' 32 1 @())
    & kill -USR1 $node.Id
    Start-Sleep -Milliseconds 300
    $gcRun = Run-Json 1 (Perf-Args 'randrw' '4k' 32 $GcSeconds @())
    & kill -USR1 $node.Id
    Start-Sleep -Milliseconds 300
} finally { Stop-Proc $node }
$stats = @($node.StandardOutput.ReadToEnd() -split "`n" | Where-Object { $_ -match 'stats: gc0=' })
if ($stats.Count -lt 2) { throw "the node printed no stats lines on SIGUSR1" }
function Stat([string]$line, [string]$key) { if ($line -match "$key=(\d+)") { return [long]$Matches[1] } else { return 0 } }
$results.gc = [ordered]@{
    seconds = $GcSeconds; ios = $gcRun.ops; iops = $gcRun.iops
    gc0 = (Stat $stats[1] 'gc0') - (Stat $stats[0] 'gc0'); gc1 = (Stat $stats[1] 'gc1') - (Stat $stats[0] 'gc1'); gc2 = (Stat $stats[1] 'gc2') - (Stat $stats[0] 'gc2')
    allocated_bytes = (Stat $stats[1] 'allocated') - (Stat $stats[0] 'allocated')
}
Write-Host ("    {0:N0} I/Os: collections gen0 {1}, gen1 {2}, gen2 {3}; {4:N0} B allocated by the node process" -f $results.gc.ios, $results.gc.gc0, $results.gc.gc1, $results.gc.gc2, $results.gc.allocated_bytes)

$results | ConvertTo-Json -Depth 6 | Set-Content (Join-Path $Out 'results.json')

# Report.
$md = [Text.StringBuilder]::new()
[void]$md.AppendLine("# StorageNode benchmark report")
[void]$md.AppendLine("")
[void]$md.AppendLine("Commit ``$Commit``, $(Get-Date -Format 'yyyy-MM-dd HH:mm'), $Cpus CPUs. Medians of $Pairs interleaved pairs of ${Seconds}-second runs;")
[void]$md.AppendLine("target (limit server / StorageNode, busy polling) pinned to CPU 0, load (limit client / sn-perf, busy polling) to CPU 1.")
[void]$md.AppendLine("The limit (bench/limit) moves NVMe/TCP-shaped traffic (72-byte requests, 24 + 4096-byte responses) in bulk.")
[void]$md.AppendLine("")
[void]$md.AppendLine("| workload | limit | StorageNode | ratio (median, range) | mean latency ratio | StorageNode p50 / p99 / p99.9 (us) |")
[void]$md.AppendLine("|---|---|---|---|---|---|")
foreach ($s in $results.scenarios) {
    [void]$md.AppendLine(("| {0} | {1:N0} ops/s, {2:0.0} us | {3:N0} IOPS, {4:0.0} us | {5:0.00} ({6:0.00}-{7:0.00}) | {8:0.00} | {9:0.0} / {10:0.0} / {11:0.0} |" -f
        $s.name, $s.limit_iops, $s.limit_mean_us, $s.iops, $s.mean_us, $s.ratio, $s.ratio_min, $s.ratio_max, $s.latency_ratio, $s.p50_us, $s.p99_us, $s.p999_us))
}
[void]$md.AppendLine("")
[void]$md.AppendLine("Ratio: bytes per second against the limit's at the same depth (for 128 KiB reads: against the limit's QD32 4 KiB rate).")
[void]$md.AppendLine("")
[void]$md.AppendLine("## HA pair: proxied vs direct (default pair, adaptive polling, not pinned)")
[void]$md.AppendLine("")
[void]$md.AppendLine("| 4 KiB random read | direct | proxied | IOPS ratio | added mean latency |")
[void]$md.AppendLine("|---|---|---|---|---|")
foreach ($k in $results.pair.Keys) {
    $x = $results.pair[$k]
    [void]$md.AppendLine(("| {0} | {1:N0} IOPS, {2:0.0} us | {3:N0} IOPS, {4:0.0} us | {5:0.00} | {6:0.0} us |" -f $k.ToUpper(), $x.direct_iops, $x.direct_mean_us, $x.proxied_iops, $x.proxied_mean_us, $x.iops_ratio, $x.added_us))
}

[void]$md.AppendLine("")
[void]$md.AppendLine("## HA pair: mirrored vs unmirrored writes (default pair, adaptive polling, not pinned)")
[void]$md.AppendLine("")
[void]$md.AppendLine(("4 KiB random writes to NSID 1 through node A, its owner; the pair started with ``Cluster:Mirror`` and without, alternately. Loopback round trip (bench/limit, QD1, unpinned, interleaved): {0:0.0} us." -f $results.mirror.rtt_us))
[void]$md.AppendLine("")
[void]$md.AppendLine("| 4 KiB random write | unmirrored | mirrored | IOPS ratio | added mean latency | floor: ratio, added |")
[void]$md.AppendLine("|---|---|---|---|---|---|")
foreach ($k in @($results.mirror.Keys | Where-Object { $_ -like 'qd*' })) {
    $x = $results.mirror[$k]
    $rtts = if ($results.mirror.rtt_us -gt 0) { " ({0:0.0} round trips)" -f ($x.added_us / $results.mirror.rtt_us) } else { "" }
    $floor = if ($x.Contains('floor_added_us')) { "{0:0.00}, {1:0.0} us" -f $x.floor_iops_ratio, $x.floor_added_us } else { "n/a" }
    [void]$md.AppendLine(("| {0} | {1:N0} IOPS, {2:0.0} us | {3:N0} IOPS, {4:0.0} us | {5:0.00} | {6:0.0} us{7} | {8} |" -f $k.ToUpper(), $x.plain_iops, $x.plain_mean_us, $x.mirrored_iops, $x.mirrored_mean_us, $x.iops_ratio, $x.added_us, $rtts, $floor))
}
[void]$md.AppendLine("")
[void]$md.AppendLine("The floor: bench/limit's write-shaped client and server, directly and through a relay that passes each request on and its answer back (three processes on this machine's cores, yielding when idle, doing no work of their own): the same ratio and added latency for the relay against the direct path.")

[void]$md.AppendLine("")
[void]$md.AppendLine("## Scaling (4 KiB random read, one reactor; sn-perf drives every connection from one thread on CPU 1)")
[void]$md.AppendLine("")
[void]$md.AppendLine("| connections | QD | IOPS | mean (us) | p99 (us) | node RSS growth (KiB) |")
[void]$md.AppendLine("|---|---|---|---|---|---|")
foreach ($x in $results.scaling) {
    [void]$md.AppendLine(("| {0} | {1} | {2:N0} | {3:0.0} | {4:0.0} | {5:N0} |" -f $x.connections, $x.qd, $x.iops, $x.mean_us, $x.p99_us, $x.rss_delta_kib))
}
[void]$md.AppendLine("")
[void]$md.AppendLine(("Memory: **{0:0.0} KiB per connection** (RSS at 64 connections vs 1, QD1, per added connection: admin + I/O queue, socket, " -f $results.memory.per_connection_kib) +
    ("request slots), **{0:N0} B per queue slot** (64 connections, QD128 vs QD1, per added slot; slots and buffers are preallocated, so this is what the run touched)." -f $results.memory.per_queue_slot_bytes))
[void]$md.AppendLine("")
[void]$md.AppendLine("## Garbage collection in steady state")
[void]$md.AppendLine("")
[void]$md.AppendLine(("{0} s of 4 KiB random read/write at QD32 ({1:N0} I/Os) against a warmed-up node: **{2} gen0, {3} gen1, {4} gen2 collections**, {5:N0} B allocated by the whole node process (timers, logging and the stats line included)." -f
    $results.gc.seconds, $results.gc.ios, $results.gc.gc0, $results.gc.gc1, $results.gc.gc2, $results.gc.allocated_bytes))

# Latency plot (QD1 percentiles, limit vs StorageNode) when gnuplot is there.
$qd1 = $results.scenarios | Where-Object { $_.qd -eq 1 } | Select-Object -First 1
if ((Get-Command gnuplot -ErrorAction SilentlyContinue) -and $qd1) {
    $dat = Join-Path $Out 'latency.dat'
    @("p50 $($qd1.limit_p50_us) $($qd1.p50_us)", "p99 $($qd1.limit_p99_us) $($qd1.p99_us)", "p99.9 $($qd1.limit_p999_us) $($qd1.p999_us)") | Set-Content $dat
    $gp = @"
set terminal png size 800,480
set output '$(Join-Path $Out 'latency.png')'
set title '4 KiB random read, QD1: latency percentiles (us), commit $Commit'
set style data histograms
set style fill solid 0.8
set ylabel 'microseconds'
set logscale y
set key left top
plot '$dat' using 2:xtic(1) title 'limit', '' using 3 title 'StorageNode'
"@
    $gp | & gnuplot
    [void]$md.AppendLine("")
    [void]$md.AppendLine("![QD1 latency](latency.png)")
}
$md.ToString() | Set-Content (Join-Path $Out 'report.md')
Write-Host $md.ToString()
