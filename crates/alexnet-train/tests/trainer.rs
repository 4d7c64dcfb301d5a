//! The trainer driven from code, as `train`, `experiment` and data-parallel
//! training drive it: a run stopped from outside and resumed ends with exactly
//! the weights of an uninterrupted one, the step hook sees each step's gradients
//! before the update, and observers get every line the metrics log gets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alexnet::{Cpu, Model, NetSpec, Network};
use alexnet_data::testing::write_bar_source;
use alexnet_data::{Part, PrepareOptions, prepare_idx};
use alexnet_train::testing::{Call, Mirrored};
use alexnet_train::{
    Ending, External, MetricsLog, Observer, Record, Step, StepHook, StopRequest, TrainConfig,
    Trainer,
};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alexnet-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh temporary folder (see [`temp_dir`]) with the generated dataset
/// prepared in it (see [`dataset`]): the folder and the dataset.
fn temp_dataset(name: &str) -> (PathBuf, PathBuf) {
    let root = temp_dir(name);
    let data = dataset(&root);
    (root, data)
}

/// A prepared 10-class dataset of 28x28 grey images: 240 training, 60 test.
fn dataset(root: &Path) -> PathBuf {
    let source = write_bar_source(root).unwrap();
    let data = root.join("data");
    prepare_idx(&source, None, &PrepareOptions::new(&data)).unwrap();
    data
}

/// Nets on a two-thread CPU backend.
fn on_cpu(spec: &NetSpec, batch: usize, seed: Option<u64>) -> Result<Box<dyn Model>, External> {
    let cpu = Cpu::new().with_threads(2)?;
    Ok(match seed {
        Some(seed) => Box::new(Network::new(cpu, spec, batch, seed)?),
        None => Box::new(Network::new_zeroed(cpu, spec, batch)?),
    })
}

/// Two epochs of the cifar preset: 12 steps each (200 training images, 40 held out).
fn config(data: &Path, out: &Path) -> TrainConfig {
    let mut config = TrainConfig::new(data, NetSpec::preset("cifar").unwrap(), out);
    config.recipe.epochs = Some(2);
    config.recipe.batch = Some(16);
    config.holdout = 40;
    config.log_every = 5;
    config.checkpoint_every = 1000;
    config
}

fn all_params(net: &dyn Model) -> Vec<Vec<f32>> {
    (0..net.plan().params.len())
        .map(|i| net.param_values(i))
        .collect()
}

/// Asks for a stop once `at` steps are done.
struct StopAt {
    at: u64,
    stop: StopRequest,
}

impl Observer for StopAt {
    fn step(&mut self, step: &Step) -> Result<(), External> {
        if step.step == self.at {
            self.stop.request();
        }
        Ok(())
    }
}

#[test]
fn a_run_stopped_from_outside_and_resumed_ends_with_the_weights_of_an_uninterrupted_one() {
    let (root, data) = temp_dataset("resume");

    let mut whole = Trainer::new(config(&data, &root.join("whole")), &on_cpu).unwrap();
    let outcome = whole.run(&mut [], &StopRequest::new()).unwrap();
    assert_eq!(
        (outcome.ending, outcome.steps, outcome.epochs),
        (Ending::Finished, 24, 2)
    );

    let out = root.join("parts");
    let stop = StopRequest::new();
    let mut first = Trainer::new(config(&data, &out), &on_cpu).unwrap();
    let mut stop_at = StopAt {
        at: 17,
        stop: stop.clone(),
    };
    let outcome = first.run(&mut [&mut stop_at], &stop).unwrap();
    assert_eq!((outcome.ending, outcome.steps), (Ending::Stopped, 17));
    assert!(outcome.last.exists());

    let mut again = config(&data, &out);
    again.resume = true;
    let mut second = Trainer::new(again, &on_cpu).unwrap();
    assert_eq!(second.state().step, 17);
    let outcome = second.run(&mut [], &StopRequest::new()).unwrap();
    assert_eq!((outcome.ending, outcome.steps), (Ending::Finished, 24));
    assert_eq!(
        all_params(second.net()),
        all_params(whole.net()),
        "resumed weights differ from the uninterrupted run's"
    );
    assert_eq!(second.state(), whole.state());
}

/// Each step the hook saw, with the first parameter's values then.
type Seen = Arc<Mutex<Vec<(u64, Vec<f32>)>>>;

