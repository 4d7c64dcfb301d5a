//! The data crate's error type. Every error names the file or setting it is
//! about, with what was expected and what was found.

use std::path::Path;

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A prepared dataset whose files are missing, malformed or corrupted.
    #[error("dataset {path}: {message}")]
    Dataset { path: String, message: String },

    /// Source data handed to `prepare` that cannot be read as what it claims to be.
    #[error("{path}: {message}")]
    Source { path: String, message: String },

    /// A request that cannot be carried out as given: loader settings, options, output folders.
    #[error("{what}: {message}")]
    Config { what: String, message: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn dataset_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub(crate) fn source_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Source {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub(crate) fn config_error(what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Config {
        what: what.into(),
        message: message.into(),
    }
}

/// Wraps an I/O error with the path it happened on, for `map_err`.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}
