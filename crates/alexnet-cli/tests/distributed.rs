//! Data-parallel training under `mpirun` (the `mpi` feature) against one
//! process training the whole batch: the same weights after 20 steps (to fp32
//! rounding), also when the batch does not divide among the processes; the
//! same validation; resume bit for bit; bf16 sums; a killed or a stopped
//! process ends the job with an error, and the run resumes from its last
//! checkpoint to the weights of an uninterrupted run.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{SMALL_TRAIN, dataset, step_losses, temp_dir, tensors_by_name};

/// `mpirun -np <processes> alexnet`, or `None` (with a message) where it is
/// not installed; with `ALEXNET_REQUIRE_MPI=1` a missing one fails the test.
fn mpirun(processes: usize) -> Option<Command> {
    let found = Command::new("mpirun").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("ALEXNET_REQUIRE_MPI").as_deref() != Ok("1"),
            "mpirun is missing and ALEXNET_REQUIRE_MPI=1"
        );
        eprintln!("SKIPPED: no mpirun (apt-get install openmpi-bin)");
        return None;
    }
    let mut command = Command::new("mpirun");
    // CI runs as root; more processes than cores need --oversubscribe.
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", &processes.to_string()])
        .arg(env!("CARGO_BIN_EXE_alexnet"));
    Some(command)
}

/// A run of the `cifar` preset on the generated dataset (200 training images,
/// 40 held out: 12 steps an epoch), one thread per process.
fn train_args(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--threads", "1"].map(String::from).to_vec();
    args.extend(SMALL_TRAIN.iter().map(|s| s.to_string()));
    args.extend(["--log-every", "1", "--quiet"].map(String::from));
    args.extend(["--max-steps".into(), steps.to_string()]);
    args.extend(["--data".into(), data.display().to_string()]);
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `command` to its end; fails the test with its output if it failed.
fn succeeds(mut command: Command) -> Output {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{command:?}: {stderr}");
    output
}

/// One process training `steps` steps into `out`.
fn alone(data: &Path, out: &Path, steps: u64, extra: &[&str]) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_alexnet"));
    command.args(train_args(data, out, steps, extra));
    succeeds(command);
}

/// `processes` processes under mpirun training `steps` steps into `out`; the
/// standard error (rank 0's report).
fn shared(processes: usize, data: &Path, out: &Path, steps: u64, extra: &[&str]) -> String {
    let mut command = mpirun(processes).unwrap();
    command.args(train_args(data, out, steps, extra));
    String::from_utf8_lossy(&succeeds(command).stderr).into_owned()
}

/// A checkpoint's f32 tensors by name (the preprocessing's byte tensors left out).
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let read = |_: &str, view: &safetensors::tensor::TensorView| {
        (view.dtype() == safetensors::Dtype::F32).then(|| {
            let values = view.data().chunks_exact(4);
            values
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    };
    tensors_by_name(path, read)
        .into_iter()
        .filter_map(|(name, values)| Some((name, values?)))
        .collect()
}

/// Asserts that every tensor of two checkpoints agrees: max |a - b| at most
/// `tolerance` times max |a|, per tensor.
fn assert_close(a: &Path, b: &Path, tolerance: f32) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        let largest = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let off = x
            .iter()
            .zip(y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            off <= tolerance * largest,
            "{name}: max |a - b| {off:e} against max |a| {largest:e}"
        );
    }
}

