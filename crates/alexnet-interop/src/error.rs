//! Errors of the readers and writers: each names the file (or what is being
//! written) and the part that is wrong, with what was expected and found.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A file whose content is not what its format requires.
    #[error("{file}: {message}")]
    Format { file: String, message: String },

    /// A file that is well formed but holds something we do not support.
    #[error("{file}: unsupported: {message}")]
    Unsupported { file: String, message: String },

    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },

    /// An error from the engine (a description that does not fit together).
    #[error(transparent)]
    Engine(#[from] alexnet::Error),
}

impl Error {
    pub fn format(file: impl std::fmt::Display, message: impl Into<String>) -> Error {
        Error::Format {
            file: file.to_string(),
            message: message.into(),
        }
    }

    pub fn unsupported(file: impl std::fmt::Display, message: impl Into<String>) -> Error {
        Error::Unsupported {
            file: file.to_string(),
            message: message.into(),
        }
    }
}
