#!/usr/bin/env bash
# Does Kiln run on the GPU machine's library versions? Builds a second virtual environment OUTSIDE the repo with
# the versions that machine has (torch 2.11, transformers 5.17, ...; the rest of requirements*.txt at its pins),
# then runs the whole test suite and `bench/gpu_suite.py --smoke` with it, on the CPU.
# Not part of CI: the first build downloads several GB (torch 2.11 exists on the registry only as a CUDA build,
# which runs on a CPU). Results and what they led to: docs/library-facts.md ("The GPU machine's versions").
#
#   bench/compat_check.sh                 build (or reuse) the venv, then run the suite and the smoke run
#   bench/compat_check.sh --build-only    only build the venv
#   bench/compat_check.sh --smoke-only    build (or reuse) the venv, then only the smoke run
#   bench/compat_check.sh -- ARGS...     the suite with these pytest arguments (e.g. -- tests/test_lora_init.py)
# Environment: COMPAT_VENV (default /work/compat-venv), COMPAT_LOGS (default /tmp/kiln-compat), PYTHON.
set -euo pipefail

# --- The GPU machine's versions, in one place --------------------------------------------------------------
# Read off that machine (docs/benchmarks.md, "The GPU run"). Each line replaces the package's pin in
# requirements*.txt. huggingface-hub must move anyway: transformers 5.17 requires huggingface-hub<2.0, and the
# shipped pin is 2.4.0; diffusers 0.42.1 needs >=1.32. tokenizers and numpy are that machine's too.
GPU_MACHINE_PINS=(
  torch==2.11.0
  transformers==5.17.0
  accelerate==1.15.0
  peft==0.21.2          # that machine's version is not known: assumed to be the shipped pin
  safetensors==0.8.0
  huggingface-hub==1.33.0
  tokenizers==0.23.2
  numpy==2.5.2
)
GPU_MACHINE_PYTHON=3.12   # the GPU machine has Python 3.12.3
# What that machine has installed (its image as read on 2026-11-17), then the wheels docs/benchmarks.md brings.
# The smoke run sees only these: the rest of the venv is hidden from imports, as it is absent there.
GPU_MACHINE_HAS="
  absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
  charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
  cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
  flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
  huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
  jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
  llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
  multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
  nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
  nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
  nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
  opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
  patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
  py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
  pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
  scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
  shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
  tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
  torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
  uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
  diffusers bitsandbytes importlib-metadata open-clip-torch"
