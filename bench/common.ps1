# Helpers shared by the bench scripts (run-bench.ps1, ab.ps1); dot-source it: . (Join-Path $PSScriptRoot 'common.ps1')
# Runs are pinned when there are two CPUs or more: the target on CPU 0, the load on CPU 1 (-1: not pinned).
$Cpus = [Environment]::ProcessorCount

function Pin([int]$cpu) { if ($Cpus -ge 2 -and $cpu -ge 0) { @('taskset', '-c', "$cpu") } else { @() } }

function Wait-Port([int]$port, [int]$seconds = 10) {
    for ($i = 0; $i -lt $seconds * 10; $i++) {
        $c = [Net.Sockets.TcpClient]::new()
        try { $c.Connect('127.0.0.1', $port); return } catch { Start-Sleep -Milliseconds 100 } finally { $c.Dispose() }
    }
    throw "nothing listens on 127.0.0.1:$port"
}

function Start-Pinned([int]$cpu, [string[]]$cmd) {
    $all = (Pin $cpu) + $cmd
    $psi = [Diagnostics.ProcessStartInfo]::new($all[0])
    foreach ($a in $all[1..($all.Count - 1)]) { $psi.ArgumentList.Add($a) }
    $psi.RedirectStandardOutput = $true
    $psi.RedirectStandardError = $true
    return [Diagnostics.Process]::Start($psi)
}

function Stop-Proc($p) {
    if (-not $p.HasExited) { $p.Kill($true); $p.WaitForExit() }
}

# A bench/limit process with LIMIT_YIELD=1 (it yields the core after a poll that found nothing, as the node's adaptive
# reactors and sn-perf's adaptive polling do), not pinned.
function Start-Yielding([string[]]$cmd) {
    $psi = [Diagnostics.ProcessStartInfo]::new($cmd[0])
    foreach ($a in $cmd[1..($cmd.Count - 1)]) { $psi.ArgumentList.Add($a) }
    $psi.Environment['LIMIT_YIELD'] = '1'
    $psi.RedirectStandardOutput = $true
    $psi.RedirectStandardError = $true
    return [Diagnostics.Process]::Start($psi)
}

function Run-Json([int]$cpu, [string[]]$cmd) {
    $all = (Pin $cpu) + $cmd
    $text = & $all[0] @($all[1..($all.Count - 1)])
    if ($LASTEXITCODE -ne 0) { throw "$($cmd -join ' ') failed ($LASTEXITCODE): $text" }
    return ($text | Where-Object { $_ -like '{*' } | Select-Object -Last 1 | ConvertFrom-Json)
}

function Median([double[]]$v) {
    $s = @($v | Sort-Object)
    if ($s.Count -eq 0) { return 0 }
    if ($s.Count % 2) { return $s[[int][Math]::Floor($s.Count / 2)] }
    return ($s[$s.Count / 2 - 1] + $s[$s.Count / 2]) / 2
}

# A default pair node's config file started without mirroring (the proxied-vs-direct runs measure the proxy alone):
# --config FILE, then overrides that turn Cluster:Mirror off and clear the namespaces' ReplicaBdev, as far as the
# tree's config has them (an older tree's may not).
function Pair-NodeArgs([string]$config) {
    $a = @('--config', $config)
    $text = Get-Content -Raw $config
    if ($text -match '"Mirror"') { $a += '--Cluster:Mirror=false' }
    $ns = @((Get-Content -Raw $config | ConvertFrom-Json).Subsystems[0].Namespaces)
    for ($i = 0; $i -lt $ns.Count; $i++) {
        if ($ns[$i].PSObject.Properties.Name -contains 'ReplicaBdev') { $a += "--Subsystems:0:Namespaces:${i}:ReplicaBdev=" }
    }
    return $a
}

