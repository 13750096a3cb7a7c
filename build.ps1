#!/usr/bin/env pwsh
# StorageNode build driver. Verbs:
#   build   install build prerequisites (apt), build the native shim (CMake) and every .NET project
#   test    build, then run the whole test suite (unit, integration, rig); ends with "N passed, N failed, N skipped"
#   rig     build, then run only the rig tests (QEMU guests with the Linux NVMe/TCP host)
#   run     build, then start the default pair: node A on 127.0.0.1:4420, node B on 127.0.0.1:4421, a witness on udp 127.0.0.1:4460 (Ctrl-C stops)
#   bench   build, then run the BenchmarkDotNet suites and write a report under artifacts/bench/
[CmdletBinding()]
param(
    [Parameter(Position = 0)]
    [ValidateSet('build', 'test', 'rig', 'run', 'bench')]
    [string]$Verb = 'build',
    [string]$Configuration = 'Release',
    # Extra arguments passed to the xunit runner (e.g. -class, -method, -trait).
    [string[]]$TestArgs = @()
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$Root = $PSScriptRoot
$Artifacts = Join-Path $Root 'artifacts'
$NativeOut = Join-Path $Artifacts 'native'

function Write-Step([string]$Text) { Write-Host "==> $Text" -ForegroundColor Cyan }

function Invoke-Native([string]$File, [string[]]$Arguments) {
    & $File @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$File $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

# Installs Debian packages that are missing (apt-get update only when something must be installed).
function Install-AptPackages([string[]]$Packages) {
    $missing = @()
    foreach ($p in $Packages) {
        $status = & dpkg-query -W -f='${Status}' $p 2>$null
        if ($LASTEXITCODE -ne 0 -or $status -notmatch 'install ok installed') { $missing += $p }
    }
    if ($missing.Count -eq 0) { return }
    Write-Step "installing Debian packages: $($missing -join ' ')"
    $sudo = @()
    if ((& id -u) -ne '0') {
        if (-not (Get-Command sudo -ErrorAction SilentlyContinue)) { throw "need root (or sudo) to install: $($missing -join ' ')" }
        $sudo = @('sudo')
    }
    $env:DEBIAN_FRONTEND = 'noninteractive'
    if ($sudo) { Invoke-Native 'sudo' @('apt-get', 'update', '-q') } else { Invoke-Native 'apt-get' @('update', '-q') }
    $args = @('install', '-y', '-q', '--no-install-recommends') + $missing
    if ($sudo) { Invoke-Native 'sudo' (@('apt-get') + $args) } else { Invoke-Native 'apt-get' $args }
}

function Invoke-Build {
    Install-AptPackages @('cmake', 'gcc', 'g++', 'make', 'pkg-config', 'liburing-dev', 'libibverbs-dev', 'librdmacm-dev')
    Write-Step 'native shim (CMake)'
    $buildDir = Join-Path $Artifacts 'obj/native'
    Invoke-Native 'cmake' @('-S', $Root, '-B', $buildDir, "-DSN_OUTPUT_DIR=$NativeOut", '-DCMAKE_BUILD_TYPE=Release', '--log-level=WARNING')
    Invoke-Native 'cmake' @('--build', $buildDir, '--parallel', '2')
    Write-Step ".NET projects ($Configuration)"
    Invoke-Native 'dotnet' @('build', (Join-Path $Root 'StorageNode.slnx'), '-c', $Configuration, '-nologo', '-clp:ErrorsOnly;Summary', '-p:TreatWarningsAsErrors=true')
}

function Get-TestAssemblies {
    # Test projects are the folders under tests/ whose names end in "Tests" (RdmaProbe is a helper program).
    Get-ChildItem (Join-Path $Root 'tests') -Directory -Filter '*Tests' | ForEach-Object {
        $dll = Join-Path $_.FullName "bin/$Configuration/net10.0/$($_.Name).dll"
        if (Test-Path $dll) { $dll }
    }
}

# Runs each xunit v3 test assembly, collects its XML results and prints the closing summary line.
function Invoke-Tests([string[]]$RunnerArgs, [switch]$AllocationCheck) {
    $resultsDir = Join-Path $Artifacts 'test-results'
    New-Item -ItemType Directory -Force $resultsDir | Out-Null
    $passed = 0; $failed = 0; $skipped = 0; $crashed = @()
    $sw = [Diagnostics.Stopwatch]::StartNew()
    foreach ($dll in Get-TestAssemblies) {
        $name = [IO.Path]::GetFileNameWithoutExtension($dll)
        $xml = Join-Path $resultsDir "$name.xml"
        Remove-Item $xml -ErrorAction SilentlyContinue
        Write-Step "tests: $name"
        & dotnet $dll -noColor -noLogo -result-xml $xml @RunnerArgs
        $code = $LASTEXITCODE
        if (-not (Test-Path $xml)) { $crashed += "$name (exit code $code, no results)"; continue }
        [xml]$doc = Get-Content $xml
        foreach ($a in $doc.assemblies.assembly) {
            $passed += [int]$a.passed
            $failed += [int]$a.failed + [int]$a.errors
            $skipped += [int]$a.skipped
        }
    }
    if ($AllocationCheck) {
        # The benchmark suites in a short in-process configuration: each hot-path benchmark that allocates
        # counts as a failed test (bench/StorageNode.Benchmarks, --alloc-check).
        Write-Step 'tests: allocation check (BenchmarkDotNet, MemoryDiagnoser)'
        $bench = Join-Path $Root "bench/StorageNode.Benchmarks/bin/$Configuration/net10.0/StorageNode.Benchmarks.dll"
        $lines = & dotnet $bench --alloc-check --artifacts (Join-Path $Artifacts 'bench/alloc-check') 2>&1 | ForEach-Object { "$_" }
        $code = $LASTEXITCODE
        $checks = @($lines | Where-Object { $_ -like 'ALLOC-CHECK*' })
        $checks | ForEach-Object { Write-Host $_ }
        $ok = @($checks | Where-Object { $_ -like 'ALLOC-CHECK ok *' }).Count
        $bad = @($checks | Where-Object { $_ -like 'ALLOC-CHECK FAIL*' }).Count
        if ($code -ne 0 -and $bad -eq 0) {
            $lines | Select-Object -Last 40 | ForEach-Object { Write-Host $_ }
            $bad = 1
        }
        $passed += $ok; $failed += $bad
    }
    Write-Host ("test time: {0:0.0} s" -f $sw.Elapsed.TotalSeconds)
    foreach ($c in $crashed) { Write-Host "test assembly crashed: $c"; $failed++ }
    Write-Host "$passed passed, $failed failed, $skipped skipped"
    if ($failed -gt 0) { exit 1 }
}

function Invoke-Run {
    $dll = Join-Path $Root "src/StorageNode/bin/$Configuration/net10.0/storagenode.dll"
    $nqn = 'nqn.2026-11.io.storagenode:pair'
    $nodes = @(
        @{ Name = 'A'; Config = Join-Path $Root 'config/node-a.json'; Port = 4420; Group = 1; Socket = '/var/tmp/storagenode-A.sock' },
        @{ Name = 'B'; Config = Join-Path $Root 'config/node-b.json'; Port = 4421; Group = 2; Socket = '/var/tmp/storagenode-B.sock' }
    )
    # The pair's witness (docs/ha.md, "The witness"): with it, a node takes a dead partner's group over on its own.
    $witness = '127.0.0.1:4460'
    $witnessState = Join-Path $Root 'config/state/witness'
    # Each run of this pair starts with new, empty RAM namespaces: who owned a group after a takeover in an earlier run
    # (kept in the default state directory beside the configuration, docs/ha.md "Takeover", and by the witness) is void.
    Remove-Item -Path (Join-Path $Root 'config/state/*.owner'), (Join-Path $witnessState 'witness.state') -ErrorAction SilentlyContinue
    $procs = @()
    $witnessProc = $null
    try {
        $witnessProc = Start-Process -FilePath 'dotnet' -ArgumentList @($dll, 'witness', "--Witness:Listen=$witness", "--Witness:StateDirectory=$witnessState") -NoNewWindow -PassThru
        foreach ($n in $nodes) {
            $procs += Start-Process -FilePath 'dotnet' -ArgumentList @($dll, '--config', $n.Config, "--Cluster:Witness=$witness") -NoNewWindow -PassThru
        }
        Start-Sleep -Seconds 3
        if ($witnessProc.HasExited) { throw "the witness exited at start (exit code $($witnessProc.ExitCode)); see its message above" }
        foreach ($p in $procs) { if ($p.HasExited) { throw "a node exited at start (exit code $($p.ExitCode)); see its message above" } }
        $perf = Join-Path $Root "src/Perf/bin/$Configuration/net10.0/sn-perf.dll"
        Write-Host ''
        Write-Host "StorageNode HA pair is up: subsystem $nqn on both nodes (RAM namespaces)."
        Write-Host '  NSID 1 (ANA group 1) is owned by node A, NSID 2 (ANA group 2) by node B; each node serves the'
        Write-Host "  other's namespace non-optimized through the proxy (interconnect 127.0.0.1:4430 <-> 4431),"
        Write-Host "  and keeps a RAM replica of it (Cluster:Mirror: a write completes once the replica has it too)."
        Write-Host "  A witness on udp $witness is the third vote: when a node dies, the other serves its namespace from"
        Write-Host '  its replica on its own (about 1.5 s later; try kill -9 on a node).'
        Write-Host 'Connect both paths with nvme-cli (native multipath picks the optimized one per namespace):'
        Write-Host '  nvme discover -t tcp -a 127.0.0.1 -s 4420'
        foreach ($n in $nodes) {
            Write-Host "  nvme connect -t tcp -a 127.0.0.1 -s $($n.Port) -n $nqn      # node $($n.Name)"
        }
        Write-Host '  nvme list-subsys /dev/nvme0n1      # one subsystem, two paths: live optimized + live non-optimized'
        Write-Host "or with the managed perf tool (direct and proxied):"
        Write-Host "  dotnet $perf -a 127.0.0.1 -s 4420 -n $nqn --nsid 1 -w randread -b 4k -q 32 -t 10"
        Write-Host "  dotnet $perf -a 127.0.0.1 -s 4420 -n $nqn --nsid 2 -w randread -b 4k -q 32 -t 10"
        Write-Host 'Management (JSON-RPC, docs/management.md):'
        Write-Host "  dotnet $dll rpc -s /var/tmp/storagenode-A.sock nvmf_get_subsystems"
        Write-Host "  dotnet $dll rpc -s /var/tmp/storagenode-B.sock cluster_get_status      # links, mirrors, replicas, groups"
        Write-Host 'Ctrl-C stops both nodes and the witness.'
        # A node that dies: its partner takes its group over (the witness grants it) and serves it from its replica.
        $reported = @{}
        $witnessReported = $false
        while ($true) {
            for ($i = 0; $i -lt $procs.Count; $i++) {
                $p = $procs[$i]; $n = $nodes[$i]
                if (-not $p.HasExited -or $reported.ContainsKey($n.Name)) { continue }
                $reported[$n.Name] = $true
                $other = $nodes[1 - $i]
                Write-Host ''
                Write-Host "node $($n.Name) exited (exit code $($p.ExitCode)); node $($other.Name) takes ANA group $($n.Group) over on its own once the witness grants it, and serves NSID $($n.Group) from its replica on the hosts' connections. Watch it:" -ForegroundColor Yellow
                Write-Host "  dotnet $dll rpc -s $($other.Socket) cluster_get_status      # groups: owner $($other.Name), term 1, served_here"
                Write-Host "Start $($n.Name) again (in another terminal): it comes back as $($other.Name)'s keeper and is resynced:"
                Write-Host "  dotnet $dll --config $($n.Config) --Cluster:Witness=$witness"
                Write-Host "Once its replica is in sync (cluster_get_status on $($other.Name): mirrors in_sync), hand the group back:"
                Write-Host "  dotnet $dll rpc -s $($other.Socket) cluster_giveback nqn=$nqn anagrpid=$($n.Group)"
            }
            if ($reported.Count -eq $procs.Count) { throw 'both nodes exited' }
            if ($witnessProc.HasExited -and -not $witnessReported) {
                $witnessReported = $true
                Write-Host ''
                Write-Host "the witness exited (exit code $($witnessProc.ExitCode)): the nodes go on serving while they see each other; a node's death is no longer taken over on its own (cluster_takeover with force). Start it again:" -ForegroundColor Yellow
                Write-Host "  dotnet $dll witness --Witness:Listen=$witness --Witness:StateDirectory=$witnessState"
            }
            Start-Sleep -Milliseconds 500
        }
    }
    finally {
        # Ctrl-C reaches the nodes and the witness too (same process group); give them time to stop cleanly.
        foreach ($p in @($procs) + @($witnessProc)) {
            if ($null -ne $p -and -not $p.HasExited -and -not $p.WaitForExit(5000)) { $p.Kill($true) }
        }
    }
}

# Appends BenchmarkDotNet's GitHub-markdown tables (artifacts/bench/bdn/results) to artifacts/bench/report.md.
function Add-BdnToReport([string]$out) {
    $tables = Get-ChildItem (Join-Path $out 'bdn/results') -Filter '*-report-github.md' -ErrorAction SilentlyContinue | Sort-Object Name
    if (-not $tables) { return }
    $lines = @('', '## BenchmarkDotNet suites (short job, MemoryDiagnoser; "-" in Allocated is 0 B)', '')
    foreach ($t in $tables) {
        $lines += "### $($t.Name -replace '^StorageNode\.Benchmarks\.' -replace '-report-github\.md$')"
        $lines += ''
        $lines += (Get-Content $t.FullName | Where-Object { $_ -like '|*' })
        $lines += ''
    }
    Add-Content (Join-Path $out 'report.md') $lines
}

function Invoke-Bench {
    Install-AptPackages @('gnuplot-nox', 'util-linux')
    $out = Join-Path $Artifacts 'bench'
    New-Item -ItemType Directory -Force $out | Out-Null
    # BenchmarkDotNet suites (short jobs): CRC32C, QD1 round trips in-process, with MemoryDiagnoser.
    $dll = Join-Path $Root "bench/StorageNode.Benchmarks/bin/$Configuration/net10.0/StorageNode.Benchmarks.dll"
    Invoke-Native 'dotnet' @($dll, '--artifacts', (Join-Path $out 'bdn'), '--all', '--job', 'short')
    # The comparison with the machine's limit and the HA pair's proxied path: report.md, results.json, latency.png.
    & (Join-Path $Root 'bench/run-bench.ps1') -Configuration $Configuration
    if (-not $?) { throw 'bench/run-bench.ps1 failed' }
    Add-BdnToReport $out
    Write-Host "report: $out/report.md"
}

Push-Location $Root
try {
    switch ($Verb) {
        'build' { Invoke-Build }
        'test' { Invoke-Build; Invoke-Tests $TestArgs -AllocationCheck:($TestArgs.Count -eq 0) }
        'rig' { Invoke-Build; Invoke-Tests (@('-trait', 'Category=Rig') + $TestArgs) }
        'run' { Invoke-Build; Invoke-Run }
        'bench' { Invoke-Build; Invoke-Bench }
    }
}
finally {
    Pop-Location
}
