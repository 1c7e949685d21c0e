<#
.SYNOPSIS
    Train one music_generator.py run for every combination of the given parameters.

.DESCRIPTION
    The batch sweeps of the paper (section 4.1.1): every list below is a parameter's
    values, and every combination becomes a numbered run (RUN01, RUN02, ...) whose
    --run-info says what it tries. A failed run does not stop the sweep; a table of all
    runs ends it, and the exit code is 1 when any run failed.

.EXAMPLE
    ./run_experiments.ps1 -Data data/samples -LearningRate 0.01,0.001 -BatchSize 1,32 -DryRun

.EXAMPLE
    ./run_experiments.ps1 -Data data/samples -Python .venv\Scripts\python.exe -Epochs 20 -KlWeight 1,0.1 -Purpose "Does a weaker KL term give more varied songs?"
#>
param(
    # Folder of .npy samples made by data_loader.py.
    [string]$Data = "data/samples",
    # Where the run folders go.
    [string]$OutputDir = "runs",
    # The Python interpreter, for example .venv\Scripts\python.exe or .venv/bin/python.
    [string]$Python = "python",
    [double[]]$LearningRate = @(0.01, 0.001),
    [int[]]$BatchSize = @(1, 32),
    [int[]]$Latent = @(120),
    [double[]]$KlWeight = @(1.0),
    [int[]]$Epochs = @(10),
    [ValidateSet("mse", "bce")]
    [string[]]$Reconstruction = @("mse"),
    # The settings of every option not swept: the paper's (--preset paper), or this
    # program's defaults (transposition, a KL cycle, songs from the fitted density, ...).
    [ValidateSet("paper", "default")]
    [string]$Preset = "paper",
    # Why this sweep: the start of every run's --run-info.
    [string]$Purpose = "Sweep",
    # More music_generator.py train flags for every run, for example @("--songs", "20").
    [string[]]$Extra = @(),
    # Print the commands without running them.
    [switch]$DryRun
)

$script = Join-Path $PSScriptRoot "music_generator.py"
$invariant = [System.Globalization.CultureInfo]::InvariantCulture  # 0.001, never 0,001
$presetFlags = if ($Preset -eq "paper") { @("--preset", "paper") } else { @() }
$results = @()
$number = 0

foreach ($lr in $LearningRate) {
foreach ($batch in $BatchSize) {
foreach ($latentSize in $Latent) {
foreach ($kl in $KlWeight) {
foreach ($epochCount in $Epochs) {
foreach ($loss in $Reconstruction) {
    $number++
    $name = "RUN{0:D2}" -f $number
    $lrText = $lr.ToString($invariant)
    $klText = $kl.ToString($invariant)
    $info = "${Purpose}: learning rate $lrText, batch size $batch, latent size $latentSize, KL weight $klText, $epochCount epochs, $loss reconstruction loss (run $number of the sweep)"
    $arguments = @(
        $script, "train",
        "--data", $Data,
        "--output-dir", $OutputDir,
        "--run-name", $name,
        "--run-info", $info,
        "--lr", $lrText,
        "--batch-size", $batch,
        "--latent", $latentSize,
        "--kl-weight", $klText,
        "--epochs", $epochCount,
        "--reconstruction", $loss
    ) + $presetFlags + $Extra

    $clock = [System.Diagnostics.Stopwatch]::StartNew()
    if ($DryRun) {
        $quoted = $arguments | ForEach-Object { if ("$_" -match '\s') { "`"$_`"" } else { "$_" } }
        Write-Output "$Python $($quoted -join ' ')"
        $status = "dry run"
    }
    else {
        Write-Output "=== $name of the sweep: $info"
        & $Python @arguments
        $status = if ($LASTEXITCODE -eq 0) { "ok" } else { "failed (exit code $LASTEXITCODE)" }
    }
    $folder = Get-ChildItem -Path $OutputDir -Directory -Filter "*_$name" -ErrorAction SilentlyContinue |
        Sort-Object Name | Select-Object -Last 1
    $results += [pscustomobject]@{
        Run            = $name
        Status         = $status
        Minutes        = [math]::Round($clock.Elapsed.TotalMinutes, 1)
        LearningRate   = $lrText
        BatchSize      = $batch
        Latent         = $latentSize
        KlWeight       = $klText
        Epochs         = $epochCount
        Reconstruction = $loss
        Folder         = if ($folder -and -not $DryRun) { $folder.Name } else { "" }
    }
}}}}}}

$results | Format-Table -AutoSize | Out-String -Width 200 | Write-Output
$failed = @($results | Where-Object { $_.Status -like "failed*" }).Count
Write-Output "$($results.Count) runs, $failed failed."
if ($failed -gt 0) { exit 1 }
