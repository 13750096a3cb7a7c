# Helpers shared by the bench scripts (run-bench.ps1, ab.ps1); dot-source it: . (Join-Path $PSScriptRoot 'common.ps1')
# Runs are pinned when there are two CPUs or more: the target on CPU 0, the load on CPU 1 (-1: not pinned).
$Cpus = [Environment]::ProcessorCount

function Pin([int]$cpu) { if ($Cpus -ge 2 -and $cpu -ge 0) { @('taskset', '-c', "$cpu") } else { @() } }

function Wait-Port([int]$port) {
    for ($i = 0; $i -lt 100; $i++) {
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
