# Sourced by tools/gpu_check.sh (and usable on its own): puts the CUDA libraries
# our binaries open at run time on LD_LIBRARY_PATH and sets `libs` to the folders
# found. Expects `python` to name a Python that has PyTorch (default python3).
python=${python:-${PYTHON:-python3}}
# Our binaries open libcublas, libcudnn and libnvrtc by name at run time. PyTorch's
# CUDA wheels carry them under site-packages/nvidia/*/lib (PyTorch finds them by
# its own rpath); a CUDA toolkit keeps them in /usr/local/cuda/lib64.
libs=$("$python" - <<'PY'
import glob, os, site
dirs = []
for root in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
    dirs += glob.glob(os.path.join(root, "torch", "lib"))
dirs += [d for d in ("/usr/local/cuda/lib64",) if os.path.isdir(d)]
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# cudarc opens NCCL as libnccl.so (and numbered names other than .so.2), while
# PyTorch's wheels ship only libnccl.so.2 (site-packages/nvidia/nccl/lib): a
# libnccl.so link to it, in a folder of its own, goes on the path too.
nccl_lib=""
for dir in ${libs//:/ }; do
  if [[ -e "$dir/libnccl.so.2" ]]; then
    nccl_lib="$dir/libnccl.so.2"
    break
  fi
done
if [[ -n "$nccl_lib" ]]; then
  nccl_links="${TMPDIR:-/tmp}/alexnet-nccl-link"
  mkdir -p "$nccl_links"
  ln -sf "$nccl_lib" "$nccl_links/libnccl.so"
  libs="$nccl_links:$libs"
  export LD_LIBRARY_PATH="$nccl_links:$LD_LIBRARY_PATH"
fi
