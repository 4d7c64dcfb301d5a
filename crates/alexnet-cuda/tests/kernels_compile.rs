//! The CUDA C kernels compile with NVRTC and define every entry point the backend
//! loads. This needs the NVRTC library but no GPU, so it runs on machines without
//! one when NVRTC is present: on the loader's path, or inside PyTorch's CUDA wheels
//! (site-packages/nvidia/*/lib), which it then opens by full path first.
//! The Python packages are those of `ALEXNET_PYTHON` (default `python3`); `.ci/run`
//! points it at the environment of tools/ci/python_env.sh, which pins NVRTC.
//! Skips when NVRTC is nowhere to be found, unless ALEXNET_REQUIRE_NVRTC=1 or
//! ALEXNET_REQUIRE_GPU=1.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// NVRTC libraries shipped in PyTorch's CUDA wheels, newest CUDA first.
fn nvrtc_in_python_packages() -> Vec<PathBuf> {
    let python = std::env::var("ALEXNET_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let Ok(out) = Command::new(python)
        .args([
            "-c",
            "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))",
        ])
        .output()
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for dir in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(packages) = std::fs::read_dir(PathBuf::from(dir).join("nvidia")) else {
            continue;
        };
        for package in packages.flatten() {
            let Ok(files) = std::fs::read_dir(package.path().join("lib")) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                // libnvrtc.so.13, not libnvrtc-builtins.so.13.2 nor libnvrtc.alt.so.
                if name.starts_with("libnvrtc.so.") {
                    found.push(file.path());
                }
            }
        }
    }
    found.sort();
    found.reverse();
    found
}

/// Makes NVRTC loadable by its usual name: once a library is open, the dynamic
/// loader hands out the same one for its soname, which is what cudarc asks for.
fn open_nvrtc() -> Result<(), String> {
    // SAFETY: only tries to open the library, as cudarc would.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    for path in nvrtc_in_python_packages() {
        // SAFETY: NVRTC's initialisers have no preconditions; the handle is kept
        // open for the rest of the process, as cudarc keeps its own.
        if let Ok(library) = unsafe { libloading::Library::new(&path) } {
            std::mem::forget(library);
            // SAFETY: as above.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                eprintln!("using NVRTC from {}", path.display());
                return Ok(());
            }
        }
    }
    Err("NVRTC (libnvrtc.so) is neither on the loader's path nor in a Python package".into())
}

#[test]
fn kernels_compile_with_nvrtc() {
    if let Err(why) = open_nvrtc() {
        let nvrtc_required = std::env::var("ALEXNET_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        if nvrtc_required || common::gpu_required() {
            panic!("ALEXNET_REQUIRE_NVRTC=1 or ALEXNET_REQUIRE_GPU=1 but {why}");
        }
        eprintln!("SKIPPED: {why}; set ALEXNET_REQUIRE_NVRTC=1 to make this a failure");
        return;
    }
    // bf16 mode's conversions are entry points like the others.
    for name in ["f32_to_bf16", "f32_round_to_bf16", "bf16_to_f32"] {
        assert!(
            alexnet_cuda::KERNEL_NAMES.contains(&name),
            "{name} is not among the kernels checked"
        );
    }
    // Hopper (the H100/H200) and the oldest architecture current NVRTC targets.
    for arch in ["compute_90", "compute_75"] {
        let ptx = alexnet_cuda::compile_kernels(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for name in alexnet_cuda::KERNEL_NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: no entry point {name} in the PTX"
            );
        }
    }
}