/// Records the first parameter as the hook sees it, and the step numbers.
#[derive(Default)]
struct Spy {
    seen: Seen,
}

impl StepHook for Spy {
    fn before_update(&mut self, net: &mut dyn Model, step: u64) -> Result<(), External> {
        // The gradients are there: the step's backward pass has run.
        assert!(
            net.param_grad(0).iter().any(|g| *g != 0.0),
            "step {step}: no gradient yet"
        );
        self.seen.lock().unwrap().push((step, net.param_values(0)));
        Ok(())
    }
}

#[test]
fn the_step_hook_runs_after_the_backward_pass_and_before_each_update() {
    let (root, data) = temp_dataset("hook");
    let mut config = config(&data, &root.join("run"));
    config.max_steps = Some(4);
    let mut trainer = Trainer::new(config, &on_cpu).unwrap();
    let initial = trainer.net().param_values(0);
    let spy = Spy::default();
    let seen = spy.seen.clone();
    trainer.set_step_hook(Box::new(spy));
    let outcome = trainer.run(&mut [], &StopRequest::new()).unwrap();
    assert_eq!(outcome.ending, Ending::MaxSteps);

    let seen = seen.lock().unwrap();
    let steps: Vec<u64> = seen.iter().map(|(step, _)| *step).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    // Each call sees the weights of the update before it, never its own.
    assert_eq!(
        seen[0].1, initial,
        "the first hook call came after an update"
    );
    for pair in seen.windows(2) {
        assert_ne!(
            pair[0].1, pair[1].1,
            "no update between steps {} and {}",
            pair[0].0, pair[1].0
        );
    }
    assert_ne!(
        trainer.net().param_values(0),
        seen[3].1,
        "the last update did not follow the hook"
    );
}

#[test]
fn observers_get_every_line_the_metrics_log_writes() {
    let (root, data) = temp_dataset("observers");
    let out = root.join("run");
    let mut trainer = Trainer::new(config(&data, &out), &on_cpu).unwrap();
    let mut log = MetricsLog::open(&out).unwrap();
    let mut record = Record::default();
    trainer
        .run(&mut [&mut log, &mut record], &StopRequest::new())
        .unwrap();

    // 24 steps, a line every 5: steps 5, 10, ..., 20; and two epoch lines.
    let steps: Vec<u64> = record.steps.iter().map(|l| l.step).collect();
    assert_eq!(steps, [5, 10, 15, 20]);
    let epochs: Vec<u64> = record.epochs.iter().map(|l| l.epoch).collect();
    assert_eq!(epochs, [1, 2]);
    assert!(
        record
            .epochs
            .iter()
            .all(|l| (0.0..=1.0).contains(&l.val_top1_error))
    );

    let text = std::fs::read_to_string(out.join(MetricsLog::FILE)).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[6]["kind"], "end");
    assert_eq!(lines[6]["ending"], "finished");
    assert_eq!(record.ends.len(), 1);
    assert_eq!(record.ends[0].step, 24);
    let logged_steps: Vec<u64> = lines
        .iter()
        .filter(|l| l["kind"] == "step")
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(logged_steps, steps);
    let logged_val: Vec<f64> = lines
        .iter()
        .filter(|l| l["kind"] == "epoch")
        .map(|l| l["val_top1_error"].as_f64().unwrap())
        .collect();
    let recorded_val: Vec<f64> = record.epochs.iter().map(|l| l.val_top1_error).collect();
    assert_eq!(logged_val, recorded_val);
}

/// Makes every step take at least `pause` longer.
struct Slow {
    pause: std::time::Duration,
}

impl StepHook for Slow {
    fn before_update(&mut self, _net: &mut dyn Model, _step: u64) -> Result<(), External> {
        std::thread::sleep(self.pause);
        Ok(())
    }
}