OPEN_CLIP=open-clip-torch==3.3.0   # installed with --no-deps, as setup.sh does
# That machine also has torchvision (0.26.0, built for torch 2.11), which Kiln keeps out of its own venv; with it
# transformers picks other image processors. The smoke run sees it (a --no-deps install beside the venv).
GPU_MACHINE_EXTRAS=(torchvision==0.26.0)
# ------------------------------------------------------------------------------------------------------------

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${COMPAT_VENV:-/work/compat-venv}
LOGS=${COMPAT_LOGS:-/tmp/kiln-compat}
case "$VENV/" in "$REPO"/*) echo "compat_check: COMPAT_VENV must be outside the repository" >&2; exit 2 ;; esac
case "$LOGS/" in "$REPO"/*) echo "compat_check: COMPAT_LOGS must be outside the repository" >&2; exit 2 ;; esac
mode=all
case "${1:-}" in --build-only) mode=build; shift ;; --smoke-only) mode=smoke; shift ;; esac
[ "${1:-}" = "--" ] && shift
mkdir -p "$LOGS"

if [ -z "${PYTHON:-}" ]; then
  # Prefer the GPU machine's Python; pyenv's shims know a version only when it is the selected one.
  for candidate in "python$GPU_MACHINE_PYTHON" "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$GPU_MACHINE_PYTHON".*/bin/python3 2>/dev/null | tail -1)" python3; do
    if [ -n "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi

# The requirement file: requirements*.txt with the pins above put in place of the shipped ones.
reqs="$LOGS/requirements-gpu-machine.txt"
names=$(printf '%s\n' "${GPU_MACHINE_PINS[@]}" | sed 's/[ =<>!~].*//' | tr 'A-Z_' 'a-z-')
{
  echo "# generated by bench/compat_check.sh: requirements*.txt with the GPU machine's versions"
  cat "$REPO/requirements.txt" "$REPO/requirements-dev.txt" | sed 's/#.*//; s/[[:space:]]*$//' | grep -v '^$' |
    while read -r line; do
      name=$(echo "$line" | sed 's/[ =<>!~;\[].*//' | tr 'A-Z_' 'a-z-')
      echo "$names" | grep -qx "$name" || echo "$line"
    done
  printf '%s\n' "${GPU_MACHINE_PINS[@]}" | sed 's/[[:space:]]*#.*//'
} >"$reqs"

# pip, less this workplace's notes about local index folders it cannot find
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
stamp="$VENV/.kiln-compat-$(cat "$reqs" "$0" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "compat_check: building $VENV with $("$PYTHON" --version) (a few GB on the first run)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip install -q --upgrade pip
  pip install -q -r "$reqs"
  pip install -q --no-deps "$OPEN_CLIP"
  # pip check, less open-clip-torch's dependencies (left out on purpose: they pull torchvision)
  problems=$(pip check 2>&1 | grep -v -e '^open-clip-torch .* requires ' -e '^No broken' || true)
  [ -z "$problems" ] || { echo "$problems" >&2; exit 1; }
  rm -rf "$VENV"/.kiln-compat-* "$VENV/gpu-machine-extras"
  pip install -q --no-deps --target "$VENV/gpu-machine-extras" "${GPU_MACHINE_EXTRAS[@]}"
  touch "$stamp"
fi
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md, sys
names = ["torch", "transformers", "accelerate", "diffusers", "peft", "bitsandbytes", "huggingface-hub",
         "tokenizers", "safetensors", "numpy", "torchmetrics", "gradio"]
print("compat_check: Python", sys.version.split()[0], "|", ", ".join(f"{n} {md.version(n)}" for n in names))
EOF
[ $mode = build ] && exit 0

cd "$REPO"
export CUDA_VISIBLE_DEVICES= PYTHONDONTWRITEBYTECODE=1
status=0
if [ $mode = all ]; then
  # -p no:cacheprovider: no .pytest_cache in the repository
  echo "compat_check: test suite (log: $LOGS/pytest.log)"
  if [ $# -gt 0 ]; then tests=("$@"); else tests=(-n 2 --timeout 900); fi
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$LOGS/pytest.log" || status=1
fi
echo "compat_check: bench/gpu_suite.py --smoke with ${GPU_MACHINE_EXTRAS[*]} (report: $LOGS/smoke/gpu_suite.md)"
# Run as the script itself, with every installed distribution that the GPU machine lacks made unimportable, as
# it is there: an optional import falls back as it would there, a needed one fails the run.
GPU_MACHINE_HAS=$GPU_MACHINE_HAS PYTHONPATH="$VENV/gpu-machine-extras" \
  "$VENV/bin/python" - "$LOGS/smoke" <<'PY' 2>&1 | tee "$LOGS/smoke.log" || status=1
import importlib.machinery, importlib.metadata as md, os, re, runpy, sys
canon = lambda name: re.sub(r"[-_.]+", "-", name).lower()
has = {canon(n) for n in os.environ["GPU_MACHINE_HAS"].split()}
absent = {top: dists for top, dists in md.packages_distributions().items()
          if top not in sys.stdlib_module_names and not {canon(d) for d in dists} & has}
asked = set()


class OnlyTheGpuMachines(importlib.machinery.PathFinder):
    """The path finder, blind to what the GPU machine lacks: find_spec gives None and import fails, as there."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in absent:
            asked.add(name.split(".")[0])
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [OnlyTheGpuMachines if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = ["bench/gpu_suite.py", "--smoke", "--out", sys.argv[1]]
runpy.run_path("bench/gpu_suite.py", run_name="__main__")
tried = sorted(canon(d) for top in asked for d in absent[top])
print(f"compat_check: smoke passed with {len(absent)} modules of distributions the GPU machine lacks blocked;",
      f"optional imports that fell back: {', '.join(tried)}" if tried else "none was asked for")
PY
exit $status
