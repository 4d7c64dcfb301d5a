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
