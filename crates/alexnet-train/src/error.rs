//! Why training, validation or a checkpoint's preprocessing could not go on.

use std::path::PathBuf;

/// Boxed errors of the parts a caller plugs in (a net factory, an observer, a
/// step hook), carried through unchanged.
pub type External = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the engine: a description, a checkpoint, a layer.
    #[error(transparent)]
    Engine(#[from] alexnet::Error),

    /// From the data crate: a dataset, a split, the loader.
    #[error(transparent)]
    Data(#[from] alexnet_data::Error),

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A setting that cannot work, named by its command-line flag.
    #[error("{0}")]
    Setting(String),

    /// A run that cannot be started or continued as asked (an occupied output
    /// folder, a resume with other settings or another net).
    #[error("{0}")]
    Run(String),

    /// A checkpoint's or a dataset's metadata that does not fit the net.
    #[error("{0}")]
    Mismatch(String),

    /// The loss stopped being a number.
    #[error(
        "the loss became {loss} at step {step} (epoch {epoch}): training stopped; the last good \
         checkpoint is {} (try a smaller --lr)",
        checkpoint.display()
    )]
    Diverged {
        loss: f32,
        step: u64,
        epoch: u64,
        checkpoint: PathBuf,
    },

    /// From a part the caller plugged in.
    #[error(transparent)]
    External(External),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error naming what was being done and to which file.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