/// The metrics log's records of `kind`.
fn records(out: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

fn last(out: &Path) -> PathBuf {
    out.join("last.safetensors")
}

/// 20 steps (an epoch's end and validation at step 12 among them) of 2, and of
/// 3 processes (16 images as 5, 5 and 6), against one process.
///
/// On the reference loops, whose arithmetic for an image does not depend on the
/// batch around it, every weight agrees to fp32 rounding (measured: 5e-7 of the
/// largest). The fast kernels' rounding does depend on the batch size (where
/// an image falls in the vector lanes), and a pre-activation within rounding
/// of zero then lands on the other side of a ReLU in one run: that filter's
/// gradient changes and training amplifies it (measured: up to 1e-2 of a bias
/// after 12 steps for 2 of 7 seeds, and losses 1e-2 apart after 20 steps). So
/// on them the test compares the first step's weights and velocities.
///
/// Each case sums the gradients another way: in one 25 MiB bucket (the whole
/// net here) started as the backward pass ends, in 1 MiB buckets started
/// during it, and after it, tensor by tensor (the default on one machine).
#[test]
fn processes_train_as_one_process_does() {
    if mpirun(1).is_none() {
        return;
    }
    let root = temp_dir("distributed");
    let data = dataset(&root);
    let cases = [
        ("cpu-reference", 1, "25"),
        ("cpu-reference", 20, "1"),
        ("cpu", 1, "0"),
    ];
    for (device, steps, bucket_mb) in cases {
        {
            let extra = ["--device", device, "--bucket-mb", bucket_mb];
            let single = root.join(format!("one-{device}-{steps}"));
            alone(&data, &single, steps, &extra);
            for processes in [2, 3] {
                let out = root.join(format!("{processes}-{device}-{steps}"));
                let stderr = shared(processes, &data, &out, steps, &extra);
                // One summary and one report: rank 0 speaks, the others train silently.
                assert_eq!(stderr.matches("stopped after").count(), 1, "{stderr}");
                let how = match bucket_mb {
                    "0" => "gradients summed after the backward pass".to_string(),
                    mib => format!("gradients summed in buckets of {mib} MiB during the backward"),
                };
                assert!(
                    stderr.contains(&format!("{processes} processes, {how}")),
                    "{stderr}"
                );
                let (a, b) = (step_losses(&single), step_losses(&out));
                assert_eq!(a.len(), b.len(), "every step logged once");
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() < 1e-4, "losses {a:?} against {b:?}");
                }
                // The epoch's validation: each process its part, summed.
                let (a, b) = (records(&single, "epoch"), records(&out, "epoch"));
                assert_eq!(a.len(), usize::from(steps > 12));
                for (x, y) in a.iter().zip(&b) {
                    for key in ["val_top1_error", "val_top5_error"] {
                        assert_eq!(x[key], y[key], "{key}");
                    }
                }
                assert_close(&last(&single), &last(&out), 1e-5);
            }
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Gradients summed as bf16: one step's update (the velocity) agrees with the
/// f32 sums' to bf16's rounding (2^-8 relative, at most twice), and differs
/// from it (the option does round).
#[test]
fn bf16_sums_agree_to_bf16_rounding() {
    if mpirun(1).is_none() {
        return;
    }
    let root = temp_dir("distributed-bf16");
    let data = dataset(&root);
    let (single, pair) = (root.join("one"), root.join("two"));
    alone(&data, &single, 1, &[]);
    shared(2, &data, &pair, 1, &["--bf16-gradients"]);
    assert_close(&last(&single), &last(&pair), 2.0 / 256.0);
    let (a, b) = (tensors(&last(&single)), tensors(&last(&pair)));
    let velocity = |t: &[(String, Vec<f32>)]| -> Vec<f32> {
        t.iter()
            .filter(|(name, _)| name.starts_with("velocity."))
            .flat_map(|(_, v)| v.clone())
            .collect()
    };
    let off = velocity(&a)
        .iter()
        .zip(velocity(&b))
        .filter(|(x, y)| *x != y)
        .count();
    assert!(off > velocity(&a).len() / 2, "only {off} values rounded");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resuming_at_the_same_world_size_is_bit_for_bit() {
    if mpirun(1).is_none() {
        return;
    }
    let root = temp_dir("distributed-resume");
    let data = dataset(&root);
    let (whole, split) = (root.join("whole"), root.join("split"));
    shared(2, &data, &whole, 20, &[]);
    shared(2, &data, &split, 7, &[]);
    shared(2, &data, &split, 20, &["--resume"]);
    assert_eq!(tensors(&last(&whole)), tensors(&last(&split)));
    std::fs::remove_dir_all(&root).unwrap();
}

/// A batch with fewer images than processes is refused by name.
#[test]
fn a_batch_smaller_than_the_processes_is_refused() {
    let Some(mut launch) = mpirun(3) else { return };
    let root = temp_dir("distributed-small");
    let data = dataset(&root);
    let mut args = train_args(&data, &root.join("out"), 1, &[]);
    let at = args.iter().position(|a| a == "16").unwrap();
    args[at] = "2".into();
    let output = launch.args(args).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--batch 2 is smaller than the 3 processes"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// The PIDs of mpirun's processes by rank: its children (from /proc), each
/// with its rank in its environment.
fn ranks(launcher: &Child, processes: usize) -> Vec<u32> {
    let started = Instant::now();
    loop {
        let mut found = vec![0; processes];
        for pid in children(launcher.id()) {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let rank = environ
                .split(|&b| b == 0)
                .filter_map(|v| v.strip_prefix(b"OMPI_COMM_WORLD_RANK="))
                .find_map(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok());
            if let Some(rank) = rank.filter(|&r| r < processes) {
                found[rank] = pid;
            }
        }
        if found.iter().all(|&p| p != 0) {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no ranks");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").unwrap();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (name) state ppid ..."; the name may hold spaces.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_name.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}

/// Starts a long 2-process run that checkpoints every 4 steps; returns once
/// the checkpoint of step 8 is written.
fn start_long_run(data: &Path, out: &Path) -> Child {
    let mut command = mpirun(2).unwrap();
    // Buckets summed during the backward pass, on a thread of their own: a
    // stopped process is still named by the check-in, not by a sum's deadline.
    let extra = [
        "--checkpoint-every",
        "4",
        "--dist-timeout",
        "5",
        "--bucket-mb",
        "1",
    ];
    command.args(train_args(data, out, 100_000, &extra));
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while records_if_any(out) < 9 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn records_if_any(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Waits (at most a minute) for the launcher to end; its failure and stderr.
fn ended_within_a_minute(mut launcher: Child) -> String {
    let started = Instant::now();
    while launcher.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            launcher.kill().unwrap();
            panic!("the job did not end within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = launcher.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The step a checkpoint was written at (its training state).
fn checkpoint_step(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let state = &metadata.metadata().as_ref().unwrap()["train_state"];
    serde_json::from_str::<serde_json::Value>(state).unwrap()["step"]
        .as_u64()
        .unwrap()
}

/// A process killed (SIGKILL) or stopped (SIGSTOP) mid-run ends the job with
/// an error within a minute (a stopped one is named by the other after
/// `--dist-timeout`), and SIGTERM to mpirun stops every process with a
/// checkpoint; the last checkpoint stays intact, and resuming from it gives
/// the weights of an uninterrupted run.
#[test]
fn a_lost_process_stops_the_job_and_the_run_resumes() {
    if mpirun(1).is_none() {
        return;
    }
    let root = temp_dir("distributed-faults");
    let data = dataset(&root);
    // Killed or stopped, rank 1; SIGTERM to mpirun, which hands it to every
    // process: they agree to stop after one step and rank 0 writes the checkpoint.
    let cases = [
        ("KILL", false, "rank 1"),
        ("STOP", false, "rank 1 did not check in"),
        ("TERM", true, "interrupted: checkpoint written"),
    ];
    for (signal, to_launcher, named) in cases {
        let out = root.join(signal);
        let launcher = start_long_run(&data, &out);
        let pids = ranks(&launcher, 2);
        let target = if to_launcher { launcher.id() } else { pids[1] };
        let status = Command::new("kill")
            .args([format!("-{signal}"), target.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let stderr = ended_within_a_minute(launcher);
        assert!(stderr.contains(named), "{signal}: {stderr}");
        if to_launcher {
            assert_eq!(records(&out, "end")[0]["ending"], "stopped");
        }
        // The checkpoint is whole, and the run continues from it to the
        // weights of a run never interrupted.
        let end = checkpoint_step(&last(&out)) + 6;
        shared(2, &data, &out, end, &["--resume"]);
        let whole = root.join(format!("{signal}-whole"));
        shared(2, &data, &whole, end, &[]);
        assert_eq!(tensors(&last(&whole)), tensors(&last(&out)), "{signal}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// What `torchrun --nproc-per-node 2` sets for its first process.
const TORCHRUN_RANK_0: [(&str, &str); 6] = [
    ("RANK", "0"),
    ("WORLD_SIZE", "2"),
    ("LOCAL_RANK", "0"),
    ("LOCAL_WORLD_SIZE", "2"),
    ("MASTER_ADDR", "127.0.0.1"),
    ("MASTER_PORT", "29500"),
];

/// Started by torchrun (its environment, as it sets it) for CPU processes, or
/// with a partial launcher environment, a process refuses with a message that
/// says why, rather than training alone into a folder the others write too.
#[test]
fn launch_environments_it_cannot_join_are_refused() {
    let root = temp_dir("distributed-torchrun");
    let data = dataset(&root);
    let out = root.join("out");
    let refusal = |env: &[(&str, &str)], extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_alexnet"))
            .args(train_args(&data, &out, 1, extra))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let cpu = refusal(&TORCHRUN_RANK_0, &[]);
    assert!(
        cpu.contains("torchrun as rank 0 of 2") && cpu.contains("mpirun -np 2"),
        "{cpu}"
    );
    let partial = refusal(&[("WORLD_SIZE", "2"), ("RANK", "0")], &[]);
    assert!(
        partial.contains("LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"),
        "{partial}"
    );
    let mut bad_port = TORCHRUN_RANK_0.to_vec();
    bad_port.push(("MASTER_PORT", "65535"));
    bad_port.remove(5);
    let port = refusal(&bad_port, &["--device", "cuda"]);
    assert!(
        port.contains("MASTER_PORT=65535") && port.contains("--dist-port"),
        "{port}"
    );
    if !cfg!(feature = "cuda") {
        let gpu = refusal(&TORCHRUN_RANK_0, &["--device", "cuda"]);
        assert!(gpu.contains("built without CUDA"), "{gpu}");
    }
    assert!(!out.join("last.safetensors").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// `eval` under mpirun: each process evaluates its part of every batch, rank 0
/// prints the sums, which are the single process's figures.
#[test]
fn eval_splits_the_images_and_sums_the_counts() {
    if mpirun(1).is_none() {
        return;
    }
    let root = temp_dir("distributed-eval");
    let data = dataset(&root);
    let out = root.join("run");
    alone(&data, &out, 3, &[]);
    let checkpoint = last(&out).display().to_string();
    let args = [
        "--threads",
        "1",
        "eval",
        "--checkpoint",
        &checkpoint,
        "--data",
        &data.display().to_string(),
        "--batch",
        "7",
    ]
    .map(String::from);
    let figures = |output: Output| -> Vec<String> {
        let stdout = String::from_utf8_lossy(&output.stdout);
        // "60 images of 'test', centre crop: top-1 error ..% ... (0.1 s)": all but the time.
        stdout
            .lines()
            .map(|l| l.split(" (").next().unwrap().to_string())
            .collect()
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_alexnet"));
    command.args(&args);
    let expected = figures(succeeds(command));
    assert_eq!(expected.len(), 1);
    assert!(expected[0].starts_with("60 images"), "{expected:?}");
    let mut command = mpirun(3).unwrap();
    command.args(&args);
    assert_eq!(figures(succeeds(command)), expected);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Two hosts made on this machine: network namespaces joined by a veth pair,
/// each with its own address; removed when dropped.
struct TwoHosts {
    names: [String; 2],
    agent: PathBuf,
}

const HOST_ADDRESSES: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
/// The veth ends' name, the same in both namespaces.
const LINK: &str = "dpveth";

impl TwoHosts {
    /// The hosts, or `None` (with a message) where this user cannot make
    /// network namespaces; with `ALEXNET_REQUIRE_NETNS=1` that fails the test.
    fn make(dir: &Path) -> Option<TwoHosts> {
        let tag = std::process::id();
        let names = [format!("alexnet-h1-{tag}"), format!("alexnet-h2-{tag}")];
        let hosts = TwoHosts {
            agent: dir.join("launch-agent"),
            names: names.clone(),
        };
        let [a, b] = &names;
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", LINK, "netns", a, "type", "veth", "peer", "name", LINK, "netns", b,
            ],
            vec!["-n", a, "addr", "add", "10.77.0.1/24", "dev", LINK],
            vec!["-n", b, "addr", "add", "10.77.0.2/24", "dev", LINK],
            vec!["-n", a, "link", "set", LINK, "up"],
            vec!["-n", b, "link", "set", LINK, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let made = Command::new("ip").args(&step).output();
            if !made.as_ref().is_ok_and(|o| o.status.success()) {
                let why = made.map_or_else(
                    |e| e.to_string(),
                    |o| String::from_utf8_lossy(&o.stderr).into_owned(),
                );
                assert!(
                    std::env::var("ALEXNET_REQUIRE_NETNS").as_deref() != Ok("1"),
                    "ip {step:?}: {why} (and ALEXNET_REQUIRE_NETNS=1)"
                );
                eprintln!(
                    "SKIPPED: cannot make network namespaces (root and iproute2 needed): {why}"
                );
                return None;
            }
        }
        // mpirun starts its daemon on the second host through this agent, as
        // it would through ssh: `agent HOST COMMAND...`.
        let agent = format!(
            "#!/bin/sh\nhost=$1; shift\ncase $host in\n  {}) ns={a};;\n  {}) ns={b};;\n  \
             *) echo \"unknown host $host\" >&2; exit 1;;\nesac\nexec ip netns exec \"$ns\" /bin/sh -c \"$*\"\n",
            HOST_ADDRESSES[0], HOST_ADDRESSES[1]
        );
        std::fs::write(&hosts.agent, agent).unwrap();
        let chmod = Command::new("chmod").arg("+x").arg(&hosts.agent).status();
        assert!(chmod.unwrap().success());
        Some(hosts)
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Two machines, tested on one: 2 processes in two network namespaces, their
/// messages over TCP on the veth pair only (no shared memory), train 20 steps
/// of the reference loops to the weights of one process.
#[test]
fn two_hosts_over_tcp_train_as_one_process_does() {
    if mpirun(1).is_none() {
        return;
    }
    let root = temp_dir("distributed-hosts");
    let Some(hosts) = TwoHosts::make(&root) else {
        return;
    };
    let data = dataset(&root);
    let extra = ["--device", "cpu-reference"];
    let single = root.join("one");
    alone(&data, &single, 20, &extra);
    let out = root.join("two");
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            &hosts.names[0],
            "mpirun",
            "--oversubscribe",
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--host", &HOST_ADDRESSES.join(","), "-np", "2"])
        .args(["--mca", "plm_rsh_agent", hosts.agent.to_str().unwrap()])
        .args(["--mca", "btl", "tcp,self"])
        .args([
            "--mca",
            "btl_tcp_if_include",
            LINK,
            "--mca",
            "oob_tcp_if_include",
            LINK,
        ])
        // Every process says where it runs.
        .args([
            "sh",
            "-c",
            "ip -brief addr show dpveth >&2; exec \"$@\"",
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_alexnet"))
        .args(train_args(&data, &out, 20, &extra));
    let stderr = String::from_utf8_lossy(&succeeds(command).stderr).into_owned();
    for address in HOST_ADDRESSES {
        assert!(stderr.contains(&format!("{address}/24")), "{stderr}");
    }
    // Across machines, the default: buckets summed during the backward pass.
    let buckets = "2 processes, gradients summed in buckets of 25 MiB during the backward pass";
    assert!(stderr.contains(buckets), "{stderr}");
    assert_close(&last(&single), &last(&out), 1e-5);
    drop(hosts);
    std::fs::remove_dir_all(&root).unwrap();
}
