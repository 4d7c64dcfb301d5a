//! NCCL without a GPU: the id a group meets by. Opened as on the GPU machine,
//! through a `libnccl.so` link to the `libnccl.so.2` that NVIDIA's wheels ship
//! (tools/gpu_env.sh makes that link there), `NcclGroup::id` encodes
//! `NCCL_COMM_ID` identically in every process (what torchrun's processes meet
//! by) and makes a fresh id in each where it is unset; without the link, the
//! error names the library and the fix instead of cudarc's panic.
//!
//! The loader reads LD_LIBRARY_PATH when a process starts, so each case runs in
//! a child process: this test executable again, running only
//! `child_prints_the_nccl_id`. NCCL is the `libnccl.so.2` that `ALEXNET_NCCL_LIB`
//! names (`.ci/run`: tools/ci/fetch_cudnn.sh's; tools/gpu_check.sh: PyTorch's);
//! the tests skip without it unless ALEXNET_REQUIRE_CUDNN=1.

use std::path::{Path, PathBuf};
use std::process::Command;

use alexnet_cuda::nccl::NcclGroup;

/// Not a test of its own: what each child process runs. Prints `id <hex>` or
/// `error <message>` on a line of its own (the harness has begun one).
#[test]
#[ignore = "run by the other tests of this file in a child process"]
fn child_prints_the_nccl_id() {
    match NcclGroup::id() {
        Ok(id) => println!(
            "\nid {}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        Err(e) => println!("\nerror {e}"),
    }
}

/// The `libnccl.so.2` that `ALEXNET_NCCL_LIB` names, or `None` (skipping).
fn nccl_library() -> Option<PathBuf> {
    let found = std::env::var_os("ALEXNET_NCCL_LIB").map(PathBuf::from);
    if let Some(path) = &found {
        assert!(
            path.exists(),
            "ALEXNET_NCCL_LIB={}: no such file",
            path.display()
        );
    } else {
        assert!(
            std::env::var_os("ALEXNET_REQUIRE_CUDNN").is_none_or(|v| v != "1"),
            "ALEXNET_REQUIRE_CUDNN=1 but ALEXNET_NCCL_LIB is not set (tools/ci/fetch_cudnn.sh \
             puts libnccl.so.2 beside libcudnn.so.9)"
        );
        println!("skipped: ALEXNET_NCCL_LIB is not set (tools/ci/fetch_cudnn.sh)");
    }
    found
}

/// A fresh folder holding a link named `name` to `library`.
fn folder_with_link(library: &Path, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "alexnet-nccl-id-{}-{}",
        std::process::id(),
        name.replace('.', "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(library, dir.join(name)).unwrap();
    dir
}

/// The line `child_prints_the_nccl_id` prints in a child process whose loader
/// looks in `libraries` (only), with `NCCL_COMM_ID` set to `comm_id` or unset.
fn child(libraries: &Path, comm_id: Option<&str>) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "child_prints_the_nccl_id"])
        .args(["--nocapture", "--test-threads", "1"])
        .env("LD_LIBRARY_PATH", libraries)
        .env_remove("NCCL_COMM_ID");
    if let Some(id) = comm_id {
        command.env("NCCL_COMM_ID", id);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child process failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|line| line.starts_with("id ") || line.starts_with("error "))
        .unwrap_or_else(|| panic!("the child printed no id: {stdout}"))
        .to_string()
}

#[test]
fn nccl_comm_id_gives_every_process_the_same_id_and_without_it_each_a_fresh_one() {
    let Some(library) = nccl_library() else {
        return;
    };
    let linked = folder_with_link(&library, "libnccl.so");
    let meet = Some("127.0.0.1:29517");
    let (first, second) = (child(&linked, meet), child(&linked, meet));
    assert!(first.starts_with("id "), "{first}");
    assert_eq!(first, second, "two processes given one NCCL_COMM_ID");
    let elsewhere = child(&linked, Some("127.0.0.1:29519"));
    assert_ne!(first, elsewhere, "another port, another id");
    let (fresh, another) = (child(&linked, None), child(&linked, None));
    assert!(
        fresh.starts_with("id ") && another.starts_with("id "),
        "{fresh} / {another}"
    );
    assert_ne!(fresh, another, "fresh ids without NCCL_COMM_ID");
    let _ = std::fs::remove_dir_all(linked);
}

#[test]
fn without_a_libnccl_so_link_the_error_names_the_library_and_the_fix() {
    let Some(library) = nccl_library() else {
        return;
    };
    // What PyTorch's wheels ship: libnccl.so.2 alone, a name cudarc does not try.
    let unlinked = folder_with_link(&library, "libnccl.so.2");
    let line = child(&unlinked, None);
    let _ = std::fs::remove_dir_all(unlinked);
    if line.starts_with("id ") {
        println!("skipped: this machine has a libnccl.so of its own on the loader's path");
        return;
    }
    assert!(line.contains("libnccl.so"), "{line}");
    assert!(line.contains("tools/gpu_env.sh"), "{line}");
}