/// Each epoch line says how long its steps took and, of that, how long they
/// waited for batches; a loader that keeps ahead of slow steps waits little.
#[test]
fn epochs_report_their_training_time_and_the_wait_for_data_within_it() {
    let root = temp_dir("data-wait");
    let data = dataset(&root);
    let mut trainer = Trainer::new(config(&data, &root.join("run")), &on_cpu).unwrap();
    let pause = std::time::Duration::from_millis(20);
    trainer.set_step_hook(Box::new(Slow { pause }));
    let mut record = Record::default();
    trainer
        .run(&mut [&mut record], &StopRequest::new())
        .unwrap();

    let [first, second] = &record.epochs[..] else {
        panic!("expected two epoch lines, got {:?}", record.epochs);
    };
    let twelve_pauses = 12.0 * pause.as_secs_f64();
    for line in [first, second] {
        assert!(line.train_s >= twelve_pauses, "{line:?}");
        assert!(
            line.data_wait_s >= 0.0 && line.data_wait_s < 0.5 * line.train_s,
            "{line:?}"
        );
    }
    // Counted afresh each epoch, within the epoch's own time.
    assert!(first.train_s <= first.elapsed_s, "{first:?}");
    assert!(
        second.train_s <= second.elapsed_s - first.elapsed_s,
        "{first:?} {second:?}"
    );
    for line in &record.steps {
        assert!(
            line.data_wait_s >= 0.0 && line.data_wait_s < pause.as_secs_f64(),
            "{line:?}"
        );
    }
}

#[test]
fn evaluating_no_images_is_refused_rather_than_reported_perfect() {
    let (root, data) = temp_dataset("empty-eval");
    let dataset = alexnet_data::Dataset::open(&data).unwrap();
    let spec = alexnet_train::fit_spec(&NetSpec::preset("cifar").unwrap(), &dataset, None);
    let mut net = on_cpu(&spec, 8, Some(1)).unwrap();
    let preprocess = alexnet_train::Preprocess::from_dataset(&dataset);
    let shape = net.plan().input_shape();
    let view = alexnet_train::eval_view(&preprocess, shape.height, shape.width, false);
    let mean = preprocess.mean_for(&dataset).unwrap();
    let evaluate = |net: &mut dyn Model, indices: Vec<u32>| {
        alexnet_train::evaluate(
            net,
            dataset.split("test").unwrap(),
            Some(Arc::new(indices)),
            view,
            &dataset,
            mean.clone(),
            1,
            false,
            Part::WHOLE,
        )
    };
    let err = evaluate(net.as_mut(), Vec::new()).unwrap_err().to_string();
    assert!(err.contains("'test' has no images"), "{err}");
    let some = evaluate(net.as_mut(), vec![0, 1, 2]).unwrap();
    assert!((0.0..=1.0).contains(&some.top1_error()));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Gradients summed in buckets started during the backward pass give exactly
/// the weights of sums after it (the same arithmetic, other buffers), in f32
/// and in bf16; every step starts its buckets before its check-in (which
/// follows the backward pass) and no bucket but one holding a single tensor
/// is larger than asked.
#[test]
fn gradients_summed_in_buckets_during_the_backward_pass_train_as_sums_after_it() {
    let (root, data) = temp_dataset("buckets");
    for bf16 in [false, true] {
        let train = |name: &str, background: bool| {
            let mut config = config(&data, &root.join(format!("{name}-{bf16}")));
            config.recipe.epochs = Some(1);
            config.bf16_gradients = bf16;
            config.bucket_bytes = 64 << 10;
            let (comm, calls) = Mirrored::new(background);
            let mut trainer = Trainer::with_communicator(config, &on_cpu, Box::new(comm)).unwrap();
            trainer.run(&mut [], &StopRequest::new()).unwrap();
            let calls = calls.lock().unwrap().clone();
            (all_params(trainer.net()), calls)
        };
        let (after, calls) = train("after", false);
        assert!(!calls.iter().any(|c| matches!(c, Call::Start(_))));
        let (during, calls) = train("during", true);
        assert_eq!(during, after, "bf16 {bf16}");

        let sizes: Vec<usize> = (0..after.len()).map(|i| after[i].len()).collect();
        let mut checked = 0;
        for (index, step) in calls.split(|c| *c == Call::CheckIn).enumerate() {
            // Between two check-ins: the finishes of a step, then the next
            // step's starts (none after a validation's check-in or the last step).
            let starts: Vec<usize> = step
                .iter()
                .filter_map(|c| match c {
                    Call::Start(len) => Some(*len),
                    _ => None,
                })
                .collect();
            if starts.is_empty() {
                continue;
            }
            assert!(starts.len() > 1, "step {index}: one bucket {starts:?}");
            assert_eq!(starts.iter().sum::<usize>(), sizes.iter().sum::<usize>());
            for len in &starts {
                assert!(*len <= (64 << 10) / 4 || sizes.contains(len), "{len}");
            }
            checked += 1;
        }
        assert_eq!(
            checked, 12,
            "steps whose buckets started before their check-in"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