# The mirror's cost (docs/ha.md, "Mirroring"): 4 KiB random writes to NSID 1 through node A, its owner, with the default
# pair started with Cluster:Mirror (a write completes once B's replica has it too: one interconnect round trip) and
# without, one pair at a time, alternately ($Pairs times each, unmirrored first), at each queue depth. Adaptive polling,
# not pinned (two nodes and sn-perf on this machine's CPUs), as the proxied-vs-direct runs. With the limit built
# (artifacts/native/limit), each pair also measures the loopback round trip: the limit's QD1 mean latency (72-byte
# request, 4 KiB answer), unpinned too. Returns per depth the medians and the median of the pairs' differences (mean
# latency) and ratios (IOPS), and the round trip's median (rtt_us, 0 without the limit). With the limit built, each pair
# also measures the floor of the same comparison on this machine (floor_* per depth): bench/limit's write-shaped client
# and server (72 + 4096-byte requests, 24-byte answers) directly, and through a relay that passes every request on to
# the server and its answer back (the owner of a mirrored write with no work of its own: three processes, four hops),
# all three yielding the core when idle as the nodes and sn-perf do.
function Measure-MirrorCost([string]$root, [string]$nodeDll, [string]$perfDll, [string]$out, [int]$pairs, [double]$seconds, [int[]]$depths, [string[]]$nodeArgs = @()) {
    $cfgA = Join-Path $root 'config/node-a.json'; $cfgB = Join-Path $root 'config/node-b.json'
    $sockA = (Get-Content -Raw $cfgA | ConvertFrom-Json).Control.RpcSocket
    $runs = @{}; foreach ($qd in $depths) { $runs[$qd] = @{ plain = @(); mirrored = @(); floor_plain = @(); floor_mirrored = @() } }
    $limit = Join-Path $root 'artifacts/native/limit'
    $rtts = @()
    for ($i = 0; $i -lt $pairs; $i++) {
        if (Test-Path $limit) {
            $srv = Start-Pinned -1 @($limit, 'server', '5599')
            try { Wait-Port 5599; $l = Run-Json -1 @($limit, 'client', '5599', '1', "$seconds") } finally { Stop-Proc $srv }
            $rtts += $l.mean_us
            Write-Host ("    pair {0}: loopback round trip (limit, QD1) {1:0.0} us" -f ($i + 1), $l.mean_us)
            $ws = Start-Yielding @($limit, 'wserver', '5600'); $rl = Start-Yielding @($limit, 'relay', '5601', '5600')
            try {
                Wait-Port 5600; Wait-Port 5601
                foreach ($qd in $depths) {
                    foreach ($via in 5600, 5601) {
                        $psi = [Diagnostics.ProcessStartInfo]::new($limit)
                        foreach ($a in @('wclient', "$via", "$qd", "$seconds")) { $psi.ArgumentList.Add($a) }
                        $psi.Environment['LIMIT_YIELD'] = '1'
                        $psi.RedirectStandardOutput = $true
                        $p = [Diagnostics.Process]::Start($psi); $text = $p.StandardOutput.ReadToEnd(); $p.WaitForExit()
                        if ($p.ExitCode -ne 0) { throw "limit wclient $via $qd failed ($($p.ExitCode))" }
                        $f = $text | ConvertFrom-Json
                        $runs[$qd][$(if ($via -eq 5600) { 'floor_plain' } else { 'floor_mirrored' })] += $f
                        Write-Host ("    QD{0} pair {1}: floor {2,-8} {3,9:N0} IOPS {4,7:0.0} us" -f $qd, ($i + 1), $(if ($via -eq 5600) { 'direct' } else { 'relayed' }), $f.iops, $f.mean_us)
                    }
                }
            } finally { Stop-Proc $ws; Stop-Proc $rl }
        }
        foreach ($mirrored in $false, $true) {
            $argsA = @(if ($mirrored) { @('--config', $cfgA) } else { Pair-NodeArgs $cfgA }) + $nodeArgs
            $argsB = @(if ($mirrored) { @('--config', $cfgB) } else { Pair-NodeArgs $cfgB }) + $nodeArgs
            $tag = if ($mirrored) { 'mirrored' } else { 'plain' }
            $pa = Start-Process -FilePath 'dotnet' -ArgumentList (@($nodeDll) + $argsA) -PassThru -RedirectStandardOutput (Join-Path $out "mirror-$tag-a.log") -RedirectStandardError (Join-Path $out "mirror-$tag-a.err")
            $pb = Start-Process -FilePath 'dotnet' -ArgumentList (@($nodeDll) + $argsB) -PassThru -RedirectStandardOutput (Join-Path $out "mirror-$tag-b.log") -RedirectStandardError (Join-Path $out "mirror-$tag-b.err")
            try {
                Wait-Port 4420 60; Wait-Port 4421 60
                # Mirrored: measured once NSID 1's replica is in sync (the first resync copies the namespace); bounded.
                for ($w = 0; $w -lt 120; $w++) {
                    $st = & dotnet $nodeDll rpc -s $sockA cluster_get_status 2>$null | ConvertFrom-Json -ErrorAction SilentlyContinue
                    $up = $st -and @($st.links | Where-Object { $_.up }).Count -gt 0
                    $ns1 = if ($st) { @($st.links | ForEach-Object { $_.mirrors } | Where-Object { $_ -and $_.nsid -eq 1 }) } else { @() }
                    if ($up -and (-not $mirrored -or ($ns1.Count -eq 1 -and $ns1[0].state -eq 'in_sync'))) { break }
                    Start-Sleep -Milliseconds 500
                }
                if ($w -eq 120) { throw "the $tag pair did not come up (NSID 1 in sync) within 60 s: see $out/mirror-$tag-*.log" }
                foreach ($qd in $depths) {
                    $null = Run-Json -1 @('dotnet', $perfDll, '-a', '127.0.0.1', '-s', '4420', '-n', 'nqn.2026-11.io.storagenode:pair', '--nsid', '1', '-w', 'randwrite', '-b', '4k', '-q', "$qd", '-t', '1', '--poll', 'adaptive', '--json')
                    $r = Run-Json -1 @('dotnet', $perfDll, '-a', '127.0.0.1', '-s', '4420', '-n', 'nqn.2026-11.io.storagenode:pair', '--nsid', '1', '-w', 'randwrite', '-b', '4k', '-q', "$qd", '-t', "$seconds", '--poll', 'adaptive', '--json')
                    $runs[$qd][$tag] += $r
                    Write-Host ("    QD{0} pair {1}: {2,-8} {3,9:N0} IOPS {4,7:0.0} us" -f $qd, ($i + 1), $tag, $r.iops, $r.mean_us)
                }
            } finally { Stop-Proc $pa; Stop-Proc $pb }
        }
    }
    $result = [ordered]@{ rtt_us = Median $rtts }
    foreach ($qd in $depths) {
        $p = $runs[$qd].plain; $m = $runs[$qd].mirrored
        $result["qd$qd"] = [ordered]@{
            plain_iops = Median ($p | ForEach-Object { $_.iops }); mirrored_iops = Median ($m | ForEach-Object { $_.iops })
            plain_mean_us = Median ($p | ForEach-Object { $_.mean_us }); mirrored_mean_us = Median ($m | ForEach-Object { $_.mean_us })
            iops_ratio = Median (0..($pairs - 1) | ForEach-Object { $m[$_].iops / $p[$_].iops })
            added_us = Median (0..($pairs - 1) | ForEach-Object { $m[$_].mean_us - $p[$_].mean_us })
        }
        $fp = $runs[$qd].floor_plain; $fm = $runs[$qd].floor_mirrored
        if ($fp.Count -eq $pairs) {
            $result["qd$qd"].floor_iops_ratio = Median (0..($pairs - 1) | ForEach-Object { $fm[$_].iops / $fp[$_].iops })
            $result["qd$qd"].floor_added_us = Median (0..($pairs - 1) | ForEach-Object { $fm[$_].mean_us - $fp[$_].mean_us })
        }
    }
    return $result
}
