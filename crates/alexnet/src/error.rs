//! The engine's error type. Every error names what it is about: the file, the
//! layer, the tensor, what was expected and what was found.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A network description that cannot be parsed.
    #[error("{origin}: {message}")]
    Spec { origin: String, message: String },

    /// A description that parses but does not fit together.
    #[error("{layer}: expected {expected}, found {found}{}", hint_suffix(.hint))]
    Shape {
        layer: String,
        expected: String,
        found: String,
        hint: Option<String>,
    },

    /// A checkpoint that is unreadable or does not match the network.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },

    /// Input handed to the net that does not match its geometry.
    #[error("{what}: expected {expected}, found {found}")]
    Input {
        what: String,
        expected: String,
        found: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(" (hint: {h})"),
        None => String::new(),
    }
}
