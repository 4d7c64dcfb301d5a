//! The learning-rate schedule (Section 5): the rate is divided by the recipe's
//! factor when the validation error stops improving (the paper's "heuristic"),
//! or after listed epochs, at most a set number of times.

use alexnet::spec::Schedule;
use serde::{Deserialize, Serialize};

use crate::config::RunSettings;

/// Where the schedule stands; stored in checkpoints (flattened into the training
/// state, whose JSON keeps these names).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScheduleState {
    pub learning_rate: f32,
    /// The best validation top-1 error so far.
    pub best_val_top1: Option<f64>,
    pub epochs_since_best: usize,
    /// How many times the rate has been divided.
    pub drops: usize,
}

impl ScheduleState {
    /// A run's schedule before its first epoch.
    pub fn start(learning_rate: f32) -> ScheduleState {
        ScheduleState {
            learning_rate,
            best_val_top1: None,
            epochs_since_best: 0,
            drops: 0,
        }
    }

    /// Takes the validation error of epoch `epoch_done` (counted from 1) and
    /// divides the rate if the schedule says so. Returns whether the error is the
    /// best so far (the best checkpoint is then written).
    pub fn end_epoch(&mut self, settings: &RunSettings, epoch_done: u64, val_top1: f64) -> bool {
        let improved = self.best_val_top1.is_none_or(|best| val_top1 < best);
        if improved {
            self.best_val_top1 = Some(val_top1);
            self.epochs_since_best = 0;
        } else {
            self.epochs_since_best += 1;
        }
        let drop = match settings.schedule {
            Schedule::Plateau => self.epochs_since_best >= settings.patience,
            Schedule::Steps => settings.lr_steps.contains(&(epoch_done as usize)),
        };
        if drop && self.drops < settings.max_drops {
            self.learning_rate *= settings.lr_drop_factor;
            self.drops += 1;
            self.epochs_since_best = 0;
        }
        improved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Augmentation;

    fn settings(schedule: Schedule) -> RunSettings {
        RunSettings {
            dataset: "d".into(),
            dataset_train_images: 10,
            seed: 1,
            batch: 1,
            epochs: 10,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule,
            patience: 2,
            lr_steps: vec![3],
            max_drops: 1,
            lr_drop_factor: 0.1,
            holdout: 0,
            view: Augmentation::default(),
        }
    }

    #[test]
    fn plateau_divides_after_patience_epochs_without_improvement_at_most_max_drops_times() {
        let settings = settings(Schedule::Plateau);
        let mut state = ScheduleState::start(1.0);
        assert!(state.end_epoch(&settings, 1, 0.5));
        assert!(!state.end_epoch(&settings, 2, 0.6));
        assert_eq!(state.learning_rate, 1.0);
        assert!(!state.end_epoch(&settings, 3, 0.5), "equal is not better");
        assert_eq!(state.learning_rate, 0.1);
        assert_eq!((state.drops, state.epochs_since_best), (1, 0));
        state.end_epoch(&settings, 4, 0.7);
        state.end_epoch(&settings, 5, 0.7);
        assert_eq!(state.learning_rate, 0.1, "max_drops is 1");
        assert!(state.end_epoch(&settings, 6, 0.4));
        assert_eq!(state.best_val_top1, Some(0.4));
    }

    #[test]
    fn steps_divides_after_the_listed_epochs_only() {
        let settings = settings(Schedule::Steps);
        let mut state = ScheduleState::start(1.0);
        for epoch in 1..=2 {
            state.end_epoch(&settings, epoch, 0.9);
        }
        assert_eq!(state.learning_rate, 1.0, "no improvement does not matter");
        state.end_epoch(&settings, 3, 0.9);
        assert!((state.learning_rate - 0.1).abs() < 1e-7);
    }
}
